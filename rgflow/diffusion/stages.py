r"""Noise schedules as generation stages in whitened coordinates (TrigFlow form).

A model generates its whitened variables ``u`` (:mod:`rgflow.diffusion.gaussian`) in one or more
*stages*, each conditioned on the stages before it. Within a stage every variable is noised as

``z = cos(theta) u + sin(theta) eps``, ``eps ~ N(0, 1)``, ``theta`` from 0 (clean) to pi/2 (noise),

which is EDM's variance-preserving form with ``sigma_data = 1`` per variable (Karras et al. 2022;
Lu & Song's TrigFlow). The probability-flow ODE is ``dz/dtheta = -F(z)`` with
``F* = E[sin(theta) u - cos(theta) eps | z]``, and ``F* = 0`` for white Gaussian ``u``: a zero
network keeps ``z`` where it started, ``z ~ N(0, 1)``, so the model's Gaussian part is exact at
any number of steps and any ``theta`` at the start. Each stage maps a time ``tau`` in ``[0, 1]``
to ``theta`` per variable (:meth:`Stage.theta`); samplers step on a uniform ``tau`` grid.

Schedules (:data:`SCHEDULES`):

* ``rg`` -- one stage per RG level of the Gaussian pyramid, coarse to fine; each level goes from
  noise to clean, ``theta = (pi/2) tau``, conditioned on the coarse field generated before it
  (:class:`AngleStage`). The sampler's Jacobian is block-triangular over levels.
* ``standard`` -- one stage over all whitened Fourier modes with white noise on the field,
  ``x + s eps``, ``s(tau) = s_max tau^7`` (EDM's rho = 7 step placement, ``s_max = 80 sqrt(max P)``
  so every mode starts as noise): per mode ``theta_k = atan(s / sqrt(P_k))`` (:class:`SpectralStage`).
* ``ve`` -- the variance-exploding process of Wang, Aarts & Zhou (arXiv:2309.17082), ``x + s eps``
  with ``s(tau)^2 = (25^(2 tau) - 1) / (2 ln 25)`` (``s(1) = 9.845``), steps uniform in ``tau``; the
  same per-mode preconditioning, so modes with ``sqrt(P_k) > s(1)`` start partly clean (their
  Gaussian part is still exact; their non-Gaussian part is not generated from noise).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from rgflow.diffusion.gaussian import hartley

__all__ = ["SCHEDULES", "Stage", "AngleStage", "SpectralStage", "noise_scale", "momentum_shells"]

SCHEDULES = ("rg", "standard", "ve")
VE_SIGMA = 25.0
RHO = 7.0
S_MAX_FACTOR = 80.0


def momentum_shells(L: int) -> torch.Tensor:
    """``[L, L]`` shell index of every Fourier mode: 0 for ``n = 0``, else ``1 + floor(log2 |n|)``
    with ``|n| = max(|n_1|, |n_2|)`` (mode numbers wrapped to ``[-L/2, L/2]``), the Nyquist line
    merged into the shell below it."""
    n = torch.arange(L)
    n = torch.minimum(n, L - n)
    norm = torch.maximum(n[:, None], n[None, :])
    top = max(1, int(math.floor(math.log2(max(L // 2, 1)))))
    shell = 1 + torch.floor(torch.log2(norm.clamp_min(1).double())).long()
    return torch.where(norm == 0, 0, shell.clamp_max(top))


def noise_scale(schedule: str, tau: torch.Tensor, s_max: float) -> torch.Tensor:
    """Field-space noise ``s(tau)`` of the ``standard`` and ``ve`` schedules (module docstring)."""
    if schedule == "ve":
        return torch.sqrt((VE_SIGMA ** (2 * tau) - 1) / (2 * math.log(VE_SIGMA)))
    return s_max * tau**RHO


class Stage(nn.Module):
    """One stage: its network, the map ``tau -> theta`` and the velocity ``F(z, tau, context)``.

    ``shape``: per-sample shape of its variables; ``radius``: the receptive field of ``F`` on the
    stage's grid in sites (None: dense), used for exact Jacobians by colouring.
    """

    shape: tuple[int, ...]
    #: RG level above the finest generated one (0: finest); coarser stages take more steps.
    level: int = 0

    def theta(self, tau: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def velocity(self, z: torch.Tensor, tau: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    @property
    def radius(self) -> int | None:
        return getattr(self.net, "radius", None)

    def loss_weight(self, like: torch.Tensor) -> torch.Tensor | float:
        """Per-variable weight of the squared error in training (mean 1)."""
        return 1.0

    def pooled(self, values: torch.Tensor) -> torch.Tensor:
        """A per-variable statistic ``[*shape]`` averaged over the variables that share their noise
        schedule: all of a stage's (a scalar); per momentum shell for a spectral stage."""
        return values.mean()

    @property
    def n_vars(self) -> int:
        return math.prod(self.shape)


class AngleStage(Stage):
    """``theta = (pi/2) tau`` for every variable; ``F = net([z, context], theta)``.

    Args:
        net: ``G(h [B, c_z + c_ctx, ...], c_noise [B]) -> [B, c_z, ...]``.
        shape: the variables' per-sample shape (``[c_z, M, M]`` on a grid, or ``[D]`` flat).
    """

    def __init__(self, net: nn.Module, shape: tuple[int, ...]):
        super().__init__()
        self.net, self.shape = net, tuple(shape)

    def theta(self, tau: torch.Tensor) -> torch.Tensor:
        return (0.5 * math.pi * tau).reshape(-1, *[1] * len(self.shape))

    def velocity(self, z, tau, context):
        h = z if context is None else torch.cat([z, context.to(z)], dim=1)
        return self.net(h, 0.5 * math.pi * tau.to(z).expand(len(z)))


class SpectralStage(Stage):
    r"""All whitened Hartley modes at once, white noise ``s(tau)`` on the field (``standard``, ``ve``).

    With ``P_k`` the spectrum and ``Pbar`` its mean, the network sees the noisy field
    ``x_s = H(sqrt(P + s^2) z)`` divided by ``sqrt(Pbar + s^2)`` and returns a field ``G``; per mode
    ``F_k = g_k H(G)_k`` with ``g_k = c_out(Pbar) / c_out(P_k)``, ``c_out(p) = s sqrt(p / (p + s^2))``
    (EDM's output scale per mode, relative to the field-average one), so that a local ``G`` is a
    local correction of the denoiser in field space.

    Every momentum shell (:func:`momentum_shells`: the zero mode, ``|n| = 1``, ``2 - 3``, ``4 - 7``, ...,
    ``|n|`` the largest component of the mode number) weighs the same in the loss, as every level does
    in the ``rg`` schedule: with one weight per mode the zero mode would carry ``1/L^2`` of it.
    """

    def __init__(self, net: nn.Module, P: torch.Tensor, schedule: str):
        super().__init__()
        if schedule not in ("standard", "ve"):
            raise ValueError(f"schedule={schedule!r} has no spectral stage; allowed: standard, ve")
        self.net, self.schedule, self.shape = net, schedule, tuple(P.shape)
        self.register_buffer("P", P.clone())
        self.register_buffer("Pbar", P.mean())
        self.s_max = S_MAX_FACTOR * float(P.max().sqrt())
        shells = momentum_shells(P.shape[-1])
        counts = torch.bincount(shells.flatten()).to(P.dtype)
        weight = (1 / counts)[shells] / len(counts) * shells.numel()
        self.register_buffer("shell_weight", weight.expand_as(P).clone(), persistent=False)

    def loss_weight(self, like):
        return self.shell_weight.to(like)

    def pooled(self, values):
        shells = momentum_shells(self.P.shape[-1]).to(values.device).expand_as(values).flatten()
        sums = torch.zeros(int(shells.max()) + 1, dtype=values.dtype, device=values.device)
        sums.index_add_(0, shells, values.flatten())
        return (sums / torch.bincount(shells).to(values))[shells].reshape(values.shape)

    def noise(self, tau: torch.Tensor) -> torch.Tensor:
        """``s(tau) [B]``."""
        return noise_scale(self.schedule, tau, self.s_max)

    def theta(self, tau):
        s = self.noise(tau).reshape(-1, 1, 1, 1)
        return torch.atan2(s, self.P.sqrt().to(s))

    def velocity(self, z, tau, context):
        s2 = (self.noise(tau.to(z)).expand(len(z)) ** 2).reshape(-1, 1, 1, 1)
        P, Pbar = self.P.to(z), self.Pbar.to(z)
        h = hartley(torch.sqrt(P + s2) * z) / torch.sqrt(Pbar + s2)
        G = self.net(h, torch.atan2(s2.flatten().sqrt(), Pbar.sqrt()))
        gain = torch.sqrt(Pbar * (P + s2) / (P * (Pbar + s2)))
        return gain * hartley(G)
