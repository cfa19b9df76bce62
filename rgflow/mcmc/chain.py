r"""The one chain driver: warm-up, recording, timing and the report, around a pluggable kernel.

A *kernel* makes one Markov step of all chains at once and says how it went; it knows nothing
of warm-up phases, recording or clocks. :func:`run_chain` runs ``warmup + n`` steps of a kernel:

* warm-up steps (``it < warmup``) only let the kernel tune its step size (``tune=True``); they are
  not recorded and cost nothing in the report, so the recorded chain is an exact Markov chain;
* each of the ``n`` recorded steps adds the step's acceptance rate, gradient and action
  evaluations and divergences to the totals and records ``observe(state)`` (primaries of every
  chain, and every ``keep_every``-th field, :class:`~rgflow.mcmc.base.SeriesRecorder`);
* wall time runs from the first recorded step to the last.

Kernels (``step(state, tune) -> (state, Step)``, ``step_size``):
:class:`~rgflow.mcmc.local.CheckerboardKernel` (local Metropolis),
:class:`~rgflow.mcmc.hmc.HMCKernel` (HMC on any potential, physical or latent),
:class:`~rgflow.mcmc.cluster.ClusterKernel` (embedded Swendsen-Wang, then a local sweep),
:class:`~rgflow.mcmc.latent.LevelKernel` (level-by-level Metropolis in a flow's bulk),
:class:`~rgflow.mcmc.imh.IndependenceKernel` (independence Metropolis over pre-drawn proposals).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from rgflow.denormals import flush_denormals
from rgflow.mcmc.base import ChainResult, SeriesRecorder
from rgflow.physics.observables import primaries

__all__ = ["State", "Step", "Kernel", "run_chain", "observe_field", "adapted"]


@dataclass(frozen=True)
class State:
    """All chains at one point: position ``q [chains, ...]`` (field or latent), the field
    ``x [chains, C, L, L]`` it stands for (``q`` itself in physical space, ``G(q)`` in a flow's
    bulk), and what the kernel keeps from its last evaluation: ``U [chains]`` the potential at
    ``q`` and ``g`` (shaped like ``q``) its gradient."""

    q: torch.Tensor
    x: torch.Tensor
    U: torch.Tensor | None = None
    g: torch.Tensor | None = None


@dataclass(frozen=True)
class Step:
    """What one step of all chains reports: ``rate``, the accepted fraction of its proposals
    (None when the step made no accept/reject decision: the first draw of an independence chain);
    per-chain ``grad_evals`` and ``action_evals``; ``divergences``, rejected divergent
    trajectories summed over chains."""

    rate: float | None
    grad_evals: int = 0
    action_evals: int = 0
    divergences: int = 0


class Kernel(Protocol):
    """One Markov step of all chains; with ``tune`` (warm-up only) it adapts ``step_size``."""

    step_size: float | None

    def step(self, state: Any, tune: bool = False) -> tuple[Any, Step]: ...


def adapted(size: float, rate: float, target: float, factor: float) -> float:
    """The warm-up rule of every tuned kernel: ``size (1 + factor)`` when the acceptance ``rate``
    is above ``target``, else ``size (1 - factor)``."""
    return size * (1 + factor) if rate > target else size * (1 - factor)


def observe_field(measure: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[State], tuple]:
    """``observe`` for a :class:`State`: the primaries of ``measure(x)`` (e.g. Ising spins drawn
    from the field), keeping ``x`` itself."""
    return lambda state: (primaries(measure(state.x)), state.x)


@torch.no_grad()
@flush_denormals()
def run_chain(kernel: Kernel, state: Any, n: int,
              observe: Callable[[Any], tuple[dict[str, np.ndarray], torch.Tensor | None]], *, sampler: str,
              warmup: int = 0, keep_every: int = 0, progress: bool = False) -> ChainResult:
    """Run ``warmup`` tuning steps and ``n`` recorded steps of ``kernel`` from ``state``.

    ``observe(state) -> ({primary: [chains]}, field [chains, C, L, L] or None)`` is what a
    recorded step writes (the field only matters every ``keep_every``-th step). Gradients are
    off; a kernel that needs them turns them on for its own evaluations. Returns the
    :class:`~rgflow.mcmc.base.ChainResult`: acceptance = mean rate over the recorded steps that
    made a decision, costs per chain over the recorded steps, the kernel's final ``step_size``.
    """
    if n < 1:
        raise ValueError(f"n (number of recorded steps) must be positive, got {n}")
    recorder = SeriesRecorder(keep_every)
    accepted, decided, grad_evals, action_evals, divergences = 0.0, 0, 0, 0, 0
    for it in tqdm(range(warmup + n), disable=not progress, desc=sampler, leave=False):
        if it == warmup:
            t0 = time.perf_counter()
        state, step = kernel.step(state, tune=it < warmup)
        if it < warmup:
            continue
        if step.rate is not None:
            accepted, decided = accepted + step.rate, decided + 1
        grad_evals += step.grad_evals
        action_evals += step.action_evals
        divergences += step.divergences
        recorder.record(*observe(state))
    return recorder.result(sampler, accepted / decided, time.perf_counter() - t0, grad_evals=grad_evals,
                           action_evals=action_evals, step_size=kernel.step_size, divergences=divergences)
