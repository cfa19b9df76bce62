r"""RG coordinates for diffusion: ``u = R(x)`` on a Layout, scaled per level.

``R`` is an :class:`~rgflow.flows.rgflow.RGFlow` used as a fixed bijection: the parameter-free
orthonormal Haar map (:func:`~rgflow.flows.haar.haar_flow`, ``ln|det| = 0``) or a trained flow
from a run folder (then ``ln|det dR/dx|`` enters densities). The diffused variable is
``y = u / s`` with ``s`` per level and channel (``"level"``: each level's RMS over the training
ensemble, the data-dependent RG variant) or one number (``"global"``: the RMS of all of ``u``;
with the Haar map and ``Delta = 0`` this is an isotropic diffusion of ``x``).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["RGCoordinates", "SCALINGS"]

SCALINGS = ("level", "global")


class RGCoordinates(nn.Module):
    """``x [B, C, L, L] <-> y [B, C, L, L]`` (scaled RG coordinates stored in place).

    Args:
        flow: the bijection ``R`` (an RGFlow: ``forward`` is data -> latent); kept frozen.
        scaling: ``"level"`` or ``"global"``.
    """

    def __init__(self, flow, scaling: str = "level"):
        super().__init__()
        if scaling not in SCALINGS:
            raise ValueError(f"level_scale={scaling!r} is not allowed; allowed: {', '.join(SCALINGS)}")
        self.flow, self.scaling, self.layout = flow, scaling, flow.layout
        for p in self.flow.parameters():
            p.requires_grad_(False)
        C, n_lev = flow.channels, flow.layout.n_levels + 1
        self.register_buffer("level_of_site", flow.layout.level_of_site.clone(), persistent=False)
        self.register_buffer("scale", torch.ones(C, n_lev))

    @property
    def n_levels(self) -> int:
        """Levels including the top."""
        return self.layout.n_levels + 1

    def _scale_map(self) -> torch.Tensor:
        return self.scale[:, self.level_of_site]  # [C, L, L]

    @torch.no_grad()
    def fit_scale(self, x: torch.Tensor, batch_size: int = 1024) -> None:
        """Set the scale from an ensemble ``x [N, C, L, L]`` (RMS per level and channel, or global)."""
        u = torch.cat([self.flow(x[i:i + batch_size].to(self.scale))[0] for i in range(0, len(x), batch_size)])
        levels = self.layout.split(u)  # [N, C, n_l] each
        rms = torch.stack([(p**2).mean(dim=(0, 2)).sqrt() for p in levels], dim=1)  # [C, n_levels]
        if self.scaling == "global":
            rms = (u**2).mean().sqrt().expand_as(rms)
        self.scale.copy_(rms.clamp_min(1e-6))

    def to_coords(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x -> (y, ln|det dy/dx|)``."""
        u, logdet = self.flow(x)
        s = self._scale_map()
        return u / s, logdet - torch.log(s).sum() * x.new_ones(x.shape[0])

    def to_field(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y -> (x, ln|det dx/dy|)``."""
        s = self._scale_map()
        x, logdet = self.flow.inverse(y * s)
        return x, logdet + torch.log(s).sum() * y.new_ones(y.shape[0])

    def sigma_map(self, sigma_levels: torch.Tensor) -> torch.Tensor:
        """Per-level noise ``[B, n_levels]`` -> per-site ``[B, 1, L, L]``."""
        return sigma_levels[:, self.level_of_site].unsqueeze(1)
