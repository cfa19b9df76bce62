"""The run registry: the one place that reads a run folder.

A run folder, written by the one training loop (:func:`rgflow.train.loop.run_loop`), holds
``config.json`` (the resolved config, with ``"kind"`` naming the model family), ``metrics.jsonl`` and
``checkpoint.pt``. :func:`open_run` reads ``config.json`` once, migrates folders written by older
versions, checks the kind, loads and validates the checkpoint against the config, and asks the
kind's family to build its model (a :class:`~rgflow.density.Density`) with the trained weights.
:func:`resume_config` gives the config to continue a run with. The refusals are written here once.

Families register by module: each module of :data:`FAMILY_MODULES` defines ``RUN_FAMILY``, a
:class:`RunFamily`; the registry imports it by name when a folder of that kind is opened, so the
families sit below the registry and may themselves open other runs (``--init-from``, ``--coords``).
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rgflow.config import migrate_config
from rgflow.train.checkpoint import RunFolderError, latest_checkpoint, load_checkpoint

__all__ = ["Run", "RunFamily", "FAMILY_MODULES", "open_run", "read_config", "resume_config", "migrate_config",
           "RunFolderError"]

#: kind -> the module that defines its ``RUN_FAMILY``
FAMILY_MODULES = {"flow": "rgflow.train.flow", "diffusion": "rgflow.diffusion.train", "images": "rgflow.images.train"}


@dataclass(frozen=True)
class RunFamily:
    """How a model family's runs are read: ``config_cls`` (its config dataclass), ``tool`` (the commands
    for it), ``build(config, state, device, **options) -> model`` with the trained weights, and the
    names of the ``options`` it takes (e.g. a diffusion run's ``nfe`` and ``weights``)."""

    kind: str
    tool: str
    config_cls: type
    build: Callable
    options: tuple[str, ...] = ()


@dataclass
class Run:
    """An opened run folder: ``kind``, ``config`` (the kind's config), checkpoint ``state`` and ``model``."""

    path: Path
    kind: str
    config: object
    state: dict
    model: object

    @property
    def action(self):
        """The physics action of a lattice run (None for image runs)."""
        make = getattr(self.config, "make_action", None)
        if make is not None:
            return make()
        if getattr(self.config, "action", ""):
            from rgflow.physics.models import make_action

            return make_action(self.config.action, **self.config.params)
        return None


def family(kind: str) -> RunFamily:
    if kind not in FAMILY_MODULES:
        raise RunFolderError(f"unknown run kind {kind!r}; allowed: {', '.join(FAMILY_MODULES)}")
    return importlib.import_module(FAMILY_MODULES[kind]).RUN_FAMILY


def read_config(run_dir: str | Path) -> dict:
    """The migrated ``config.json`` of a run folder (``"kind"`` always set)."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        raise RunFolderError(f"{run_dir} is not a run folder (no config.json); create one with `rgflow train --out {run_dir}`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunFolderError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: not a run configuration")
    return migrate_config(data)


def _expect(run_dir, found: str, kind) -> None:
    wanted = (kind,) if isinstance(kind, str) else tuple(kind or ())
    if wanted and found not in wanted:
        names = " or ".join(f"a {k} run" for k in wanted)
        raise RunFolderError(f"{run_dir} is a {found} run, not {names}; use `{family(found).tool}` for it")


def open_run(run_dir: str | Path, kind: str | tuple[str, ...] | None = None, device: str | None = None,
             **options) -> Run:
    """Read a run folder (module docstring); ``kind``: the kind(s) the caller accepts (a folder of
    another kind is refused naming the command for it); ``options`` go to the family's builder when it
    takes them (diffusion: ``nfe``, ``weights``); an option a family does not take, or one that is
    None, is not passed (the CLI's diffusion flags on a flow run)."""
    run_dir = Path(run_dir)
    data = read_config(run_dir)
    found = data.pop("kind")
    _expect(run_dir, found, kind)
    fam = family(found)
    cfg = fam.config_cls.from_dict(data)
    if device is not None:
        cfg.device = device
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise RunFolderError(f"{run_dir} has no checkpoint yet (checkpoint.pt); train it first")
    state = load_checkpoint(ckpt, cfg.to_dict(), cfg.device, fam.config_cls)
    taken = {k: v for k, v in options.items() if k in fam.options and v is not None}
    try:
        model = fam.build(cfg, state, cfg.device, **taken)
    except ValueError as exc:
        raise RunFolderError(f"{run_dir}: {exc}") from None
    return Run(run_dir, found, cfg, state, model)


def resume_config(run_dir: str | Path, kind: str, overrides: dict):
    """The config to continue the ``kind`` run in ``run_dir`` with: its ``config.json`` updated by ``overrides``."""
    data = read_config(run_dir)
    found = data.pop("kind")
    if found != kind:
        raise RunFolderError(f"cannot resume: {run_dir} is a {found} run, not a {kind} run; "
                             f"use `{family(found).tool} --resume` for it")
    return family(kind).config_cls.from_dict({**data, **overrides})
