r"""Hybrid Monte Carlo on a lattice action, vectorised over independent chains.

Leapfrog integration of ``H = p^2/2 + S(phi)`` with ``n_leapfrog`` steps of size ``eps``;
``eps`` is tuned during warm-up only (towards ``target_acceptance``) and then frozen, so the
measured chain is an exact Markov chain for ``exp(-S)``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from rgflow.physics.observables import primaries

__all__ = ["hmc", "HMCResult"]


@dataclass
class HMCResult:
    """Per-chain time series of the primaries (``name -> [chains, n]``) and bookkeeping."""

    series: dict[str, np.ndarray]
    acceptance: float
    step_size: float
    n_leapfrog: int
    grad_evals: int
    seconds: float
    final: torch.Tensor


def _grad(action, phi):
    phi = phi.detach().requires_grad_(True)
    S = action(phi)
    (g,) = torch.autograd.grad(S.sum(), phi)
    return S.detach(), g


def hmc(
    action,
    L: int,
    n: int,
    chains: int = 16,
    warmup: int = 200,
    n_leapfrog: int = 10,
    step_size: float = 0.1,
    target_acceptance: float = 0.8,
    seed: int = 0,
    dtype=torch.float64,
    measure=None,
    progress: bool = False,
) -> HMCResult:
    """Run ``chains`` HMC chains for ``warmup + n`` trajectories, recording the last ``n``.

    Args:
        action: an :class:`~rgflow.physics.models.Action` (``channels`` attribute and callable).
        measure: optional map from fields to the field observables are measured on.
    """
    if n < 1 or chains < 1:
        raise ValueError(f"n and chains must be positive, got n={n}, chains={chains}")
    gen = torch.Generator().manual_seed(seed)
    phi = 0.1 * torch.randn(chains, action.channels, L, L, dtype=dtype, generator=gen)
    S, g = _grad(action, phi)
    eps, accepted, grad_evals = step_size, 0, 0
    series: dict[str, list] = {}
    t0 = time.perf_counter()
    for it in tqdm(range(warmup + n), disable=not progress, desc="hmc", leave=False):
        p = torch.randn(phi.shape, dtype=dtype, generator=gen)
        H0 = 0.5 * (p**2).sum((1, 2, 3)) + S
        q, pm = phi, p - 0.5 * eps * g
        for k in range(n_leapfrog):
            q = q + eps * pm
            S_new, g_new = _grad(action, q)
            pm = pm - (eps if k < n_leapfrog - 1 else 0.5 * eps) * g_new
        grad_evals += n_leapfrog
        H1 = 0.5 * (pm**2).sum((1, 2, 3)) + S_new
        acc = torch.rand(chains, dtype=dtype, generator=gen) < torch.exp(H0 - H1)
        phi = torch.where(acc[:, None, None, None], q, phi)
        S = torch.where(acc, S_new, S)
        g = torch.where(acc[:, None, None, None], g_new, g)
        rate = float(acc.double().mean())
        if it < warmup:
            eps *= 1.02 if rate > target_acceptance else 0.98
            continue
        accepted += rate
        field = measure(phi) if measure is not None else phi
        for k, v in primaries(field).items():
            series.setdefault(k, []).append(v)
    return HMCResult(
        series={k: np.stack(v, axis=1) for k, v in series.items()},
        acceptance=accepted / n,
        step_size=eps,
        n_leapfrog=n_leapfrog,
        grad_evals=grad_evals,
        seconds=time.perf_counter() - t0,
        final=phi,
    )
