r"""Priors over the bulk latents ``z: [B, C, L, L]``, factorised over sites.

``z(x) = sigma_{l(x), c} u(x)`` with ``u`` i.i.d. standard normal (``"normal"``), Laplace
with unit scale (``"laplace"``, density ``e^{-|u|}/2``) or normal with a soft wall
(``"normal-wall"``), and ``l(x)`` the level of the latent stored at site ``x``
(:attr:`rgflow.layout.Layout.level_of_site`). The per-level scales ``sigma`` are 1 unless
``learn_level_scale=True``.

``"normal-wall"``: ``ln p(u) = -u^2/2 - (u/4)^8 - ln Z_wall``, ``Z_wall = 2.50301`` (quadrature,
against ``sqrt(2 pi) = 2.5066``). Within ``(u/4)^8 < 0.1`` nats of the normal for ``|u| < 3``, it
makes ``|u| > 5`` latents ``e^{-6}`` and ``|u| > 5.75`` latents ``e^{-18}`` rarer. Why: a spline
coupling maps ``[-B, B]`` onto itself with unit slope at ``+-B``, so a latent near the bound passes
almost unchanged; a phi^4 field (``e^{-lambda phi^4}`` tails) then gets a single-site spike that
costs thousands of nats of action and sets the error of ``F_var`` (``experiments/flow_tails.py``).
Sampled by rejection from the normal (accepted with probability ``e^{-(u/4)^8}``, 99.86 %).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from rgflow.layout import Layout

__all__ = ["Prior", "PRIOR_KINDS"]

PRIOR_KINDS = ("normal", "laplace", "normal-wall")
#: the soft wall of ``"normal-wall"``: ``(u / WALL)^8`` nats
WALL = 4.0


def _wall_log_norm() -> float:
    """``ln(Z_wall / sqrt(2 pi))``: ``ln E_normal[e^{-(u/WALL)^8}]`` by the trapezoid rule on ``[-12, 12]``
    (step 1e-3; the integrand is smooth and negligible at the ends, so the error is far below 1e-12)."""
    h = 1e-3
    u = torch.arange(-12000, 12001, dtype=torch.float64) * h
    return math.log(float(torch.exp(-0.5 * u**2 - (u / WALL) ** 8).sum() * h) / math.sqrt(2 * math.pi))


WALL_LOG_NORM = _wall_log_norm()


class Prior(nn.Module):
    """Site-factorised prior with optional learnable per-level (and per-channel) scale.

    Args:
        layout: the RG layout (levels of each site), or an int ``L`` for a flat
            (single-level) prior on an ``L x L`` lattice.
        channels: field components ``C``.
        kind: ``"normal"``, ``"laplace"`` or ``"normal-wall"``.
        learn_level_scale: make ``log sigma[C, n_levels + 1]`` a trainable parameter.
        tie_channels: one scale for all channels (``log sigma[1, n_levels + 1]``), as U(1)
            invariance of a complex field's prior requires.
    """

    def __init__(self, layout: Layout | int, channels: int = 1, kind: str = "normal", learn_level_scale: bool = False,
                 tie_channels: bool = False):
        super().__init__()
        if kind not in PRIOR_KINDS:
            raise ValueError(f"prior kind {kind!r} is not allowed; allowed: {', '.join(PRIOR_KINDS)}")
        if isinstance(layout, int):
            L, level_of_site, n_levels = layout, torch.zeros(layout, layout, dtype=torch.long), 0
        else:
            L, level_of_site, n_levels = layout.L, layout.level_of_site, layout.n_levels
        self.kind, self.channels, self.L = kind, channels, L
        self.register_buffer("level_of_site", level_of_site.clone(), persistent=False)
        log_scale = torch.zeros(1 if tie_channels else channels, n_levels + 1)
        if learn_level_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:  # fixed zeros, not saved: the state dict does not depend on the number of levels
            self.register_buffer("log_scale", log_scale, persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if not isinstance(self.log_scale, nn.Parameter):  # runs saved before fixed scales were left out: zeros
            state_dict.pop(prefix + "log_scale", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _log_scale_map(self) -> torch.Tensor:
        return self.log_scale[:, self.level_of_site].expand(self.channels, self.L, self.L)  # [C, L, L]

    def site_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``ln p`` of every latent: ``[B, C, L, L] -> [B, C, L, L]``."""
        ls = self._log_scale_map()
        u = z * torch.exp(-ls)
        if self.kind == "laplace":
            dens = -u.abs() - math.log(2.0)
        else:
            dens = -0.5 * u**2 - 0.5 * math.log(2 * math.pi)
            if self.kind == "normal-wall":
                dens = dens - (u / WALL) ** 8 - WALL_LOG_NORM
        return dens - ls

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``ln p(z)``: ``[B, C, L, L] -> [B]``."""
        return self.site_log_prob(z).sum(dim=(1, 2, 3))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``z: [n, C, L, L]`` in the prior's dtype and device."""
        shape = (n, self.channels, self.L, self.L)
        ref = self.log_scale
        if self.kind == "normal":
            u = torch.randn(shape, dtype=ref.dtype, device=ref.device, generator=generator)
        elif self.kind == "normal-wall":
            u = _walled_normal(shape, ref, generator)
        else:
            e = torch.rand(shape, dtype=ref.dtype, device=ref.device, generator=generator) - 0.5
            u = -torch.sign(e) * torch.log1p(-2 * e.abs())
        return u * torch.exp(self._log_scale_map())


def _walled_normal(shape: tuple[int, ...], ref: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draws of ``p(u) ∝ e^{-u^2/2 - (u/WALL)^8}`` of ``shape``: normal draws, each rejected with probability
    ``1 - e^{-(u/WALL)^8}`` and drawn again (in index order) until accepted."""
    u = torch.empty(math.prod(shape), dtype=ref.dtype, device=ref.device)
    todo = torch.arange(u.numel(), device=ref.device)  # flat indices still to draw
    while todo.numel():
        v = torch.randn(todo.numel(), dtype=ref.dtype, device=ref.device, generator=generator)
        keep = torch.rand(todo.numel(), dtype=ref.dtype, device=ref.device, generator=generator) < torch.exp(-(v / WALL) ** 8)
        u[todo[keep]] = v[keep]
        todo = todo[~keep]
    return u.view(shape)
