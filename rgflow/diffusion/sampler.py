r"""Samplers of the stages' probability-flow ODE ``dz/dtheta = -F(z)`` (and its reverse SDE).

Each stage (:mod:`rgflow.diffusion.stages`) is integrated on the uniform grid
``tau_i = 1 - i / N`` from ``z ~ N(0, 1)`` at ``tau = 1`` to the clean variables at ``tau = 0``;
``Delta theta_i = theta(tau_i) - theta(tau_{i+1})`` per variable.

* ``"ode"`` -- Heun (``theta`` decreases by ``Delta theta``, so ``z`` moves by ``+Delta theta F``):
  ``z' = z + Delta theta F(z, tau_i)``, ``z_{i+1} = z + Delta theta (F(z, tau_i) + F(z', tau_{i+1})) / 2``,
  the last step Euler:
  ``2N - 1`` network evaluations per stage. With ``F = 0`` every step is the identity, so the
  Gaussian part is exact at any NFE.
* ``"sde"`` -- the reverse SDE ``dz = (tan(theta) z - 2F) dtheta + sqrt(2 tan(theta)) dW`` with its
  linear part integrated exactly: ``z_{i+1} = a z + 2 F (sin theta_i - sin theta_{i+1}) / cos theta_{i+1}
  + sqrt(1 - a^2) xi``, ``a = cos theta_i / cos theta_{i+1}``: ``N`` evaluations per stage, exact
  for ``F = 0``.

``nfe`` is the number of evaluations of the finest stage. A stage of RG level ``l`` takes ``2^l`` times
as many steps (:func:`stage_steps`; at most :data:`MAX_STEPS`): a level has a quarter of the
variables of the one below it, so its steps cost half as much in all, and the coarse levels -- the
most non-Gaussian, the zero mode above all -- are integrated finely for almost nothing. The cost in
evaluations of a network on the whole lattice is ``lattice_nfe`` (:func:`cost_of`), about
``1.5 nfe`` for the ``rg`` schedule and ``nfe`` for the one-stage schedules.
"""
from __future__ import annotations

import torch

__all__ = ["SAMPLER_KINDS", "MAX_STEPS", "steps_for_nfe", "stage_steps", "tau_grid", "heun_step", "sample_stage",
           "generate", "sample_fields", "cost_of"]

SAMPLER_KINDS = ("ode", "sde")
#: The most steps any stage takes.
MAX_STEPS = 1024


def steps_for_nfe(nfe: int, kind: str = "ode") -> int:
    """The number of steps ``N`` whose cost is at most ``nfe`` network evaluations per stage."""
    if kind not in SAMPLER_KINDS:
        raise ValueError(f"--sampler {kind!r} is not allowed; allowed: {', '.join(SAMPLER_KINDS)}")
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"--nfe must be a positive integer, got {nfe!r}")
    return (nfe + 1) // 2 if kind == "ode" else nfe


def stage_steps(model, nfe: int, kind: str = "ode") -> list[int]:
    """Steps per stage: ``steps_for_nfe(nfe) * 2^level`` (module docstring)."""
    N = steps_for_nfe(nfe, kind)
    return [min(MAX_STEPS, N * 2 ** getattr(stage, "level", 0)) for stage in model.stages]


def tau_grid(N: int, like: torch.Tensor) -> torch.Tensor:
    """``[N + 1]`` times from 1 to 0 in ``like``'s dtype and device."""
    return torch.linspace(1.0, 0.0, N + 1, dtype=like.dtype, device=like.device)


def heun_step(stage, z: torch.Tensor, tau_i: torch.Tensor, tau_next: torch.Tensor, context, last: bool) -> torch.Tensor:
    """One deterministic step ``z(tau_i) -> z(tau_next)`` (Heun; Euler when ``last``): a pure function
    of ``z`` that :mod:`rgflow.diffusion.exact` differentiates. ``tau_*``: 0-d tensors."""
    B = len(z)
    t0, t1 = tau_i.expand(B), tau_next.expand(B)
    dtheta = stage.theta(t0) - stage.theta(t1)
    f = stage.velocity(z, t0, context)
    z_pred = z + dtheta * f
    if last:
        return z_pred
    return z + dtheta * 0.5 * (f + stage.velocity(z_pred, t1, context))


def _sde_step(stage, z, tau_i, tau_next, context, generator):
    B = len(z)
    t0, t1 = tau_i.expand(B), tau_next.expand(B)
    th0, th1 = stage.theta(t0), stage.theta(t1)
    a = torch.cos(th0) / torch.cos(th1)
    f = stage.velocity(z, t0, context)
    xi = torch.randn(z.shape, dtype=z.dtype, device=z.device, generator=generator)
    return a * z + 2 * f * (torch.sin(th0) - torch.sin(th1)) / torch.cos(th1) + torch.sqrt((1 - a**2).clamp_min(0)) * xi


@torch.no_grad()
def sample_stage(stage, context, n: int, N: int, kind: str = "ode", generator: torch.Generator | None = None,
                 like: torch.Tensor | None = None) -> torch.Tensor:
    """``n`` samples of one stage's clean variables ``[n, *stage.shape]`` in ``N`` steps."""
    like = like if like is not None else next(iter(stage.buffers()), torch.zeros(()))
    z = torch.randn(n, *stage.shape, dtype=like.dtype, device=like.device, generator=generator)
    taus = tau_grid(N, z)
    for i in range(N):
        if kind == "ode":
            z = heun_step(stage, z, taus[i], taus[i + 1], context, last=i == N - 1)
        else:
            z = _sde_step(stage, z, taus[i], taus[i + 1], context, generator)
    return z


@torch.no_grad()
def generate(model, n: int, nfe: int, kind: str = "ode", generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` fields ``[n, C, L, L]`` of a :class:`~rgflow.diffusion.model.DiffusionModel`, stage by stage."""
    coords, state = model.coords, None
    for s, (stage, N) in enumerate(zip(model.stages, stage_steps(model, nfe, kind))):
        z = sample_stage(stage, coords.context(s, state), n, N, kind, generator, like=model.reference)
        state = coords.absorb(s, state, z)
    return coords.finish(state, generator)[0]


def cost_of(model, nfe: int, kind: str = "ode") -> dict:
    """``{"nfe": the finest stage's evaluations, "nfe_per_stage", "network_calls": all stages,
    "lattice_nfe": calls weighted by their stage's share of the lattice's variables}``."""
    calls = [2 * N - 1 if kind == "ode" else N for N in stage_steps(model, nfe, kind)]
    lattice = sum(c * st.n_vars for c, st in zip(calls, model.stages)) / model.n_field_vars
    finest = calls[-1] if len(calls) else 0
    return {"nfe": finest, "nfe_per_stage": calls, "network_calls": sum(calls), "lattice_nfe": lattice}


@torch.no_grad()
def sample_fields(model, n: int, nfe: int, kind: str = "ode", generator: torch.Generator | None = None,
                  batch_size: int = 1024) -> tuple[torch.Tensor, int]:
    """``(x [n, C, L, L], the finest stage's evaluations)``, drawn in batches."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"-n (number of samples) must be a positive integer, got {n!r}")
    xs = [generate(model, min(batch_size, n - i), nfe, kind, generator) for i in range(0, n, batch_size)]
    return torch.cat(xs), cost_of(model, nfe, kind)["nfe"]
