r"""Priors over the bulk latents ``z: [B, C, L, L]``, factorised over sites.

``z(x) = sigma_{l(x), c} u(x)`` with ``u`` i.i.d. standard normal (``"normal"``) or Laplace
with unit scale (``"laplace"``, density ``e^{-|u|}/2``) and ``l(x)`` the level of the latent
stored at site ``x`` (:attr:`rgflow.layout.Layout.level_of_site`). The per-level scales
``sigma`` are 1 unless ``learn_level_scale=True``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from rgflow.layout import Layout

__all__ = ["Prior", "PRIOR_KINDS"]

PRIOR_KINDS = ("normal", "laplace")


class Prior(nn.Module):
    """Site-factorised prior with optional learnable per-level (and per-channel) scale.

    Args:
        layout: the RG layout (levels of each site), or an int ``L`` for a flat
            (single-level) prior on an ``L x L`` lattice.
        channels: field components ``C``.
        kind: ``"normal"`` or ``"laplace"``.
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
        if self.kind == "normal":
            dens = -0.5 * u**2 - 0.5 * math.log(2 * math.pi)
        else:
            dens = -u.abs() - math.log(2.0)
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
        else:
            e = torch.rand(shape, dtype=ref.dtype, device=ref.device, generator=generator) - 0.5
            u = -torch.sign(e) * torch.log1p(-2 * e.abs())
        return u * torch.exp(self._log_scale_map())
