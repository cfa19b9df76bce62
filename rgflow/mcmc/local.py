r"""Local Metropolis with checkerboard sweeps, for nearest-neighbour actions.

Sites of one checkerboard colour do not interact, so all of them are updated at once, each
accepted independently with ``min(1, exp(-(e(phi_x') - e(phi_x))))`` where ``e`` is the action's
single-site form (:meth:`rgflow.physics.models.Action.local_form`). One step
(:class:`CheckerboardKernel`) = a sweep over both colours. The proposal width is tuned in
warm-up only (by factors ``1 +- 0.02``), then frozen.
"""
from __future__ import annotations

import torch

from rgflow.mcmc.base import ChainResult
from rgflow.mcmc.chain import State, Step, adapted, observe_field, run_chain

__all__ = ["CheckerboardKernel", "local_metropolis"]


def _site_energy(phi, h, a, b, c):
    mod2 = (phi**2).sum(1)
    return a * mod2 + b * mod2**2 - c * (phi * h).sum(1)


class CheckerboardKernel:
    """Checkerboard Metropolis on a nearest-neighbour ``action`` over ``L x L`` fields.

    A step proposes ``phi_x' = phi_x + width * N(0, 1)`` at every site of one colour with the
    neighbour sum ``h_x [chains, C, L, L]`` fixed, then the other colour; it costs one action
    evaluation per chain and its rate is the accepted fraction of all ``chains * L^2`` proposals.
    """

    def __init__(self, action, L: int, width: float, target_acceptance: float, generator: torch.Generator):
        form = action.local_form()
        if form is None:
            raise ValueError(f"sampler 'local' needs a nearest-neighbour action; {action.name!r} is non-local "
                             "(use hmc)")
        if L % 2:
            raise ValueError(f"sampler 'local' needs an even L for the checkerboard, got L={L}")
        self.form, self.step_size, self.target_acceptance, self.generator = form, width, target_acceptance, generator
        x, y = torch.meshgrid(torch.arange(L, device=generator.device), torch.arange(L, device=generator.device),
                              indexing="ij")
        self.colours = [((x + y) % 2 == k) for k in (0, 1)]

    def step(self, state: State, tune: bool = False) -> tuple[State, Step]:
        phi, chains, rate = state.x, state.x.shape[0], 0.0
        for mask in self.colours:
            h = sum(torch.roll(phi, s, d) for s in (1, -1) for d in (-2, -1))
            new = phi + self.step_size * torch.randn(phi.shape, dtype=phi.dtype, device=phi.device,
                                                     generator=self.generator)
            dS = _site_energy(new, h, *self.form) - _site_energy(phi, h, *self.form)
            u = torch.rand(dS.shape, dtype=phi.dtype, device=phi.device, generator=self.generator)
            acc = mask & (u < torch.exp(-dS))
            phi = torch.where(acc[:, None], new, phi)
            rate += float(acc.sum()) / (float(mask.sum()) * chains) / 2
        if tune:
            self.step_size = adapted(self.step_size, rate, self.target_acceptance, 0.02)
        return State(phi, phi), Step(rate, action_evals=1)


def local_metropolis(action, L: int, n: int, chains: int = 16, seed: int = 0, warmup: int = 200, width: float = 1.0,
                     target_acceptance: float = 0.5, dtype=torch.float64, device: str = "cpu",
                     keep_every: int = 0, progress: bool = False) -> ChainResult:
    """Checkerboard Metropolis chains on ``exp(-S)``; records primaries after every sweep and keeps
    every ``keep_every``-th configuration."""
    gen = torch.Generator(device=device).manual_seed(seed)
    kernel = CheckerboardKernel(action, L, width, target_acceptance, gen)
    phi = 0.1 * torch.randn(chains, action.channels, L, L, dtype=dtype, device=device, generator=gen)
    return run_chain(kernel, State(phi, phi), n, observe_field(lambda x: x), sampler="local", warmup=warmup,
                     keep_every=keep_every, progress=progress)
