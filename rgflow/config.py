"""Training configuration: one dataclass, readable from TOML, dumped as JSON into every run folder.

Every run is reproducible from its ``config.json``: ``TrainConfig.from_dict(json.load(...))``.
Physics couplings (the table ``params``) use the names of the action formulas (``m2``, ``lam``,
``kappa``, ``t``, ``mu``, ``T``, ``shift``); only those of the chosen action may be set, and in a
TOML file they may also stand at the top level (``lam = 6``), like the flags. Flow defaults come
from :mod:`rgflow.defaults`, the same ones :func:`rgflow.flows.build_flow` uses.

Run folders written by older versions are read through :func:`migrate_config`, the one place
that knows their old key names.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
from dataclasses import dataclass, field, fields
from typing import ClassVar
from pathlib import Path

from rgflow.defaults import FLOW_DEFAULTS, block_defaults, default_block, default_prior, spline_range
from rgflow.flows.conv import CONV_COUPLINGS
from rgflow.flows.ode import ODE_METHODS
from rgflow.flows.priors import PRIOR_KINDS
from rgflow.flows.rgflow import FLOW_BLOCK_KINDS
from rgflow.physics.models import ACTION_PARAMS, Action, make_action

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["option", "add_config_arguments", "add_run_arguments", "LoopConfig", "TrainConfig", "COUPLING_NAMES", "load_toml", "normalize_keys",
           "migrate_config"]

COUPLING_NAMES = ("m2", "lam", "kappa", "t", "mu", "T", "shift")
FLOW_KINDS = ("mera", "tebd", "flat")


def check_device(device: str, name: str = "device") -> str:
    """``device`` if it names a device this machine has (``cpu``, ``cuda``, ``cuda:N``), else a one-line ``ValueError``."""
    import re

    import torch

    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"{name}={device!r} is not allowed; allowed: cpu, cuda, cuda:N")
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ValueError(f"{name}={device!r} is not available on this machine ({torch.cuda.device_count()} CUDA "
                             "devices); allowed: cpu" + (", cuda:0.." if torch.cuda.is_available() else ""))
    return device


def _choice(cfg, name, allowed):
    if getattr(cfg, name) not in allowed:
        raise ValueError(f"{name}={getattr(cfg, name)!r} is not allowed; allowed: {', '.join(map(str, allowed))}")


def _positive(cfg, name, integer=True, allow_none=False):
    v = getattr(cfg, name)
    if v is None and allow_none:
        return
    ok = isinstance(v, int) and not isinstance(v, bool) if integer else isinstance(v, (int, float))
    if not ok or not math.isfinite(v) or v <= 0:
        kind = "a positive integer" if integer else "a positive number"
        raise ValueError(f"{name}={v!r} is not allowed: must be {kind}")


def option(default=dataclasses.MISSING, help: str = "", *, choices=None, flag: str | None = None, kind=None,
           default_factory=dataclasses.MISSING, group: str | None = None):
    """A config field that is also a command-line flag: its ``help``, allowed ``choices``, ``flag`` name
    (default ``--field-name``), argument type ``kind`` (default from the annotation) and help ``group``
    live with the field, so an option is written once (:func:`add_config_arguments`). A bool field is
    a switch: ``--name`` when it defaults to False, ``flag`` (e.g. ``--no-augment``) when to True."""
    meta = {"help": help, "choices": choices, "flag": flag, "kind": kind, "group": group}
    return field(default=default, default_factory=default_factory, metadata={"cli": meta})


def _flag_type(f):
    kind = f.metadata["cli"]["kind"]
    if kind is not None:
        return kind
    base = str(f.type).split("|")[0].strip()
    return {"int": int, "float": float, "str": str}.get(base, str)


def add_config_arguments(p, config_cls, exclude: tuple[str, ...] = (), only: tuple[str, ...] | None = None,
                         groups: dict | None = None) -> dict:
    """Add a flag for every :func:`option` field of ``config_cls`` (or the ``only`` ones; not the
    ``exclude`` ones), grouped by their ``group`` (``groups``: argument groups made already, by name;
    returned with the new ones); only flags that are given override the saved or default config
    (``default=SUPPRESS``)."""
    import argparse

    groups = {} if groups is None else groups
    for f in fields(config_cls):
        meta = f.metadata.get("cli")
        if meta is None or f.name in exclude or (only is not None and f.name not in only):
            continue
        target = p
        if meta["group"]:
            target = groups.setdefault(meta["group"], p.add_argument_group(meta["group"]))
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        kw = {"dest": f.name, "default": argparse.SUPPRESS, "help": meta["help"] or None}
        if str(f.type).startswith("bool"):
            kw["action"] = "store_false" if f.default is True else "store_true"
        else:
            kw["type"] = _flag_type(f)
            if meta["choices"] is not None:
                kw["choices"] = [c for c in meta["choices"] if c is not None]
        target.add_argument(flag, **kw)
    return groups


def add_run_arguments(p) -> None:
    """``--out``, ``--resume`` and ``--dry-run``: what every ``... train`` subcommand has besides its config."""
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run stored in --out")
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="print the resolved config and exit")


def _validate_choices(cfg) -> None:
    """Every :func:`option` field with allowed ``choices`` holds one of them."""
    for f in fields(cfg):
        meta = f.metadata.get("cli")
        if meta is None or meta["choices"] is None:
            continue
        if getattr(cfg, f.name) is None and "None" in str(f.type):
            continue
        _choice(cfg, f.name, meta["choices"])


@dataclass
class LoopConfig:
    """What the one training loop (:func:`rgflow.train.loop.run_loop`) reads: optimisation, budget
    and bookkeeping. Every model family's config extends it."""

    batch_size: int = option(64, "minibatch size", group="optimisation")
    lr: float = option(3e-3, "learning rate", group="optimisation")
    optimizer: str = option("adam", choices=("adam", "adamw"), group="optimisation")
    weight_decay: float = 0.0
    lr_schedule: str = option("cosine", "learning-rate schedule", choices=("cosine", "constant"), group="optimisation")
    grad_clip: float = option(10.0, "gradient-norm clip", group="optimisation")
    dtype: str = option("float32", choices=("float32", "float64"), group="optimisation")
    device: str = option("cpu", "cpu, cuda or cuda:N", group="optimisation")
    steps: int | None = option(None, "optimisation steps", group="budget and bookkeeping")
    minutes: float | None = option(None, "wall-clock budget of the training loop: steps, evaluations and checkpoints "
                                   "(start-up excluded; default 5 if no --steps)", group="budget and bookkeeping")
    seed: int = option(0, group="budget and bookkeeping")
    log_every: int = 25
    eval_every: int = option(250, "evaluate every K steps", group="budget and bookkeeping")
    eval_samples: int = 1024
    ckpt_every: int = option(500, "checkpoint every K steps", group="budget and bookkeeping")
    max_bad_steps: int = 20
    deterministic: bool = option(False, "deterministic algorithms (with --steps, a killed and resumed run is "
                                 "bit-identical)", group="budget and bookkeeping")

    #: Config fields that define the model and its target: a checkpoint only loads into a config
    #: that agrees on all of them.
    MODEL_KEYS: ClassVar[tuple[str, ...]] = ()

    def validate_loop(self) -> None:
        """Raise ``ValueError`` naming the first bad loop field and its allowed values."""
        _validate_choices(self)
        check_device(self.device)
        for name in ("batch_size", "log_every", "eval_every", "eval_samples", "ckpt_every", "max_bad_steps"):
            _positive(self, name)
        _positive(self, "lr", integer=False)
        _positive(self, "grad_clip", integer=False)
        _positive(self, "steps", allow_none=True)
        _positive(self, "minutes", integer=False, allow_none=True)
        if self.steps is None and self.minutes is None:
            raise ValueError("a budget is required: set steps (--steps K) or minutes (--minutes M)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict):
        """Build from a dict (TOML, flags, a migrated ``config.json``); see :func:`normalize_keys`."""
        data = normalize_keys(data)
        names = {f.name for f in fields(cls)}
        if "params" not in names and not data.get("params"):
            data.pop("params", None)
        unknown = set(data) - names
        if unknown:
            allowed = sorted(names | (set(COUPLING_NAMES) if "params" in names else set()))
            raise ValueError(f"unknown config key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(allowed)}")
        return cls(**data)


@dataclass
class TrainConfig(LoopConfig):
    """Everything that defines a flow's training run (see ``rgflow train --help`` for each field)."""

    # physics (the couplings are flags of their own: rgflow.cli.main)
    action: str = option("phi4", "lattice model (default phi4)", choices=tuple(ACTION_PARAMS),
                         group="physics (names as in the action formulas)")
    L: int = option(8, "lattice side (default 8)", group="physics (names as in the action formulas)")
    params: dict = field(default_factory=dict)
    # flow
    flow: str = option("mera", "hierarchy (flat: tutorial baseline)", choices=FLOW_KINDS, group="flow")
    block: str | None = option(None, "block bijection (default conv on the MERA, spline on tebd/flat flows and with "
                               "--ode-levels; conv: spline couplings with periodic-CNN conditioners on each level's "
                               "sublattice, one stack shared by all levels; ode-cnn: a neural-ODE CNN on each level's "
                               "sublattice)", choices=FLOW_BLOCK_KINDS, group="flow")
    block_size: int = option(FLOW_DEFAULTS["block_size"], "RG block side b (even)", group="flow")
    n_couplings: int | None = option(None, "coupling layers per block (default 8 for block conv, 4 otherwise)",
                                     group="flow")
    hidden: int | None = option(None, "conditioner width (default 16 for block conv, 32 otherwise)", group="flow")
    layers: int = option(FLOW_DEFAULTS["layers"], "conditioner hidden layers", group="flow")
    repeats: int = option(1, "disentangler/decimator pairs per level", group="flow")
    depth: int | None = option(None, "truncate the hierarchy to this many levels", group="flow")
    num_bins: int | None = option(None, "spline bins", group="flow")
    tail_bound: float | None = option(None, "spline interval [-B, B]", group="flow")
    prior: str | None = option(None, "latent prior (default normal-wall for --action phi4, normal otherwise)",
                               choices=PRIOR_KINDS, group="flow")
    learn_level_scale: bool | None = None  # None: learned per-level prior scales, except for block 'conv'
    equivariant: bool = option(False, "exactly equivariant blocks: Z2-odd (phi -> -phi) for real fields, U(1) for "
                               "complex (ode)", group="flow")
    mixture: str | None = option("auto", "train and sample the exact mixture q_G(x) = mean_g q(g x) over this "
                                 "symmetry group of the action (z2: phi -> -phi; d4: lattice rotations/reflections; "
                                 "z2xd4: both); default auto: z2 for the Ising model, none otherwise",
                                 choices=("auto", "none", "z2", "d4", "z2xd4"), group="flow")
    conv_finest: bool = option(False, "block conv: the finest level gets couplings of its own (the coarser levels "
                               "share one stack; still independent of L)", group="flow")
    conv_coupling: str = option("spline", "block conv: the elementwise map of each coupling (spline-affine: the "
                                "spline followed by a conditional shift and scale)", choices=CONV_COUPLINGS, group="flow")
    ode_method: str = option("rk4", choices=ODE_METHODS, group="flow")
    ode_steps: int = option(8, "fixed-step ODE solver steps", group="flow")
    ode_levels: str | None = option(None, "neural-ODE CNN levels, the others keep --block blocks: ':' all, '2:' levels "
                                    ">= 2, '0,1'", group="flow")
    ode_kinetic: float = option(0.0, "RNODE kinetic-energy weight", group="flow")
    ode_jacobian: float = option(0.0, "RNODE Jacobian (Frobenius) penalty weight", group="flow")
    ode_checkpoint: bool = option(False, "recompute each ODE solver step in the backward pass (less memory, ~1.5x "
                                  "time)", group="flow")
    path_gradient: bool = option(False, "path gradients of the reverse KL", group="optimisation")
    # size transfer: start from the flow of a run on a smaller lattice (L = L_0 2^k)
    init_from: str | None = option(None, "start from the trained flow of this run folder on a smaller lattice "
                                   "(L = L0 * 2^k, same architecture): its levels become the coarse levels here")
    init_finest: str = option("copy", "with --init-from: the k new fine levels copy the finest trained level "
                              "(default) or start at the identity", choices=("copy", "identity"))
    # training from data (forward KL) instead of from the action
    data: str | None = option(None, "train by maximum likelihood (forward KL) on this ensemble .npz (from `rgflow "
                              "mcmc ... --out`); the action, couplings and L are the ensemble's")
    holdout: float = option(0.1, "held-out fraction of --data (fixed by --seed)")

    MODEL_KEYS: ClassVar[tuple[str, ...]] = (
        "action", "L", "params", "flow", "block", "block_size", "n_couplings", "hidden", "layers",
        "repeats", "depth", "num_bins", "tail_bound", "prior", "learn_level_scale", "equivariant", "mixture",
        "ode_method", "ode_steps", "ode_levels", "conv_finest", "conv_coupling",
    )

    def __post_init__(self):
        if self.mixture == "auto":  # the Z2 mixture where a flow is known to miss a sector: the Ising model
            self.mixture = "z2" if self.action == "ising" and not self.equivariant else None
        if self.block is None:
            self.block = default_block(self.flow, self.ode_levels)
        for name, value in block_defaults(self.block).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        num_bins, tail_bound = spline_range(self.action)
        if self.tail_bound is None:
            self.tail_bound = tail_bound
        if self.num_bins is None:
            self.num_bins = num_bins
        self.validate()
        if self.prior is None:  # after validate(): the action's couplings are resolved
            self.prior = default_prior(self.action, self.params)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field and its allowed values."""
        choice = functools.partial(_choice, self)
        positive = functools.partial(_positive, self)
        self.validate_loop()
        for name in ("L", "block_size", "n_couplings", "hidden", "layers", "repeats", "num_bins", "ode_steps"):
            positive(name)
        positive("tail_bound", integer=False)
        for name in ("ode_kinetic", "ode_jacobian"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}={value!r} is not allowed: must be a number >= 0")
        if self.ode_checkpoint and self.ode_method == "dopri5":
            raise ValueError("ode_checkpoint=true is not allowed with ode_method='dopri5'; allowed methods: "
                             "rk4, euler, midpoint")
        positive("depth", allow_none=True)
        if not (isinstance(self.holdout, (int, float)) and 0 < self.holdout < 1):
            raise ValueError(f"holdout={self.holdout!r} is not allowed: a fraction in (0, 1)")
        if not isinstance(self.params, dict):
            raise ValueError(f"params must be a table of {', '.join(COUPLING_NAMES)}, got {self.params!r}")
        self.params = dict(self.make_action().params)  # validated, defaults resolved
        if self.equivariant:
            allowed = ("affine", "spline", "ode", "ode-cnn", "conv") if self.equivariance == "z2" else ("ode", "ode-cnn")
            if self.flow == "flat" or self.block not in allowed:
                raise ValueError(f"equivariant={self.equivariant} needs flow='mera' or 'tebd' and block in {allowed} "
                                 f"for action {self.action!r}, got flow={self.flow!r}, block={self.block!r}")
        from rgflow.flows.symmetrize import SYMMETRY_GROUPS

        choice("mixture", (None, *SYMMETRY_GROUPS))
        if self.mixture in ("z2", "z2xd4") and self.equivariant and self.equivariance == "z2":
            raise ValueError(f"mixture={self.mixture!r} with equivariant=true is not allowed: the blocks are "
                             "already exactly Z2-odd (use one or the other)")
        if self.flow == "flat":
            if self.L < 2 or self.L % 2:
                raise ValueError(f"L={self.L} is not allowed for flow='flat': the checkerboard needs an even L >= 2")
        else:  # the layout validates L against the block size
            from rgflow.layout import Layout

            layout = Layout(self.L, block_size=self.block_size, kind=self.flow,
                            depth=self.depth or (1 if self.flow == "tebd" else None), repeats=self.repeats)
            if self.conv_finest and self.block != "conv":
                raise ValueError(f"conv_finest=true is not allowed with block={self.block!r}; allowed: block='conv'")
            if self.conv_coupling != "spline" and self.block != "conv":
                raise ValueError(f"conv_coupling={self.conv_coupling!r} is not allowed with block={self.block!r}; "
                                 "allowed: block='conv'")
            if self.block == "conv" and (self.flow != "mera" or self.learn_level_scale or self.ode_levels):
                raise ValueError(f"block='conv' needs flow='mera', learn_level_scale=false and no ode_levels, got "
                                 f"flow={self.flow!r}, learn_level_scale={self.learn_level_scale}, "
                                 f"ode_levels={self.ode_levels!r}")
            if self.ode_levels is not None:
                from rgflow.flows.rgflow import parse_levels

                parse_levels(self.ode_levels, layout.n_levels)

    @property
    def equivariance(self) -> str | None:
        """The group the equivariant blocks carry exactly: ``"z2"`` (real fields) or ``"u1"`` (complex), or None."""
        if not self.equivariant:
            return None
        return "u1" if ACTION_PARAMS[self.action][1] == 2 else "z2"

    def make_action(self) -> Action:
        return make_action(self.action, **self.params)


def migrate_config(data: dict) -> dict:
    """A saved run config (``config.json`` or a checkpoint's) as the current code reads it: folders from
    before model families had kinds hold flows; flow folders from before symmetrised flows hold plain
    flows; ``symmetric`` and ``symmetrize`` are the first names of ``equivariant`` and ``mixture``. The
    one place old folders are migrated."""
    data = dict(data)
    data.setdefault("kind", "flow")
    if data["kind"] == "flow":
        for old, new in (("symmetric", "equivariant"), ("symmetrize", "mixture")):
            if old in data:
                value = data.pop(old)
                data.setdefault(new, value)
        data.setdefault("mixture", None)
        data.setdefault("block", "spline")  # the default block and width before conv (folders always saved them)
        data.setdefault("hidden", 32)
        if data.get("schedule") in ("cosine", "constant"):  # the learning-rate schedule's first name
            data["lr_schedule"] = data.pop("schedule")
        old = data.pop("couplings", None)  # first the physics table, then the number of coupling layers
        if isinstance(old, dict):
            data["params"] = {**old, **(data.get("params") or {})}
        elif isinstance(old, int) and not isinstance(old, bool):
            data.setdefault("n_couplings", old)
    return data


def normalize_keys(data: dict) -> dict:
    """Gather flat physics couplings (``m2 = -4``, as the flags spell them) into the ``params`` table."""
    data = dict(data)
    params = data.pop("params", None) or {}
    if not isinstance(params, dict):
        raise ValueError(f"params must be a table of {', '.join(COUPLING_NAMES)}, got {params!r}")
    params = dict(params)
    for key in COUPLING_NAMES:
        if key in data:
            params[key] = data.pop(key)
    data["params"] = params
    return data


def load_toml(path: str | Path) -> dict:
    """Read a TOML config file into a flat dict; a missing or malformed file is a ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
