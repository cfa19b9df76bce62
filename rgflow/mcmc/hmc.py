r"""Hybrid Monte Carlo over any potential, vectorised over independent chains.

Leapfrog integration of ``H = p^2/2 + U(q)`` with ``n_leapfrog`` steps of size ``eps``; ``eps``
is tuned during warm-up only (towards ``target_acceptance``) and then frozen, so the recorded
chain is an exact Markov chain for ``exp(-U)``.

A *divergent* trajectory -- a non-finite position, potential or gradient on the way, or an
energy error ``H1 - H0 > DIVERGENCE_DH`` -- is a rejected proposal: the chain stays where it
was, the divergence is counted (``ChainResult.divergences``, recorded steps only), and the
potential is never evaluated on non-finite input. Potentials are called on the hot path
without input validation (``Action.evaluate``), so a NaN gives a NaN energy, not an exception.

* :func:`hmc` -- physical space, ``U = S(phi)``;
* :func:`latent_hmc` -- in the bulk of a trained flow ``G`` (latent -> field), with the exact
  effective action ``U(z) = S(G(z)) - ln|det dG/dz|``; a local move in the bulk is a global
  move on the boundary. Measurements are taken on ``G(z)``.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
from tqdm.auto import tqdm

from rgflow.mcmc.base import ChainResult, SeriesRecorder

__all__ = ["hmc", "latent_hmc", "run_hmc", "DIVERGENCE_DH"]

#: An energy error above this many units marks a trajectory as divergent (as in Stan).
DIVERGENCE_DH = 1000.0


def _value_and_grad(potential, q, safe_q):
    """``U(q)`` and ``dU/dq`` per chain, and the field ``x`` at ``q``; rows of ``q`` that are not
    finite are evaluated at ``safe_q`` instead and returned as ``U = inf``, ``g = 0``; so are rows
    whose ``U`` or gradient come out non-finite. ``potential(q)`` returns ``U`` (then ``x = q``) or
    ``(U, x)``. Returns ``(U, g, bad, x)``."""
    view = (q.shape[0],) + (1,) * (q.dim() - 1)
    bad = ~torch.isfinite(q).flatten(1).all(1)
    q_eval = torch.where(bad.reshape(view), safe_q, q)
    with torch.enable_grad():
        q_eval = q_eval.detach().requires_grad_(True)
        out = potential(q_eval)
        U, x = out if isinstance(out, tuple) else (out, q_eval)
        (g,) = torch.autograd.grad(U.sum(), q_eval)
    bad = bad | ~torch.isfinite(U) | ~torch.isfinite(g).flatten(1).all(1)
    U = torch.where(bad, torch.full_like(U, math.inf), U.detach())
    return U, torch.where(bad.reshape(view), torch.zeros_like(g), g), bad, x.detach()


def run_hmc(
    potential: Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, torch.Tensor]],
    q0: torch.Tensor,
    n: int,
    measure: Callable[[torch.Tensor], torch.Tensor],
    warmup: int = 200,
    n_leapfrog: int = 10,
    step_size: float = 0.1,
    target_acceptance: float = 0.8,
    generator: torch.Generator | None = None,
    sampler: str = "hmc",
    keep_every: int = 0,
    progress: bool = False,
) -> ChainResult:
    """HMC chains started at ``q0: [chains, ...]`` for ``n`` recorded steps.

    Each step records ``primaries(measure(x))`` of the field ``x`` of the current state and keeps
    every ``keep_every``-th ``x``: ``x = q``, or the field a potential returning ``(U, x)`` computed
    on the way (latent HMC: ``G(z)``, so measuring costs no extra pass through the flow).
    """
    if n < 1:
        raise ValueError(f"n (number of recorded steps) must be positive, got {n}")
    if n_leapfrog < 1 or not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"--leapfrog must be >= 1 and --step-size > 0, got {n_leapfrog} and {step_size}")
    q = q0.detach()
    chains = q.shape[0]
    view = (chains,) + (1,) * (q.dim() - 1)
    U, g, bad, x = _value_and_grad(potential, q, q)
    if bool(bad.any()):
        raise ValueError(f"the potential is not finite at the initial state of {int(bad.sum())} chain(s)")
    eps, accepted, grad_evals, divergences = step_size, 0.0, 0, 0
    recorder = SeriesRecorder(keep_every)
    for it in tqdm(range(warmup + n), disable=not progress, desc=sampler, leave=False):
        if it == warmup:  # costs count the recorded chain only; warm-up is a one-time price
            t0, grad_evals = time.perf_counter(), 0
        p = torch.randn(q.shape, dtype=q.dtype, device=q.device, generator=generator)
        H0 = 0.5 * (p**2).flatten(1).sum(1) + U
        qn, pn = q, p - 0.5 * eps * g
        diverged = torch.zeros(chains, dtype=torch.bool, device=q.device)
        for k in range(n_leapfrog):
            qn = torch.where(diverged.reshape(view), q, qn + eps * pn)  # a diverged chain stops moving
            Un, gn, bad, xn = _value_and_grad(potential, qn, q)
            diverged = diverged | bad
            pn = pn - (eps if k < n_leapfrog - 1 else 0.5 * eps) * gn
        grad_evals += n_leapfrog
        H1 = 0.5 * (pn**2).flatten(1).sum(1) + Un
        diverged = diverged | ~torch.isfinite(H1) | (H1 - H0 > DIVERGENCE_DH)
        u = torch.rand(chains, dtype=q.dtype, device=q.device, generator=generator)
        acc = ~diverged & (u < torch.exp(H0 - H1))
        q = torch.where(acc.reshape(view), qn, q)
        U = torch.where(acc, Un, U)
        g = torch.where(acc.reshape(view), gn, g)
        x = torch.where(acc.reshape((chains,) + (1,) * (x.dim() - 1)), xn, x)
        rate = float(acc.double().mean())
        if it < warmup:
            eps *= 1.02 if rate > target_acceptance else 0.98
            continue
        divergences += int(diverged.sum())
        accepted += rate
        recorder.record(measure(x), x)
    return recorder.result(sampler, accepted / n, time.perf_counter() - t0, grad_evals=grad_evals,
                           action_evals=grad_evals, step_size=eps, divergences=divergences)


def hmc(action, L: int, n: int, chains: int = 16, seed: int = 0, dtype=torch.float64, device: str = "cpu",
        **kwargs) -> ChainResult:
    """Physical-space HMC on ``exp(-S)`` (``action``: an :class:`~rgflow.physics.models.Action`)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    q0 = 0.1 * torch.randn(chains, action.channels, L, L, dtype=dtype, device=device, generator=gen)
    return run_hmc(action.evaluate, q0, n, measure=lambda q: action.measurement_field(q, gen), generator=gen,
                   sampler="hmc", **kwargs)


def latent_hmc(flow, action, n: int, chains: int = 16, seed: int = 0, **kwargs) -> ChainResult:
    """HMC on the bulk effective action ``S(G(z)) - ln|det dG/dz|`` of a trained flow (exact target)."""
    gen = torch.Generator(device=next(flow.parameters()).device).manual_seed(seed)

    def potential(z):
        x, logdet = flow.inverse(z)
        return action.evaluate(x) - logdet, x

    with torch.no_grad():
        z0 = flow.prior.sample(chains, generator=gen)
    params = list(flow.parameters())
    was_trainable = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        res = run_hmc(potential, z0, n, measure=lambda x: action.measurement_field(x, gen),
                      generator=gen, sampler="latent-hmc", **kwargs)
    finally:
        for p, flag in zip(params, was_trainable):  # restore each parameter's own state
            p.requires_grad_(flag)
    return res
