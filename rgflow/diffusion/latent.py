r"""The flow-diffusion hybrid's coordinates: a trained flow's coarse latents, whitened level by level.

``LatentPyramid(flow, K)`` diffuses the bulk latents of levels ``>= K`` of a trained hierarchical
flow (:class:`~rgflow.flows.rgflow.RGFlow`); the finer latents keep the flow's own prior (``K = 0``:
all latents are diffused). The
diffused latents ``w`` form one stage per level, coarse to fine, each whitened given the coarser
ones by the training ensemble's covariance (Cholesky; :meth:`fit`):

``z_s = L_s^{-1} (w_s - A_s c_s)``, ``A_s = Sigma_sc Sigma_cc^{-1}``, ``L_s L_s^T = Sigma_ss - A_s Sigma_cs``,

with ``c_s`` the latents of the coarser stages. A zero network then generates the Gaussian with
the ensemble's latent covariance exactly. Densities:
``ln q(x) = sum_s ln p(z_s) + rest``, ``rest = ln|det dz/dw| + ln p_prior(u_fine) + ln|det du/dx|``.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["LatentPyramid"]


class LatentPyramid(nn.Module):
    """Coordinates interface of :class:`~rgflow.diffusion.gaussian.GaussianPyramid` on a flow's latents."""

    def __init__(self, flow, levels: int):
        super().__init__()
        layout = flow.layout
        top = layout.n_levels
        if isinstance(levels, bool) or not isinstance(levels, int) or not 0 <= levels <= top:
            raise ValueError(f"levels={levels!r} is not allowed: the first diffused level, 0 ... {top} (the top)")
        self.flow, self.layout, self.levels, self.channels, self.L = flow, layout, levels, flow.channels, layout.L
        for p in self.flow.parameters():
            p.requires_grad_(False)
        order = list(range(top, levels - 1, -1))  # generation order: top first
        self.stage_levels = order
        self.sizes = [self.channels * len(layout.level_sites[lvl]) for lvl in order]
        D = sum(self.sizes)
        self.register_buffer("cov", torch.eye(D))
        self._set_maps()

    @property
    def n_stages(self) -> int:
        return len(self.sizes)

    def stage_rank(self, s: int) -> int:
        """How many levels above the finest diffused one the stage lies."""
        return self.stage_levels[s] - self.levels

    def stage_shape(self, s: int) -> tuple[int]:
        return (self.sizes[s],)

    def context_channels(self, s: int) -> int:
        return sum(self.sizes[:s])

    def _set_maps(self) -> None:
        cov = self.cov.double()
        self.A, self.chol, self.rms, logdet = [], [], [], 0.0
        start = 0
        for n in self.sizes:
            c, s = slice(0, start), slice(start, start + n)
            if start:
                A = torch.linalg.solve(cov[c, c], cov[c, s]).T
                cond = cov[s, s] - A @ cov[c, s]
            else:
                A, cond = cov.new_zeros(n, 0), cov[s, s]
            chol = torch.linalg.cholesky(0.5 * (cond + cond.T))
            self.A.append(A.to(self.cov.dtype))
            self.chol.append(chol.to(self.cov.dtype))
            self.rms.append(float(cov[c, c].diagonal().mean().sqrt()) if start else 1.0)
            logdet -= float(chol.diagonal().log().sum())
            start += n
        self.whiten_logdet = logdet

    def _apply(self, fn, recurse=True):  # keep the derived maps in the buffers' dtype and device
        out = super()._apply(fn, recurse)
        self._set_maps()
        return out

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._set_maps()

    @torch.no_grad()
    def fit(self, w: torch.Tensor) -> None:
        """Set the covariance from encoded training latents ``w [N, D]`` (zero mean: sign flips)."""
        cov = (w.double().T @ w.double()) / len(w)
        self.cov.copy_(cov + 1e-8 * cov.diagonal().mean() * torch.eye(len(cov), dtype=cov.dtype))
        self._set_maps()

    def latents(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x -> (w [B, D] in stage order, the flow's u)`` and ``ln|det du/dx|``."""
        u, logdet = self.flow(x)
        flat = u.flatten(2)
        w = torch.cat([flat[:, :, self.layout.level_sites[lvl].to(u.device)].flatten(1) for lvl in self.stage_levels], 1)
        return w, u, logdet

    def whiten(self, w: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """``w [B, D] -> (z per stage, context per stage)``."""
        zs, ctx, start = [], [], 0
        for s, n in enumerate(self.sizes):
            c, ws = w[:, :start], w[:, start:start + n]
            zs.append(torch.linalg.solve_triangular(self.chol[s], (ws - c @ self.A[s].T).T, upper=False).T)
            ctx.append(c / self.rms[s] if start else None)
            start += n
        return zs, ctx

    def _rest(self, u, logdet_u_x):
        fine = self.layout.level_of_site.to(u.device) < self.levels
        prior = (self.flow.prior.site_log_prob(u) * fine).sum(dim=(1, 2, 3))
        return prior + logdet_u_x + self.whiten_logdet

    def encode(self, x: torch.Tensor):
        w, u, logdet = self.latents(x)
        zs, ctx = self.whiten(w)
        return zs, ctx, self._rest(u, logdet)

    def context(self, s: int, state: torch.Tensor | None):
        return None if s == 0 else state / self.rms[s]

    def absorb(self, s: int, state: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
        prev = state if state is not None else z.new_zeros(len(z), 0)
        ws = prev @ self.A[s].T + z @ self.chol[s].T
        return torch.cat([prev, ws], dim=1)

    def finish(self, w: torch.Tensor, generator: torch.Generator | None = None):
        """Diffused latents ``w`` + the finer latents from the flow's prior -> ``(x, rest)``."""
        u = self.flow.prior.sample(len(w), generator=generator).to(w)
        flat, start = u.flatten(2).clone(), 0
        for lvl in self.stage_levels:
            idx = self.layout.level_sites[lvl].to(w.device)
            flat[:, :, idx] = w[:, start:start + self.channels * len(idx)].reshape(len(w), self.channels, -1)
            start += self.channels * len(idx)
        u = flat.reshape(u.shape)
        x, logdet = self.flow.inverse(u)
        return x, self._rest(u, -logdet)

    @property
    def P(self) -> torch.Tensor:
        """A buffer in the model's dtype and device (the model's reference tensor)."""
        return self.cov
