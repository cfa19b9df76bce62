r"""Local Metropolis with checkerboard sweeps, for nearest-neighbour actions.

Sites of one checkerboard colour do not interact, so all of them are updated at once, each
accepted independently with ``min(1, exp(-(e(phi_x') - e(phi_x))))`` where ``e`` is the action's
single-site form (:meth:`rgflow.physics.models.Action.local_form`). One step = a sweep over
both colours. The proposal width is tuned in warm-up only, then frozen.
"""
from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from rgflow.mcmc.base import ChainResult, SeriesRecorder

__all__ = ["local_metropolis"]


def _site_energy(phi, h, a, b, c):
    mod2 = (phi**2).sum(1)
    return a * mod2 + b * mod2**2 - c * (phi * h).sum(1)


def local_metropolis(action, L: int, n: int, chains: int = 16, seed: int = 0, warmup: int = 200, width: float = 1.0,
                     target_acceptance: float = 0.5, dtype=torch.float64, device: str = "cpu",
                     keep_every: int = 0, progress: bool = False) -> ChainResult:
    """Checkerboard Metropolis chains on ``exp(-S)``; records primaries after every sweep and keeps
    every ``keep_every``-th configuration."""
    form = action.local_form()
    if form is None:
        raise ValueError(f"sampler 'local' needs a nearest-neighbour action; {action.name!r} is non-local (use hmc)")
    if L % 2:
        raise ValueError(f"sampler 'local' needs an even L for the checkerboard, got L={L}")
    a, b, c = form
    gen = torch.Generator(device=device).manual_seed(seed)
    phi = 0.1 * torch.randn(chains, action.channels, L, L, dtype=dtype, device=device, generator=gen)
    x, y = torch.meshgrid(torch.arange(L, device=device), torch.arange(L, device=device), indexing="ij")
    colours = [((x + y) % 2 == k) for k in (0, 1)]
    recorder = SeriesRecorder(keep_every)
    accepted = 0.0
    for it in tqdm(range(warmup + n), disable=not progress, desc="local", leave=False):
        if it == warmup:
            t0 = time.perf_counter()
        rate = 0.0
        for mask in colours:
            h = sum(torch.roll(phi, s, d) for s in (1, -1) for d in (-2, -1))
            new = phi + width * torch.randn(phi.shape, dtype=dtype, device=device, generator=gen)
            dS = _site_energy(new, h, a, b, c) - _site_energy(phi, h, a, b, c)
            acc = mask & (torch.rand(dS.shape, dtype=dtype, device=device, generator=gen) < torch.exp(-dS))
            phi = torch.where(acc[:, None], new, phi)
            rate += float(acc.sum()) / (float(mask.sum()) * chains) / 2
        if it < warmup:
            width *= 1.02 if rate > target_acceptance else 0.98
            continue
        accepted += rate
        recorder.record(phi)
    return recorder.result("local", accepted / n, time.perf_counter() - t0, action_evals=n, step_size=width)
