r"""Per-level variance-preserving noise schedules in RG coordinates.

Every level ``l`` (0 = finest, ``top`` = the sites left after the last level) of the scaled RG
coordinates ``y`` is noised as ``y_l(t) = alpha_l(t) y_l + sigma_l(t) eps`` with
``alpha^2 = sigmoid(lambda_l)``, ``sigma^2 = sigmoid(-lambda_l)`` and log-SNR

``lambda_l(t) = clip(base(t) + l Delta, lambda_min, lambda_max)``,
``base(t) = lambda_max - t (lambda_max - lambda_min + top Delta)``, ``t in [0, 1]``.

So at ``t = 0`` every level is clean (``lambda >= lambda_max``) and at ``t = 1`` every level is
noise (``lambda <= lambda_min``). With ``Delta > 0`` (the *RG schedule*) fine levels are erased
first and, in reverse, generated last: coarse to fine. ``Delta = 0`` is the *standard schedule*,
one log-SNR for all sites -- with the orthonormal Haar coordinates and a global data scale, an
ordinary isotropic diffusion of the field ``x``. The samplers and the loss work in EDM
variables: ``v = y_t / alpha = y + sigma_e eps`` with ``sigma_e = exp(-lambda / 2)``.
"""
from __future__ import annotations

import math

import torch

__all__ = ["RGSchedule"]


class RGSchedule:
    """Log-SNR per level (see the module docstring).

    Args:
        n_levels: levels including the top (``layout.n_levels + 1``).
        delta: per-level log-SNR offset ``Delta`` (0: standard schedule).
        logsnr_max, logsnr_min: the clean and the pure-noise ends.
    """

    def __init__(self, n_levels: int, delta: float = 0.0, logsnr_max: float = 10.0, logsnr_min: float = -10.0):
        if not (math.isfinite(delta) and delta >= 0):
            raise ValueError(f"delta={delta!r} is not allowed: must be a number >= 0 (0: standard schedule)")
        if not logsnr_max > logsnr_min:
            raise ValueError(f"logsnr_max={logsnr_max} must exceed logsnr_min={logsnr_min}")
        self.n_levels, self.delta = n_levels, float(delta)
        self.logsnr_max, self.logsnr_min = float(logsnr_max), float(logsnr_min)
        self.span = self.logsnr_max - self.logsnr_min + (n_levels - 1) * self.delta

    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        """``lambda_l(t)``: ``t [B] -> [B, n_levels]``."""
        levels = torch.arange(self.n_levels, dtype=t.dtype, device=t.device)
        base = self.logsnr_max - t[:, None] * self.span
        return (base + self.delta * levels).clamp(self.logsnr_min, self.logsnr_max)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """EDM noise level ``sigma_e = exp(-lambda/2)`` per level: ``[B] -> [B, n_levels]``."""
        return torch.exp(-0.5 * self.logsnr(t))

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VP coefficients ``(alpha_l(t), sigma_l(t))``, each ``[B, n_levels]``."""
        lam = self.logsnr(t)
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()

    def time_of(self, logsnr: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """The ``t`` at which level ``level`` has log-SNR ``logsnr`` (clamped to ``[0, 1]``)."""
        base = logsnr - self.delta * level
        return ((self.logsnr_max - base) / self.span).clamp(0.0, 1.0)

    def active_window(self, level: int) -> tuple[float, float]:
        """The ``t`` interval in which level ``level`` is being noised (its log-SNR moves)."""
        start = level * self.delta / self.span  # base(t) + l Delta leaves logsnr_max
        end = (self.logsnr_max - self.logsnr_min + level * self.delta) / self.span  # ... and reaches logsnr_min
        return start, min(end, 1.0)
