r"""Score matching in whitened coordinates, through the one training loop.

``train_diffusion(cfg, run_dir)`` builds a :class:`~rgflow.train.loop.Task` and runs
:func:`~rgflow.train.loop.run_loop` (run folder, ``config.json`` with ``"kind": "diffusion"``,
``metrics.jsonl``, atomic checkpoints, ``--resume``, signals, progress, DDP as flow training).

* The model (:class:`~rgflow.diffusion.model.DiffusionModel`) is built from the training split's
  power spectrum, so it starts as the ensemble's exact Gaussian.
* :class:`DenoisingLoss`: minibatches of the training split, randomly shifted, reflected, rotated and
  (Z2 actions) sign-flipped; every stage gets a uniform ``tau`` per sample and the loss
  ``|F - target|^2`` averaged over its variables; the stages' losses are averaged with equal weight
  (every level learns: the top level's one variable weighs as much as the finest level), and small
  stages see several noise draws per field (:func:`replicas`). Targets: ``dsm``,
  ``sin(theta) u - cos(theta) eps`` (denoising score matching), or ``force``: the action's exact
  force through target score matching (De Bortoli et al., arXiv:2402.08667) mixed with it at the
  weight ``cos^2(theta)`` that cancels the Gaussian part, ``sin(theta) r`` with
  ``r = u + g``, ``g = -(dx/du)^T grad S(x)`` -- no noise in the target, and exactly zero for a
  Gaussian action. On a coarse stage ``g`` also carries the finer levels' fluctuations
  (``rho = E[r^2]`` per variable: 30 for the zero mode at kappa_c, L = 16, against 0.02 on the finest
  level), so each stage mixes the two unbiased targets with ``w = 1 / (1 + rho sin^2 theta)``, the
  weight of least variance when the denoising target's is 1 (:func:`force_residual`).
* :class:`EMA`: EDM's exponential moving average with a half-life that grows with training
  (``min(ema_halflife, ema_rampup * samples seen)``); ``--weights ema|raw`` chooses what samples.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from rgflow.config import LoopConfig, option
from rgflow.diffusion.model import DiffusionModel, build_stages
from rgflow.diffusion.nets import NET_KINDS
from rgflow.diffusion.stages import SCHEDULES
from rgflow.runs import RunFamily
from rgflow.train.distributed import sampler_seed

__all__ = ["DiffusionConfig", "DenoisingLoss", "EMA", "EncodedPool", "train_diffusion", "config_for_ensemble",
           "build_model", "replicas", "force_residual", "TARGETS", "WEIGHTS", "RUN_FAMILY"]

TARGETS = ("force", "dsm")
WEIGHTS = ("ema", "raw")


def parse_levels(text: str) -> int:
    """``"K:"`` or ``"K"`` -> ``K`` (levels ``>= K`` are diffused), for ``--levels``."""
    import argparse

    try:
        k = int(text[:-1] if text.endswith(":") else text)
    except ValueError:
        k = -1
    if k < 0:
        raise argparse.ArgumentTypeError(f"must be K: or K with an integer K >= 0 (levels >= K diffused), got {text!r}")
    return k


@dataclass
class DiffusionConfig(LoopConfig):
    """A diffusion model's training run (``rgflow diffuse train --help``)."""

    kind: str = "diffusion"
    data: str = option("", "ensemble from `rgflow mcmc ... --out` or `rgflow sample` (its action, couplings and L)")
    action: str = ""
    params: dict = field(default_factory=dict)
    L: int = 0
    coords: str = option("field", "field (default) or a trained flow run folder (the hybrid)")
    levels: int | None = option(None, "K: with --coords RUN, diffuse the flow's latents of levels >= K (default 1; 0: "
                                "all); the finer ones keep the flow's prior", kind=parse_levels)
    noise_schedule: str = option("rg", "rg (default): RG levels generated one after the other, coarse to fine; "
                                 "standard: white noise on the field (EDM steps); ve: the variance-exploding process "
                                 "of Wang, Aarts & Zhou", choices=SCHEDULES, flag="--schedule")
    net: str = option("local", "local (default): periodic convolutions with a bounded receptive field; unet: the "
                      "U-Net", choices=NET_KINDS)
    width: int = option(32, "channels of the network (default 32)")
    depth: int = option(4, "local: convolutions (default 4); unet: down/up stages")
    target: str = option("dsm", "dsm (default): denoising score matching; force: the action's force mixed into the "
                         "target (target score matching, no noise in it; fields only)", choices=TARGETS)
    odd: bool = True
    ema_halflife: float = option(500_000.0, "EMA half-life in training samples (default 500000), capped by "
                                 "--ema-rampup x samples seen")
    ema_rampup: float = option(0.05, "EMA half-life as a fraction of the samples seen while that is shorter "
                               "(default 0.05)")
    holdout: float = option(0.1, "held-out fraction of the ensemble (fixed by --seed)")
    augment: bool = option(True, "no random lattice shifts, rotations, reflections and sign flips of the training "
                           "fields", flag="--no-augment")
    lr: float = option(2e-3, "learning rate", group="optimisation")
    grad_clip: float = option(1.0, "gradient-norm clip", group="optimisation")

    MODEL_KEYS: ClassVar[tuple[str, ...]] = ("coords", "levels", "noise_schedule", "net", "width", "depth", "odd")

    #: Keys only diffusion runs written before the whitened, staged models have.
    OLD_KEYS: ClassVar[frozenset[str]] = frozenset({"delta", "level_scale", "net_space", "ema", "logsnr_max", "logsnr_min"})

    @classmethod
    def from_dict(cls, data: dict):
        old = sorted(cls.OLD_KEYS & set(data))
        if old:
            raise ValueError(f"this diffusion run was written in rgflow's earlier diffusion format (keys {', '.join(old)}: "
                             "Haar coordinates with per-level scales), which this version cannot sample; retrain it with "
                             "`rgflow diffuse train --data ...`")
        return super().from_dict(data)

    def __post_init__(self):
        if self.levels is None:
            self.levels = 0 if self.coords == "field" else 1
        self.validate()

    def validate(self) -> None:
        self.validate_loop()
        if self.kind != "diffusion":
            raise ValueError(f"kind={self.kind!r} is not a diffusion run")
        if not self.data:
            raise ValueError("--data is required: an ensemble .npz from `rgflow mcmc ... --out` or `rgflow sample`")
        if not 0 < self.holdout < 1:
            raise ValueError(f"holdout={self.holdout!r} is not allowed: a fraction in (0, 1)")
        for name, low in (("width", 1), ("depth", 1 if self.net == "unet" else 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} is not allowed: an integer >= {low}")
        if not (isinstance(self.ema_halflife, (int, float)) and math.isfinite(self.ema_halflife) and self.ema_halflife >= 0):
            raise ValueError(f"ema_halflife={self.ema_halflife!r} is not allowed: a number of samples >= 0")
        if not (isinstance(self.ema_rampup, (int, float)) and 0 < self.ema_rampup <= 1):
            raise ValueError(f"ema_rampup={self.ema_rampup!r} is not allowed: a fraction in (0, 1]")
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 0:
            raise ValueError(f"levels={self.levels!r} is not allowed: the first diffused level K >= 0 (--levels K:)")
        if self.coords == "field":
            if self.levels:
                raise ValueError("levels > 0 needs --coords RUN (a trained flow whose prior generates the finer levels)")
        else:
            if self.noise_schedule != "rg" or self.target != "dsm":
                raise ValueError("--coords RUN (the hybrid) supports --schedule rg and --target dsm only, got "
                                 f"schedule={self.noise_schedule!r}, target={self.target!r}")


def replicas(n_vars: list[int], most: int = 32) -> list[int]:
    """Noise draws per field for each stage: ``n_max / (4 n)`` clamped to ``[1, most]``, so a level
    of few variables (the top: one per channel) still sees many (theta, eps) per step."""
    n_max = max(n_vars)
    return [max(1, min(most, n_max // (4 * n))) for n in n_vars]


@torch.no_grad()
def force_residual(model, fields: torch.Tensor, action) -> list[torch.Tensor]:
    """``rho = E[|u + g|^2]`` (the force target's variance) per stage on ``fields``, pooled over the variables
    that share a noise schedule (:meth:`~rgflow.diffusion.stages.Stage.pooled`: a stage, or a momentum shell
    of a spectral stage, where the zero mode's ``rho`` is as large as the top level's)."""
    loss = DenoisingLoss(model, lambda n: fields, torch.Generator(device=fields.device), action)
    zs, _, gs = loss.encode(len(fields))
    return [stage.pooled(((z + g) ** 2).mean(0)) for stage, z, g in zip(model.stages, zs, gs)]


def build_model(cfg: DiffusionConfig, P: torch.Tensor | None, channels: int, device: str = "cpu") -> DiffusionModel:
    """The model ``cfg`` describes: field coordinates from the spectrum ``P [C, L, L]``, or a flow run's latents."""
    from rgflow.layout import Layout

    if cfg.coords == "field":
        return DiffusionModel.build(P, Layout(cfg.L), cfg.noise_schedule, cfg.net, cfg.width, cfg.depth, cfg.odd)
    from rgflow.diffusion.latent import LatentPyramid
    from rgflow.runs import open_run

    source = open_run(cfg.coords, "flow", device=device)
    flow_cfg, flow = source.config, source.model
    if flow_cfg.L != cfg.L or flow.channels != channels or flow.layout is None:
        raise ValueError(f"--coords {cfg.coords}: a hierarchical flow run for L={cfg.L} with {channels} channel(s) is "
                         f"needed, got flow={flow_cfg.flow!r}, L={flow_cfg.L}, channels={flow.channels}")
    coords = LatentPyramid(flow, cfg.levels)
    return DiffusionModel(coords, build_stages(coords, "rg", cfg.net, cfg.width, cfg.depth, False))


class EncodedPool:
    """Minibatches of a trained flow's diffused latents ``w``: ``size`` augmented fields are encoded at
    once (in chunks of ``chunk``) and served ``reuse`` times on average with fresh noise, since one
    flow pass costs far more than a step on a few coarse latents. ``state()`` / ``load()`` checkpoint it."""

    def __init__(self, coords, batches, generator: torch.Generator, size: int = 4096, reuse: int = 8,
                 chunk: int = 256):
        self.coords, self.batches, self.generator = coords, batches, generator
        self.size, self.reuse, self.chunk = size, reuse, chunk
        self.pool, self.served = None, 0

    @torch.no_grad()
    def _refill(self) -> None:
        self.pool = torch.cat([self.coords.latents(self.batches(self.chunk))[0]
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
    """``forward(batch_size) -> loss`` (module docstring); ``last_parts`` holds each stage's loss.

    Args:
        model: the :class:`DiffusionModel`.
        draw: ``batch_size -> fields [B, C, L, L]`` (field coordinates) or an :class:`EncodedPool`.
        generator: the loop's stream (noise levels and noise).
        action: the ensemble's action for ``target="force"`` (None: ``dsm``).
        rho: :func:`force_residual` per stage (default 0: the force target alone).
    """

    def __init__(self, model: DiffusionModel, draw, generator: torch.Generator, action=None,
                 rho: list | None = None):
        super().__init__()
        self.model, self.draw, self.generator, self.action = model, draw, generator, action
        self.rho = rho or [0.0] * len(model.stages)
        self.replicas = replicas([st.n_vars for st in model.stages])
        self.last_parts: list[float] = []

    def encode(self, batch_size: int):
        """``(clean z per stage, context per stage, force target g per stage or None)``."""
        coords = self.model.coords
        if isinstance(self.draw, EncodedPool):
            zs, ctx = coords.whiten(self.draw(batch_size))
            return zs, ctx, [None] * len(zs)
        with torch.no_grad():
            zs, ctx, _ = coords.encode(self.draw(batch_size))
        if self.action is None:
            return zs, ctx, [None] * len(zs)
        with torch.enable_grad():
            leaves = [z.detach().requires_grad_(True) for z in zs]
            state = None
            for s, z in enumerate(leaves):
                state = coords.absorb(s, state, z)
            x, _ = coords.finish(state)
            grads = torch.autograd.grad(self.action.evaluate(x).sum(), leaves)
        return zs, ctx, [-g for g in grads]

    def stage_loss(self, stage, u, context, g, n_rep: int, rho=0.0) -> torch.Tensor:
        gen = self.generator
        if n_rep > 1:
            u = u.repeat(n_rep, *[1] * (u.dim() - 1))
            context = None if context is None else context.repeat(n_rep, *[1] * (context.dim() - 1))
            g = None if g is None else g.repeat(n_rep, *[1] * (g.dim() - 1))
        tau = torch.rand(len(u), dtype=u.dtype, device=u.device, generator=gen)
        theta = stage.theta(tau)
        eps = torch.randn(u.shape, dtype=u.dtype, device=u.device, generator=gen)
        z = torch.cos(theta) * u + torch.sin(theta) * eps
        sin, cos = torch.sin(theta), torch.cos(theta)
        target = sin * u - cos * eps
        if g is not None:
            w = 1 / (1 + (rho.to(u) if torch.is_tensor(rho) else rho) * sin**2)
            target = w * sin * (u + g) + (1 - w) * target
        return (stage.loss_weight(u) * (stage.velocity(z, tau, context) - target) ** 2).mean()

    def forward(self, batch_size: int) -> torch.Tensor:
        zs, ctx, gs = self.encode(batch_size)
        parts = [self.stage_loss(st, u, c, g, r, rho)
                 for st, u, c, g, r, rho in zip(self.model.stages, zs, ctx, gs, self.replicas, self.rho)]
        self.last_parts = [float(p.detach()) for p in parts]
        return torch.stack(parts).mean()


class EMA:
    """EDM's moving average of the stages' weights (Karras et al. 2022, ``training_loop.py``): after each
    step, with ``n`` samples seen before it, ``h = min(halflife, rampup n)`` and
    ``ema <- ema + (1 - beta)(theta - ema)``, ``beta = 0.5^(batch / h)`` (``beta = 0`` at the start)."""

    def __init__(self, module: nn.Module, batch_size: int, halflife: float, rampup: float):
        self.module, self.batch_size, self.halflife, self.rampup = module, batch_size, halflife, rampup
        self.shadow = copy.deepcopy(module).requires_grad_(False)
        self.seen = 0

    @torch.no_grad()
    def update(self) -> None:
        h = min(self.halflife, self.rampup * self.seen)
        beta = 0.5 ** (self.batch_size / h) if h > 0 else 0.0
        self.seen += self.batch_size
        for e, p in zip(self.shadow.parameters(), self.module.parameters()):
            e.lerp_(p.detach(), 1 - beta)
        for e, b in zip(self.shadow.buffers(), self.module.buffers()):
            e.copy_(b)

    def state(self) -> dict:
        return {"ema": self.shadow.state_dict(), "ema_seen": self.seen}

    def load(self, state: dict) -> None:
        self.shadow.load_state_dict(state["ema"])
        self.seen = int(state.get("ema_seen", 0))


def _augment_d4(draw, generator):
    """Random lattice rotations and reflections on top of ``draw`` (every action here is D4-invariant)."""
    def augmented(batch_size: int) -> torch.Tensor:
        x = draw(batch_size)
        k = int(torch.randint(8, (1,), generator=generator, device=generator.device))
        if k & 4:
            x = x.transpose(-1, -2)
        return torch.rot90(x, k & 3, dims=(-2, -1))
    return augmented


def _diffusion_task(cfg: DiffusionConfig, ctx, device: str):
    from rgflow.diffusion.gaussian import power_spectrum
    from rgflow.ensemble import FieldBatches, load_ensemble, split_ensemble
    from rgflow.train.loop import Task

    ens = load_ensemble(cfg.data)
    if (ens.action.name, dict(ens.action.params), ens.L) != (cfg.action, cfg.params, cfg.L):
        raise ValueError(f"--data {cfg.data}: the ensemble ({ens.action.name} {dict(ens.action.params)} L={ens.L}) is not "
                         f"the one this run was trained on ({cfg.action} {cfg.params} L={cfg.L})")
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    fields = ens.fields.to(device=device, dtype=dtype)
    train_idx, test_idx = split_ensemble(len(fields), cfg.holdout, cfg.seed)
    C = ens.action.channels
    P = power_spectrum(fields[train_idx], average_channels=C > 1) if cfg.coords == "field" else None
    model = build_model(cfg, P, C, device).to(device=device, dtype=dtype)
    gen = torch.Generator(device=device).manual_seed(sampler_seed(cfg.seed, ctx.rank))
    batches = FieldBatches(fields[train_idx], gen, shift=cfg.augment, sign=cfg.augment)
    draw = _augment_d4(batches, gen) if cfg.augment else batches
    pool = None
    if cfg.coords != "field":
        pool = EncodedPool(model.coords, draw, gen)
        with torch.no_grad():
            model.coords.fit(torch.cat([model.coords.latents(draw(256))[0] for _ in range(32)]))
        draw = pool
    force = ens.action if cfg.target == "force" else None
    rho = force_residual(model, fields[train_idx][:2048], force) if force is not None else None
    loss = DenoisingLoss(model, draw, gen, force, rho)
    ema = EMA(model.stages, cfg.batch_size, cfg.ema_halflife, cfg.ema_rampup)
    held_out = fields[test_idx][:cfg.eval_samples]

    def quick_eval(step: int) -> dict:
        """Held-out loss of the EMA weights with fixed noise (the training target)."""
        g = torch.Generator(device=device).manual_seed(cfg.seed)
        held = EncodedPool(model.coords, lambda n: held_out, g, size=len(held_out), reuse=1) if pool else \
            (lambda n: held_out)
        probe = DenoisingLoss(DiffusionModel(model.coords, ema.shadow), held, g, loss.action, loss.rho)
        probe.replicas = [1] * len(probe.replicas)
        value = float(probe(len(held_out)).detach())
        return {"heldout_loss": value, "heldout_loss_per_stage": probe.last_parts, "n_heldout": len(held_out)}

    def load_extra(state: dict) -> None:
        if "ema" in state:
            ema.load(state)
        if pool is not None and "pool" in state:
            pool.load(state["pool"])

    def extra_state() -> dict:
        return {**ema.state(), **({"pool": pool.state()} if pool is not None else {})}

    return Task(model, loss, gen, quick_eval=quick_eval, after_step=ema.update,
                log_extras=lambda: {"loss_per_stage": loss.last_parts,
                                    **({"force_rho_max": [float(r.max()) for r in rho]} if rho else {})},
                extra_state=extra_state, load_extra_state=load_extra)


def train_diffusion(cfg: DiffusionConfig, run_dir: str | Path, resume: bool = False,
                    progress: bool | None = None) -> dict:
    """Train the diffusion model ``cfg`` describes into ``run_dir`` (module docstring)."""
    from rgflow.train.loop import run_loop

    return run_loop(cfg, run_dir, _diffusion_task, resume, progress)


def _load(cfg: DiffusionConfig, state: dict, device: str, nfe: int = 16, weights: str = "ema") -> DiffusionModel:
    """The trained model of a diffusion run: ``weights`` ``"ema"`` (the moving average) or ``"raw"``
    (the last trained weights); its density is that of the deterministic sampler with ``nfe``
    evaluations of the finest stage."""
    from rgflow.physics.models import ACTION_PARAMS

    if weights not in WEIGHTS:
        raise ValueError(f"--weights {weights!r} is not allowed; allowed: {', '.join(WEIGHTS)}")
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    model = build_model(cfg, state["model"].get("coords.P"), ACTION_PARAMS[cfg.action][1], device)
    model = model.to(device=device, dtype=dtype)
    try:
        model.load_state_dict(state["model"])
        if weights == "ema" and "ema" in state.get("extra", {}):
            model.stages.load_state_dict(state["extra"]["ema"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise ValueError(f"the checkpoint does not fit the diffusion model its config.json describes ({first}); "
                         "was it written by another rgflow version?") from None
    model.nfe = nfe
    return model.eval()


RUN_FAMILY = RunFamily("diffusion", "rgflow diffuse train / sample / eval", DiffusionConfig, _load,
                       options=("nfe", "weights"))


def config_for_ensemble(data: str, **options) -> DiffusionConfig:
    """A :class:`DiffusionConfig` for the ensemble ``data`` (its action, couplings and ``L``)."""
    from rgflow.ensemble import load_ensemble
    from rgflow.layout import Layout

    ens = load_ensemble(data)
    Layout(ens.L)  # the Haar hierarchy (block size 2) must fit the ensemble's lattice
    return DiffusionConfig(data=str(data), action=ens.action.name, params=dict(ens.action.params), L=ens.L, **options)
