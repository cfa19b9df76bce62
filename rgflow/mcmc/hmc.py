r"""Hybrid Monte Carlo over any potential, vectorised over independent chains.

One step (:class:`HMCKernel`, run by :func:`~rgflow.mcmc.chain.run_chain`): momenta
``p ~ N(0, 1)`` shaped like ``q``, ``n_leapfrog`` leapfrog steps of size ``eps`` on
``H = p^2/2 + U(q)``, accepted with ``min(1, exp(H0 - H1))``. ``eps`` is tuned during warm-up
only (towards ``target_acceptance``, by factors ``1 +- 0.02``) and then frozen, so the recorded
chain is an exact Markov chain for ``exp(-U)``.

A *divergent* trajectory -- a non-finite position, potential or gradient on the way, or an
energy error ``H1 - H0 > DIVERGENCE_DH`` -- is a rejected proposal: the chain stays where it
was, the divergence is counted (``ChainResult.divergences``, recorded steps only), and the
potential is never evaluated on non-finite input. Potentials are called on the hot path
without input validation (``Action.evaluate``), so a NaN gives a NaN energy, not an exception.

* :func:`hmc` -- physical space, ``U = S(phi)``;
* :func:`run_hmc` -- any potential ``U(q)``, e.g. :func:`~rgflow.mcmc.latent.latent_hmc`'s
  effective action in the bulk of a flow.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from rgflow.mcmc.base import ChainResult
from rgflow.mcmc.chain import State, Step, adapted, observe_field, run_chain

__all__ = ["HMCKernel", "hmc", "run_hmc", "DIVERGENCE_DH"]

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


class HMCKernel:
    """Leapfrog HMC on ``potential(q) -> U [chains]`` or ``(U, x)`` (``x``: the field at ``q``).

    ``start(q0 [chains, ...])`` evaluates the initial :class:`~rgflow.mcmc.chain.State` (``U``,
    ``g = dU/dq``, ``x``); ``step`` costs ``n_leapfrog`` gradients per chain and reports the
    divergent trajectories it rejected.
    """

    def __init__(self, potential: Callable, n_leapfrog: int, step_size: float, target_acceptance: float,
                 generator: torch.Generator | None):
        if n_leapfrog < 1 or not (math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"--leapfrog must be >= 1 and --step-size > 0, got {n_leapfrog} and {step_size}")
        self.potential, self.n_leapfrog, self.step_size = potential, n_leapfrog, step_size
        self.target_acceptance, self.generator = target_acceptance, generator

    def start(self, q0: torch.Tensor) -> State:
        q = q0.detach()
        U, g, bad, x = _value_and_grad(self.potential, q, q)
        if bool(bad.any()):
            raise ValueError(f"the potential is not finite at the initial state of {int(bad.sum())} chain(s)")
        return State(q, x, U, g)

    def step(self, state: State, tune: bool = False) -> tuple[State, Step]:
        q, U, g, eps = state.q, state.U, state.g, self.step_size
        chains = q.shape[0]
        view = (chains,) + (1,) * (q.dim() - 1)
        p = torch.randn(q.shape, dtype=q.dtype, device=q.device, generator=self.generator)
        H0 = 0.5 * (p**2).flatten(1).sum(1) + U
        qn, pn = q, p - 0.5 * eps * g
        diverged = torch.zeros(chains, dtype=torch.bool, device=q.device)
        for k in range(self.n_leapfrog):
            qn = torch.where(diverged.reshape(view), q, qn + eps * pn)  # a diverged chain stops moving
            Un, gn, bad, xn = _value_and_grad(self.potential, qn, q)
            diverged = diverged | bad
            pn = pn - (eps if k < self.n_leapfrog - 1 else 0.5 * eps) * gn
        H1 = 0.5 * (pn**2).flatten(1).sum(1) + Un
        diverged = diverged | ~torch.isfinite(H1) | (H1 - H0 > DIVERGENCE_DH)
        u = torch.rand(chains, dtype=q.dtype, device=q.device, generator=self.generator)
        acc = ~diverged & (u < torch.exp(H0 - H1))
        x = state.x
        state = State(torch.where(acc.reshape(view), qn, q),
                      torch.where(acc.reshape((chains,) + (1,) * (x.dim() - 1)), xn, x),
                      torch.where(acc, Un, U), torch.where(acc.reshape(view), gn, g))
        rate = float(acc.double().mean())
        if tune:
            self.step_size = adapted(eps, rate, self.target_acceptance, 0.02)
        return state, Step(rate, grad_evals=self.n_leapfrog, action_evals=self.n_leapfrog,
                           divergences=int(diverged.sum()))


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
    kernel = HMCKernel(potential, n_leapfrog, step_size, target_acceptance, generator)
    return run_chain(kernel, kernel.start(q0), n, observe_field(measure), sampler=sampler, warmup=warmup,
                     keep_every=keep_every, progress=progress)


def hmc(action, L: int, n: int, chains: int = 16, seed: int = 0, dtype=torch.float64, device: str = "cpu",
        **kwargs) -> ChainResult:
    """Physical-space HMC on ``exp(-S)`` (``action``: an :class:`~rgflow.physics.models.Action`)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    q0 = 0.1 * torch.randn(chains, action.channels, L, L, dtype=dtype, device=device, generator=gen)
    return run_hmc(action.evaluate, q0, n, measure=lambda q: action.measurement_field(q, gen), generator=gen,
                   sampler="hmc", **kwargs)
