r"""Denoising score matching in RG coordinates, through the one training loop.

``train_diffusion(cfg, run_dir)`` builds a :class:`~rgflow.train.loop.Task` -- the
:class:`DiffusionModel` (coordinates, schedule, denoiser), the :class:`DenoisingLoss` module
(``forward(batch_size) -> loss``: a minibatch of the training split, randomly shifted and, for
actions with the symmetry, sign-flipped; a random level and log-SNR per sample; EDM's weighted loss;
through a trained flow's coordinates the fields are encoded a pool at a time, :class:`EncodedPool`)
and an EMA of the weights -- and runs :func:`~rgflow.train.loop.run_loop`: the same run folder, ``config.json``
(with ``"kind": "diffusion"``), ``metrics.jsonl`` (held-out loss at every evaluation), atomic
checkpoints, ``--resume``, signals, non-finite guard, progress bar and DDP as flow training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from rgflow.config import LoopConfig
from rgflow.diffusion.coords import SCALINGS, RGCoordinates
from rgflow.diffusion.network import NET_SPACES, EMA, Denoiser
from rgflow.diffusion.schedule import RGSchedule
from rgflow.train.distributed import sampler_seed

__all__ = ["DiffusionConfig", "DiffusionModel", "DenoisingLoss", "EncodedPool", "train_diffusion", "load_diffusion_run",
           "config_for_ensemble", "NOISE_SCHEDULES"]

NOISE_SCHEDULES = ("rg", "standard")
#: Per-level log-SNR offset of the RG schedule when --delta is not given.
DEFAULT_DELTA = 4.0


@dataclass
class DiffusionConfig(LoopConfig):
    """A diffusion model's training run (``rgflow diffuse train --help``).

    ``noise_schedule`` ``"rg"`` means ``delta`` = :data:`DEFAULT_DELTA` and per-level scaling
    unless given; ``"standard"`` means ``delta = 0`` and one global scale.
    """

    kind: str = "diffusion"
    data: str = ""
    action: str = ""
    params: dict = field(default_factory=dict)
    L: int = 0
    coords: str = "haar"
    levels: int = 0
    noise_schedule: str = "rg"
    delta: float | None = None
    level_scale: str | None = None
    logsnr_max: float = 10.0
    logsnr_min: float = -10.0
    width: int = 32
    depth: int = 3
    net_space: str | None = None
    ema: float = 0.999
    holdout: float = 0.1
    augment: bool = True
    lr: float = 1e-3
    grad_clip: float = 1.0

    MODEL_KEYS: ClassVar[tuple[str, ...]] = ("coords", "levels", "noise_schedule", "delta", "level_scale", "logsnr_max",
                                             "logsnr_min", "width", "depth", "net_space")

    def __post_init__(self):
        rg = self.noise_schedule == "rg"
        if self.delta is None:
            self.delta = DEFAULT_DELTA if rg else 0.0
        if self.level_scale is None:
            self.level_scale = "level" if rg else "global"
        if self.net_space is None:
            self.net_space = "field" if self.coords == "haar" else "latent"
        self.validate()

    def validate(self) -> None:
        self.validate_loop()
        if self.kind != "diffusion":
            raise ValueError(f"kind={self.kind!r} is not a diffusion run")
        for name, allowed in (("noise_schedule", NOISE_SCHEDULES), ("level_scale", SCALINGS),
                              ("net_space", NET_SPACES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed; allowed: {', '.join(allowed)}")
        if not self.data:
            raise ValueError("--data is required: an ensemble .npz from `rgflow mcmc ... --out` or `rgflow sample`")
        if not 0 < self.holdout < 1:
            raise ValueError(f"holdout={self.holdout!r} is not allowed: a fraction in (0, 1)")
        if not (isinstance(self.delta, (int, float)) and math.isfinite(self.delta) and self.delta >= 0):
            raise ValueError(f"delta={self.delta!r} is not allowed: must be a number >= 0")
        for name in ("width", "depth"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed: must be a positive integer")
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 0:
            raise ValueError(f"levels={self.levels!r} is not allowed: the first diffused level K >= 0 (--levels K:)")
        if self.levels > 0 and self.coords == "haar":
            raise ValueError("levels > 0 needs --coords RUN (a trained flow whose prior generates the finer levels)")


def make_coordinates(spec: str, L: int, channels: int, scaling: str, device: str = "cpu",
                     levels: int = 0) -> RGCoordinates:
    """``"haar"`` or a flow run folder -> :class:`RGCoordinates` (unfitted scale), diffusing levels ``>= levels``."""
    from rgflow.flows.haar import haar_flow
    from rgflow.layout import Layout
    from rgflow.train import load_run

    if spec == "haar":
        flow = haar_flow(Layout(L), channels)
    else:
        cfg, flow, _ = load_run(spec, device=device)
        if cfg.L != L or flow.channels != channels or not hasattr(flow, "layout"):
            raise ValueError(f"--coords {spec}: a hierarchical flow run for L={L} with {channels} channel(s) is "
                             f"needed, got flow={cfg.flow!r}, L={cfg.L}, channels={flow.channels}")
    return RGCoordinates(flow, scaling, levels)


class DiffusionModel(nn.Module):
    """Coordinates (with the fitted scale), schedule and denoiser of one diffusion run, and the
    density interface of every model family: :meth:`sample` ``(n) -> (x, ln q)`` and :meth:`log_prob`,
    exact for the deterministic PF-ODE sampler with ``nfe`` network evaluations
    (:mod:`rgflow.diffusion.exact`)."""

    def __init__(self, coords: RGCoordinates, schedule: RGSchedule, denoiser, nfe: int = 32):
        super().__init__()
        self.coords, self.schedule, self.denoiser, self.nfe = coords, schedule, denoiser, nfe

    @classmethod
    def from_config(cls, cfg: DiffusionConfig, L: int, channels: int, device: str = "cpu", nfe: int = 32):
        """The (untrained) model a config describes."""
        coords = make_coordinates(cfg.coords, L, channels, cfg.level_scale, device, cfg.levels)
        schedule = RGSchedule(coords.n_levels, cfg.delta, cfg.logsnr_max, cfg.logsnr_min)
        return cls(coords, schedule, Denoiser(coords, cfg.width, cfg.depth, cfg.net_space), nfe)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x [n, C, L, L], ln q(x) [n])`` from the PF-ODE sampler with ``self.nfe`` evaluations."""
        from rgflow.diffusion.exact import exact_sample

        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n (number of samples) must be a positive integer, got {n!r}")
        # the D vector-Jacobian products per sample run batched: at most ~2^16 lattice sites of
        # network activations in flight, in chunks of at most D products per sample (default U-Net,
        # one thread: at L = 32 a step's Jacobian takes 12 s in chunks of 64 against 28 s in chunks
        # of 256, peak memory under 1 GiB either way)
        L = self.coords.layout.L
        rows = max(1, 2**16 // (L * L))
        chunk = min(math.prod(self.coords.shape), rows)
        per_call = max(1, rows // chunk)
        parts = [exact_sample(self, min(per_call, n - i), self.nfe, generator, chunk)
                 for i in range(0, n, per_call)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``ln q(x) [B]`` of the same sampler."""
        from rgflow.diffusion.exact import exact_log_prob

        return exact_log_prob(self, x, self.nfe)


class EncodedPool:
    """Minibatches of encoded training fields ``w = coords.encode(x)[0]`` for coordinates that are a
    trained flow, where encoding a field costs a whole flow pass -- far more than a denoiser step on
    a few coarse latents (hybrid at L = 16: 1260 steps in 3 min when every minibatch was encoded).
    ``size`` augmented fields from ``batches`` are encoded at once (in chunks of ``chunk``, each with
    its own random shift) and minibatches are drawn from them with replacement until each has been
    served ``reuse`` times on average (with fresh noise in the loss every time); then a fresh pool.
    ``state()`` / ``load(state)`` make a resumed run continue with the same pool."""

    def __init__(self, coords, batches, generator: torch.Generator, size: int = 4096, reuse: int = 8,
                 chunk: int = 256):
        self.coords, self.batches, self.generator = coords, batches, generator
        self.size, self.reuse, self.chunk = size, reuse, chunk
        self.pool, self.served = None, 0

    @torch.no_grad()
    def _refill(self) -> None:
        self.pool = torch.cat([self.coords.encode(self.batches(self.chunk))[0]
                               for _ in range(-(-self.size // self.chunk))])
        self.served = 0

    def __call__(self, batch_size: int) -> torch.Tensor:
        if self.pool is None or self.served >= self.reuse * len(self.pool):
            self._refill()
        self.served += batch_size
        idx = torch.randint(len(self.pool), (batch_size,), generator=self.generator, device=self.pool.device)
        return self.pool[idx]

    def state(self) -> dict:
        return {"pool": self.pool, "served": self.served}

    def load(self, state: dict) -> None:
        self.pool, self.served = state["pool"], state["served"]


class DenoisingLoss(nn.Module):
    """``forward(batch_size) -> loss``: EDM-weighted denoising score matching on minibatches drawn
    by ``batches`` (a :class:`~rgflow.ensemble.FieldBatches` of the training split, encoded per
    minibatch, or an :class:`EncodedPool` of already encoded ones).

    Noise levels as in EDM, where the denoiser can learn: for every sample a random level ``l`` and
    a log-SNR ``lambda ~ N(LOGSNR_MEAN, LOGSNR_STD^2)`` for it, i.e. ``t = schedule.time_of(lambda, l)``
    (the other levels follow the schedule). Uniform ``t`` would spend most samples where every
    level is either clean or pure noise and the loss cannot be lowered.
    """

    LOGSNR_MEAN, LOGSNR_STD = 1.0, 3.0

    def __init__(self, model: DiffusionModel, batches, generator: torch.Generator):
        super().__init__()
        self.model, self.batches, self.generator = model, batches, generator

    def forward(self, batch_size: int) -> torch.Tensor:
        if isinstance(self.batches, EncodedPool):
            w = self.batches(batch_size)
        else:
            with torch.no_grad():
                w = self.model.coords.encode(self.batches(batch_size))[0]
        g, schedule = self.generator, self.model.schedule
        level = torch.randint(schedule.n_levels, (batch_size,), generator=g, device=w.device).to(w.dtype)
        lam = self.LOGSNR_MEAN + self.LOGSNR_STD * torch.randn(batch_size, dtype=w.dtype, device=w.device, generator=g)
        t = schedule.time_of(lam, level)
        eps = torch.randn(w.shape, dtype=w.dtype, device=w.device, generator=self.generator)
        return self.model.denoiser.loss(w, schedule.sigma(t), eps).mean()


def _diffusion_task(cfg: DiffusionConfig, ctx, device: str):
    from rgflow.ensemble import FieldBatches, load_ensemble, split_ensemble
    from rgflow.train.loop import Task

    ens = load_ensemble(cfg.data)
    if (ens.action.name, dict(ens.action.params), ens.L) != (cfg.action, cfg.params, cfg.L):
        raise ValueError(f"--data {cfg.data}: the ensemble ({ens.action.name} {dict(ens.action.params)} L={ens.L}) is not "
                         f"the one this run was trained on ({cfg.action} {cfg.params} L={cfg.L})")
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    fields = ens.fields.to(device=device, dtype=dtype)
    train_idx, test_idx = split_ensemble(len(fields), cfg.holdout, cfg.seed)
    model = DiffusionModel.from_config(cfg, cfg.L, ens.action.channels, device).to(device=device, dtype=dtype)
    model.coords.fit_scale(fields[train_idx])
    gen = torch.Generator(device=device).manual_seed(sampler_seed(cfg.seed, ctx.rank))
    batches = FieldBatches(fields[train_idx], gen, shift=cfg.augment, sign=cfg.augment and ens.action.sign_symmetric)
    pool = EncodedPool(model.coords, batches, gen) if cfg.coords != "haar" else None
    loss = DenoisingLoss(model, pool or batches, gen)
    ema = EMA(model.denoiser, cfg.ema)
    held_out = fields[test_idx][:cfg.eval_samples]

    @torch.no_grad()
    def quick_eval(step: int) -> dict:
        """Held-out loss on a fixed grid of t (the same noise every time), EMA weights."""
        g = torch.Generator(device=device).manual_seed(cfg.seed)
        t = torch.linspace(0.05, 0.95, 10, dtype=dtype, device=device).repeat_interleave(len(held_out))
        y = model.coords.encode(held_out.repeat(10, 1, 1, 1))[0]
        eps = torch.randn(y.shape, dtype=dtype, device=device, generator=g)
        return {"heldout_loss": float(ema.shadow.loss(y, model.schedule.sigma(t), eps).mean()),
                "n_heldout": len(held_out)}

    def load_extra(state: dict) -> None:
        if "ema" in state:
            ema.shadow.load_state_dict(state["ema"])
        if pool is not None and "pool" in state:
            pool.load(state["pool"])

    def extra_state() -> dict:
        return {"ema": ema.shadow.state_dict(), **({"pool": pool.state()} if pool is not None else {})}

    return Task(model, loss, gen, quick_eval=quick_eval, after_step=ema.update,
                extra_state=extra_state, load_extra_state=load_extra)


def train_diffusion(cfg: DiffusionConfig, run_dir: str | Path, resume: bool = False,
                    progress: bool | None = None) -> dict:
    """Train the diffusion model ``cfg`` describes into ``run_dir`` (see the module docstring)."""
    from rgflow.train.loop import run_loop

    return run_loop(cfg, run_dir, _diffusion_task, resume, progress)


def load_diffusion_run(run_dir: str | Path, device: str | None = None, nfe: int = 32):
    """``(config, model with the EMA denoiser weights, the action, checkpoint state)``; the model's
    density is that of the PF-ODE sampler with ``nfe`` evaluations."""
    from rgflow.physics.models import make_action
    from rgflow.train.loop import load_run_state

    cfg, state = load_run_state(run_dir, "diffusion", DiffusionConfig, device,
                                "; use `rgflow eval/sample/mcmc` for a flow run, or train one with `rgflow diffuse train`")
    action = make_action(cfg.action, **cfg.params)
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    model = DiffusionModel.from_config(cfg, cfg.L, action.channels, cfg.device, nfe).to(device=cfg.device, dtype=dtype)
    model.load_state_dict(state["model"])
    if "ema" in state.get("extra", {}):
        model.denoiser.load_state_dict(state["extra"]["ema"])
    model.eval()
    return cfg, model, action, state


def config_for_ensemble(data: str, **options) -> DiffusionConfig:
    """A :class:`DiffusionConfig` for the ensemble ``data`` (its action, couplings and ``L``)."""
    from rgflow.ensemble import load_ensemble
    from rgflow.layout import Layout

    ens = load_ensemble(data)
    Layout(ens.L)  # the Haar hierarchy (block size 2) must fit the ensemble's lattice
    return DiffusionConfig(data=str(data), action=ens.action.name, params=dict(ens.action.params), L=ens.L, **options)
