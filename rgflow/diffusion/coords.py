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
    """``x [B, C, L, L] <-> y`` (scaled RG coordinates stored in place), and the diffused part ``w`` of ``y``.

    Args:
        flow: the bijection ``R`` (an RGFlow: ``forward`` is data -> latent); kept frozen.
        scaling: ``"level"`` or ``"global"``.
        levels: ``K``: only the latents of levels ``>= K`` are diffused (``w [B, C, n_diffused]``);
            the finer ones keep the flow's own prior (the hybrid "coarse by diffusion, fine by flow").
            ``K = 0`` diffuses all of ``y`` (``w = y [B, C, L, L]``).

    Densities: ``ln q(x) = ln p_w(w) + rest(x)`` with ``rest = ln p_prior(u_fine) + ln|det du/dx|
    - sum_{diffused sites} ln s`` (:meth:`encode`, :meth:`decode`).
    """

    def __init__(self, flow, scaling: str = "level", levels: int = 0):
        super().__init__()
        if scaling not in SCALINGS:
            raise ValueError(f"level_scale={scaling!r} is not allowed; allowed: {', '.join(SCALINGS)}")
        top = flow.layout.n_levels
        if isinstance(levels, bool) or not isinstance(levels, int) or not 0 <= levels <= top:
            raise ValueError(f"levels={levels!r} is not allowed: the first diffused level, 0 ... {top} (the top)")
        self.flow, self.scaling, self.layout, self.levels = flow, scaling, flow.layout, levels
        for p in self.flow.parameters():
            p.requires_grad_(False)
        C, n_lev = flow.channels, top + 1
        total = flow.layout.level_of_site
        diffused = total >= levels
        self.register_buffer("total_level_of_site", total.clone(), persistent=False)
        self.register_buffer("fine_mask", (~diffused).to(torch.get_default_dtype())[None], persistent=False)
        self.register_buffer("diffused_index", torch.nonzero(diffused.flatten()).flatten(), persistent=False)
        # the level of each diffused variable, counted from K (what the schedule and the network see)
        sched_level = (total - levels).clamp_min(0)
        self.register_buffer("level_of_site", sched_level if levels == 0 else sched_level.flatten()[self.diffused_index],
                             persistent=False)
        self.register_buffer("scale", torch.ones(C, n_lev))

    @property
    def n_levels(self) -> int:
        """Diffused levels (including the top): the schedule's levels."""
        return self.layout.n_levels + 1 - self.levels

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-sample shape of the diffused variable ``w``."""
        C = self.flow.channels
        return (C, self.layout.L, self.layout.L) if self.levels == 0 else (C, len(self.diffused_index))

    def _scale_map(self) -> torch.Tensor:
        return self.scale[:, self.total_level_of_site]  # [C, L, L]

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
        """``x -> (y, ln|det dy/dx|)`` (all of ``y``, scaled everywhere)."""
        u, logdet = self.flow(x)
        s = self._scale_map()
        return u / s, logdet - torch.log(s).sum() * x.new_ones(x.shape[0])

    def to_field(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y -> (x, ln|det dx/dy|)``."""
        s = self._scale_map()
        x, logdet = self.flow.inverse(y * s)
        return x, logdet + torch.log(s).sum() * y.new_ones(y.shape[0])

    def _log_scale_diffused(self) -> torch.Tensor:
        return (torch.log(self._scale_map()) * (1 - self.fine_mask)).sum()

    def _rest(self, u: torch.Tensor, logdet_u_x: torch.Tensor) -> torch.Tensor:
        fine = (self.flow.prior.site_log_prob(u) * self.fine_mask).sum(dim=(1, 2, 3)) if self.levels else 0.0
        return fine + logdet_u_x - self._log_scale_diffused()

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x -> (w, rest [B])``: the diffused variable and the rest of ``ln q(x)`` (class docstring)."""
        u, logdet = self.flow(x)
        y = u / self._scale_map()
        w = y if self.levels == 0 else y.flatten(2)[:, :, self.diffused_index]
        return w, self._rest(u, logdet)

    def decode(self, w: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``w -> (x, rest [B])``; the finer latents (``levels > 0``) are drawn from the flow's prior."""
        s = self._scale_map()
        if self.levels == 0:
            u = w * s
        else:
            u = self.flow.prior.sample(len(w), generator=generator).to(w)
            flat = u.flatten(2).index_copy(2, self.diffused_index, w * s.flatten(1)[:, self.diffused_index])
            u = flat.reshape(u.shape)
        x, logdet = self.flow.inverse(u)
        return x, self._rest(u, -logdet)

    def sigma_map(self, sigma_levels: torch.Tensor) -> torch.Tensor:
        """Per-level noise ``[B, n_levels]`` -> per variable, broadcastable to ``w``."""
        return sigma_levels[:, self.level_of_site].unsqueeze(1)
