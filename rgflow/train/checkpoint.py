"""Atomic checkpoints: a dict of state_dicts, plain numbers and the resolved config.

``save_checkpoint`` writes ``<path>.tmp``, moves the previous checkpoint to ``<path>.prev`` and
renames the temporary file into place, so a crash at any moment leaves a readable checkpoint.
``load_checkpoint`` refuses truncated, corrupt, non-finite or incompatible files with a
:class:`CheckpointError` naming the file and the problem.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["CheckpointError", "RunFolderError", "save_checkpoint", "load_checkpoint", "latest_checkpoint", "CHECKPOINT_FORMAT", "FolderLock",
           "FolderBusy"]

CHECKPOINT_FORMAT = "rgflow-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (not a run, another kind of run, or already a run)."""


def _all_finite(state) -> bool:
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(_all_finite(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return all(_all_finite(v) for v in state)
    return True


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` atomically to ``path``, keeping the previous one as ``<path>.prev``."""
    path = Path(path)
    if not _all_finite(state["model"]):
        raise CheckpointError(f"{path}: refusing to write a checkpoint with non-finite parameters")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    if path.exists():
        os.replace(path, path.with_name(path.name + ".prev"))
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, config: dict | None = None, map_location="cpu", config_cls=None) -> dict:
    """Load and validate a checkpoint; with ``config``, also check that it agrees on the
    ``MODEL_KEYS`` of ``config_cls`` (default :class:`rgflow.config.TrainConfig`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, garbage bytes, pickled objects: all unusable
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt): {reason}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an rgflow checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    missing = {"model", "optimizer", "step", "config"} - set(state)
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(sorted(missing))}")
    if not _all_finite(state["model"]):
        raise CheckpointError(f"{path}: checkpoint holds non-finite parameters")
    if config is not None:
        from rgflow.config import TrainConfig

        config_cls = config_cls or TrainConfig
        saved = _resolved_config(path, state["config"], config_cls)
        diff = [k for k in config_cls.MODEL_KEYS if saved.get(k) != config.get(k)]
        if diff:
            detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs config {config.get(k)!r}" for k in diff)
            raise CheckpointError(f"{path}: checkpoint is from an incompatible config ({detail})")
    return state


def _resolved_config(path: Path, saved: dict, config_cls) -> dict:
    """The checkpoint's config as the current code resolves it: keys an older version lacked take
    their (action-dependent) defaults, renamed keys their new names."""
    try:
        from rgflow.config import migrate_config

        data = {k: v for k, v in migrate_config(saved).items() if k not in ("steps", "minutes", "kind")}
        if "kind" in saved:
            data["kind"] = saved["kind"]
        return config_cls.from_dict({**data, "steps": 1}).to_dict()
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: checkpoint holds an unreadable config ({exc})") from None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: ``checkpoint.pt``, or ``checkpoint.pt.prev`` if only that survived."""
    run_dir = Path(run_dir)
    for name in ("checkpoint.pt", "checkpoint.pt.prev"):
        if (run_dir / name).is_file():
            return run_dir / name
    return None


class FolderBusy(ValueError):
    """Another live process is writing the run folder."""


class FolderLock:
    """An exclusive lock on a run folder while a process writes it: ``flock`` on the folder itself, so
    no lock file is left behind and the kernel drops the lock when the holder dies (a killed run never
    blocks its own resume). :meth:`acquire` refuses a second writer with :class:`FolderBusy`."""

    def __init__(self):
        self.fd: int | None = None

    def acquire(self, folder: str | Path) -> None:
        import fcntl

        if self.fd is not None:
            return
        fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderBusy(f"{folder} is being written by another running process (rgflow train/resume); "
                             "wait for it to finish or stop it, then resume") from None
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
