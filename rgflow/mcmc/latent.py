r"""Samplers in the bulk of a trained flow: latent HMC and level-by-level local updates.

Both target the exact bulk effective action (``G`` the flow's generator, latent -> field; the
prior does not enter)

    ``S_eff(z) = S(G(z)) - ln|det dG/dz|``,    ``z, G(z): [chains, C, L, L]``, ``S_eff: [chains]``,

so that ``z ~ exp(-S_eff)`` gives ``G(z) ~ exp(-S)`` on the boundary; measurements are taken
on ``G(z)``. A local move in the bulk is a global move on the boundary.

* :func:`latent_hmc` -- :class:`~rgflow.mcmc.hmc.HMCKernel` on ``S_eff``;
* :func:`latent_local` -- :class:`LevelKernel`: one step is a sweep over the levels of the
  :class:`~rgflow.layout.Layout`, fine to top; all latents of level ``l`` get a Gaussian kick of
  width ``delta_l`` and the move is accepted with ``min(1, exp(-Delta S_eff))``. Widths are tuned
  per level in warm-up only (by factors ``1 +- 0.03``).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from rgflow.mcmc.base import ChainResult
from rgflow.mcmc.chain import State, Step, adapted, observe_field, run_chain
from rgflow.mcmc.hmc import run_hmc

__all__ = ["effective_action", "LevelKernel", "latent_hmc", "latent_local"]


def effective_action(flow, action) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``z [chains, C, L, L] -> (S_eff(z) [chains], G(z) [chains, C, L, L])`` of a flow whose
    ``inverse(z)`` returns ``(G(z), ln|det dG/dz|)``."""

    def s_eff(z):
        x, logdet = flow.inverse(z)
        return action.evaluate(x) - logdet, x

    return s_eff


class LevelKernel:
    """Level-by-level Metropolis on ``potential(z) -> (S_eff [chains], x)``.

    ``levels``: the flat site indices ``[n_l]`` (into ``L * L``) of each level's latents. A step
    costs one ``potential`` evaluation per level and chain; its rate is the mean of the levels'
    accepted fractions; ``step_size`` is the mean width.
    """

    def __init__(self, potential: Callable, levels: list[torch.Tensor], width: float, target_acceptance: float,
                 generator: torch.Generator):
        self.potential, self.levels, self.widths = potential, levels, [width] * len(levels)
        self.target_acceptance, self.generator = target_acceptance, generator

    @property
    def step_size(self) -> float:
        return float(np.mean(self.widths))

    def start(self, z0: torch.Tensor) -> State:
        U, x = self.potential(z0)
        return State(z0, x, U)

    def step(self, state: State, tune: bool = False) -> tuple[State, Step]:
        z, x, U = state.q, state.x, state.U
        chains, C, L = z.shape[0], z.shape[1], z.shape[-1]
        rate = 0.0
        for k, sites in enumerate(self.levels):
            kick = torch.zeros(chains, C, L * L, dtype=z.dtype, device=z.device)
            kick[:, :, sites] = self.widths[k] * torch.randn(chains, C, len(sites), dtype=z.dtype, device=z.device,
                                                             generator=self.generator)
            z_new = z + kick.reshape(z.shape)
            U_new, x_new = self.potential(z_new)
            u = torch.rand(chains, dtype=z.dtype, device=z.device, generator=self.generator)
            acc = torch.isfinite(U_new) & (u < torch.exp(U - U_new))
            z = torch.where(acc[:, None, None, None], z_new, z)
            x = torch.where(acc[:, None, None, None], x_new, x)
            U = torch.where(acc, U_new, U)
            level_rate = float(acc.double().mean())
            rate += level_rate / len(self.levels)
            if tune:
                self.widths[k] = adapted(self.widths[k], level_rate, self.target_acceptance, 0.03)
        return State(z, x, U), Step(rate, action_evals=len(self.levels))


def latent_hmc(flow, action, n: int, chains: int = 16, seed: int = 0, **kwargs) -> ChainResult:
    """HMC on the bulk effective action ``S(G(z)) - ln|det dG/dz|`` of a trained flow (exact target)."""
    gen = torch.Generator(device=next(flow.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        z0 = flow.prior.sample(chains, generator=gen)
    params = list(flow.parameters())
    was_trainable = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        res = run_hmc(effective_action(flow, action), z0, n, measure=lambda x: action.measurement_field(x, gen),
                      generator=gen, sampler="latent-hmc", **kwargs)
    finally:
        for p, flag in zip(params, was_trainable):  # restore each parameter's own state
            p.requires_grad_(flag)
    return res


@torch.no_grad()
def latent_local(flow, action, n: int, chains: int = 16, seed: int = 0, warmup: int = 200, width: float = 0.5,
                 target_acceptance: float = 0.4, keep_every: int = 0, progress: bool = False) -> ChainResult:
    """Level-by-level Metropolis in the bulk of an :class:`~rgflow.flows.RGFlow`."""
    layout = flow.layout
    if layout is None:
        raise ValueError("sampler 'latent-local' needs a hierarchical flow (flow='mera' or 'tebd'), not a flat one")
    device = next(flow.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    levels = [ix.to(device) for ix in layout.level_sites if len(ix)]
    kernel = LevelKernel(effective_action(flow, action), levels, width, target_acceptance, gen)
    state = kernel.start(flow.prior.sample(chains, generator=gen))
    return run_chain(kernel, state, n, observe_field(lambda x: action.measurement_field(x, gen)),
                     sampler="latent-local", warmup=warmup, keep_every=keep_every, progress=progress)
