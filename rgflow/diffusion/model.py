r"""A diffusion model: whitened coordinates, one network stage per generation step, an exact density.

``DiffusionModel(coords, stages)``: ``coords`` maps a field to the stages' whitened variables
(:class:`~rgflow.diffusion.gaussian.GaussianPyramid` for the ``rg`` schedule,
:class:`~rgflow.diffusion.gaussian.SpectralWhitening` for ``standard`` and ``ve``, or the
flow-latent :class:`~rgflow.diffusion.latent.LatentPyramid` of the hybrid) and ``stages`` are the
:mod:`~rgflow.diffusion.stages`, one per generation step, coarse to fine. It is a density of the
rgflow model families (a :class:`~rgflow.density.Density`): :meth:`sample` ``(n) -> (x, ln q)`` and
:meth:`log_prob`, both exact for the deterministic sampler with ``nfe`` evaluations of the finest
stage (:mod:`rgflow.diffusion.exact`).
"""
from __future__ import annotations

import torch
from torch import nn

from rgflow.density import Density
from rgflow.diffusion.gaussian import GaussianPyramid, SpectralWhitening
from rgflow.diffusion.nets import MLPNet, Odd, make_net
from rgflow.diffusion.stages import SCHEDULES, AngleStage, SpectralStage

__all__ = ["DiffusionModel", "build_stages"]


def build_stages(coords, schedule: str, net: str, width: int, depth: int, odd: bool) -> nn.ModuleList:
    """One stage per ``coords`` stage: angle stages (``rg``; an MLP on flat latents) or the one
    spectral stage (``standard``, ``ve``)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not allowed; allowed: {', '.join(SCHEDULES)}")
    if schedule != "rg":
        if not isinstance(coords, SpectralWhitening):
            raise ValueError(f"schedule={schedule!r} needs the spectral coordinates of a field")
        C, L = coords.channels, coords.P.shape[-1]
        return nn.ModuleList([SpectralStage(make_net(net, C, C, L, width, depth, odd), coords.P, schedule)])
    stages = []
    for s in range(coords.n_stages):
        shape = coords.stage_shape(s)
        c_in = shape[0] + coords.context_channels(s)
        if len(shape) == 1:  # flat latents
            body = MLPNet(c_in, shape[0], 4 * width, depth)
            stage = AngleStage(Odd(body) if odd else body, shape)
        else:
            stage = AngleStage(make_net(net, c_in, shape[0], shape[-1], width, depth, odd), shape)
        stage.level = coords.stage_rank(s)
        stages.append(stage)
    return nn.ModuleList(stages)


class DiffusionModel(Density):
    """``coords`` + ``stages`` (module docstring); ``nfe``: evaluations per stage of the exact density."""

    def __init__(self, coords, stages: nn.ModuleList, nfe: int = 16):
        super().__init__()
        self.coords, self.stages, self.nfe = coords, stages, nfe
        self.channels, self.L = coords.channels, coords.L

    @property
    def layout(self):
        """The RG hierarchy of the pyramid (``rg``) or of the hybrid's flow; None for Hartley modes."""
        return self.coords.layout

    @classmethod
    def build(cls, P: torch.Tensor, layout, schedule: str = "rg", net: str = "local", width: int = 32,
              depth: int = 4, odd: bool = True, nfe: int = 16) -> "DiffusionModel":
        """The (untrained: exactly Gaussian) model of a field with power spectrum ``P [C, L, L]``."""
        coords = GaussianPyramid(P, layout) if schedule == "rg" else SpectralWhitening(P)
        return cls(coords, build_stages(coords, schedule, net, width, depth, odd), nfe)

    @property
    def reference(self) -> torch.Tensor:
        """A buffer in the model's dtype and device."""
        return next(self.coords.buffers())

    @property
    def n_field_vars(self) -> int:
        """``C L^2``: the variables of one lattice field."""
        return self.channels * self.L**2

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x [n, C, L, L], ln q(x) [n])`` from the deterministic sampler with ``self.nfe`` evaluations."""
        from rgflow.diffusion.exact import exact_sample

        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n (number of samples) must be a positive integer, got {n!r}")
        per_call = max(1, 2**14 // self.n_field_vars)  # a few samples per call keep the Jacobians small
        parts = [exact_sample(self, min(per_call, n - i), self.nfe, generator) for i in range(0, n, per_call)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``ln q(x) [B]`` of the same sampler."""
        from rgflow.diffusion.exact import exact_log_prob

        return exact_log_prob(self, x, self.nfe)
