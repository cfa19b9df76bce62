r"""Latent-space local updates: level-by-level Metropolis on the bulk variables of a trained flow.

Target: the exact bulk effective action ``S_eff(z) = S(G(z)) - ln|det dG/dz|`` (``G`` the flow's
generator, latent -> field; the prior does not enter). One step is a sweep over the levels of
the :class:`~rgflow.layout.Layout`, fine to top: all latents of level ``l`` get a Gaussian kick
of width ``delta_l`` and the move is accepted with ``min(1, exp(-Delta S_eff))``. Widths are tuned
per level in warm-up only. A bulk move of a coarse level is a global move on the boundary.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from rgflow.mcmc.base import ChainResult, SeriesRecorder

__all__ = ["latent_local"]


@torch.no_grad()
def latent_local(flow, action, n: int, chains: int = 16, seed: int = 0, warmup: int = 200, width: float = 0.5,
                 target_acceptance: float = 0.4, keep_every: int = 0, progress: bool = False) -> ChainResult:
    """Level-by-level Metropolis in the bulk of an :class:`~rgflow.flows.RGFlow`."""
    layout = getattr(flow, "layout", None)
    if layout is None:
        raise ValueError("sampler 'latent-local' needs a hierarchical flow (flow='mera' or 'tebd'), not a flat one")
    device = next(flow.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    levels = [ix.to(device) for ix in layout.level_sites if len(ix)]
    widths = [width] * len(levels)

    def s_eff(z):
        x, logdet = flow.inverse(z)
        return action.evaluate(x) - logdet, x

    z = flow.prior.sample(chains, generator=gen)
    U, x = s_eff(z)
    C, L = z.shape[1], layout.L
    recorder = SeriesRecorder(keep_every)
    accepted = 0.0
    for it in tqdm(range(warmup + n), disable=not progress, desc="latent-local", leave=False):
        if it == warmup:
            t0 = time.perf_counter()
        rate = 0.0
        for k, sites in enumerate(levels):
            kick = torch.zeros(chains, C, L * L, dtype=z.dtype, device=device)
            kick[:, :, sites] = widths[k] * torch.randn(chains, C, len(sites), dtype=z.dtype, device=device,
                                                        generator=gen)
            z_new = z + kick.reshape(z.shape)
            U_new, x_new = s_eff(z_new)
            u = torch.rand(chains, dtype=z.dtype, device=device, generator=gen)
            acc = torch.isfinite(U_new) & (u < torch.exp(U - U_new))
            z = torch.where(acc[:, None, None, None], z_new, z)
            x = torch.where(acc[:, None, None, None], x_new, x)
            U = torch.where(acc, U_new, U)
            level_rate = float(acc.double().mean())
            rate += level_rate / len(levels)
            if it < warmup:
                widths[k] *= 1.03 if level_rate > target_acceptance else 0.97
        if it < warmup:
            continue
        accepted += rate
        recorder.record(action.measurement_field(x, gen), x)
    return recorder.result("latent-local", accepted / n, time.perf_counter() - t0, action_evals=len(levels) * n,
                           step_size=float(np.mean(widths)))
