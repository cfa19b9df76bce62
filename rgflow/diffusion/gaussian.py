r"""The Gaussian part of a stationary lattice ensemble, exactly, as linear whitening maps.

Everything here is fixed by the ensemble's two-point function ``G(r)``, i.e. its power spectrum
``P(k) = sum_r G(r) e^{-i k r}`` (per channel, :func:`power_spectrum`, averaged over the lattice
symmetries). A diffusion model whose network outputs zero generates exactly the Gaussian with this
spectrum; the network only learns the non-Gaussian rest.

* :func:`hartley` -- the real, orthonormal, self-inverse 2-d Hartley transform
  ``H(x)_k = Re F_k - Im F_k`` (``F`` the unitary DFT). Its modes diagonalise every stationary
  covariance of a real field: ``E[H(x)_k H(x)_k'] = P(k) delta_kk'``.
* :class:`SpectralWhitening` -- ``x <-> u = P^{-1/2} H(x)``: whitened Fourier modes ``[B, C, L, L]``.
* :class:`GaussianPyramid` -- the *Gaussian RG*: the Haar hierarchy of the :class:`~rgflow.layout.Layout`
  (2x2 cells, block size 2) with every level's details whitened *given the coarse field*. At level
  ``l`` the coarse field ``c_l`` (side ``M``) splits into ``c_{l+1}`` (twice the cell average, side
  ``M/2``) and three details ``d_l`` per cell; with the joint spectrum ``S(m)`` of ``(c_{l+1}, d_l)``
  (``4 x 4`` per momentum ``m`` of the coarse grid, exact from ``G``)

  ``z_l = Sigma(m)^{-1/2} (d_l(m) - A(m) c_{l+1}(m))``, ``A = S_dc / S_cc``,
  ``Sigma = S_dd - S_dc S_cd / S_cc``,

  and the top field ``z_top = P_top^{-1/2} c_top``. For the Gaussian part of the ensemble every
  ``z_l`` is white noise independent of everything coarser, so generating level by level, coarse to
  fine, ``p(x) = p(z_top) prod_l p(z_l | c_{l+1})`` is exact with ``z ~ N(0, 1)``. All maps are
  translation-equivariant (FFTs on each level's grid), and ``ln |det dz/dx|`` is a constant.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["hartley", "power_spectrum", "SpectralWhitening", "GaussianPyramid", "haar_cells", "haar_uncells"]

#: Rows: the kept combination (twice the cell average) and the three details of a 2x2 cell
#: ``(a, b; c, d)`` (sites row-major), as in :class:`~rgflow.flows.haar.HaarBlock`.
HAAR = 0.5 * torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float64)


def hartley(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-d Hartley transform over the last two axes (its own inverse)."""
    f = torch.fft.fft2(x, norm="ortho")
    return f.real - f.imag


def _d4_average(P: torch.Tensor) -> torch.Tensor:
    """Average a spectrum ``[..., L, L]`` over the 8 lattice rotations and reflections of ``k``."""
    L = P.shape[-1]
    neg = (-torch.arange(L)) % L
    images = []
    for Q in (P, P.transpose(-1, -2)):
        images += [Q, Q[..., neg, :], Q[..., :, neg], Q[..., neg, :][..., :, neg]]
    return torch.stack(images).mean(0)


@torch.no_grad()
def power_spectrum(x: torch.Tensor, average_channels: bool = False, batch_size: int = 4096) -> torch.Tensor:
    """``P_c(k) = <|F_c(k)|^2>`` (unitary DFT) of an ensemble ``x [N, C, L, L]``, averaged over the
    lattice symmetries (and over channels, for an O(C)-symmetric field): ``[C, L, L]`` float64.

    The mean is taken to be zero (the actions are Z2-symmetric and training flips signs)."""
    total = torch.zeros(x.shape[1:], dtype=torch.float64, device=x.device)
    for i in range(0, len(x), batch_size):
        f = torch.fft.fft2(x[i:i + batch_size].double(), norm="ortho")
        total += (f.real**2 + f.imag**2).sum(0)
    P = _d4_average(total / len(x))
    if average_channels:
        P = P.mean(0, keepdim=True).expand_as(P).clone()
    return P


class SpectralWhitening(nn.Module):
    """``x [B, C, L, L] <-> u = P^{-1/2} H(x)``, whitened Hartley modes in place of the sites: one
    stage of shape ``[C, L, L]`` in the coordinates interface of :class:`GaussianPyramid`."""

    n_stages = 1
    layout = None

    def __init__(self, P: torch.Tensor):
        super().__init__()
        self.register_buffer("P", P.clone())
        self.channels, self.L = P.shape[0], P.shape[-1]

    @property
    def logdet(self) -> torch.Tensor:
        """``ln |det du/dx| = -1/2 sum ln P``."""
        return -0.5 * torch.log(self.P).sum()

    def stage_shape(self, s: int) -> tuple[int, ...]:
        return tuple(self.P.shape)

    def context_channels(self, s: int) -> int:
        return 0

    def context(self, s: int, state) -> None:
        return None

    def absorb(self, s: int, state, z: torch.Tensor) -> torch.Tensor:
        return z

    def finish(self, u: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``u -> (x, rest)`` with ``rest = ln|det du/dx|``."""
        return hartley(u * self.P.sqrt().to(u)), self.logdet.to(u).expand(len(u))

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[None], torch.Tensor]:
        """``x -> ([u], [None], rest)``."""
        return [hartley(x) / self.P.sqrt().to(x)], [None], self.logdet.to(x).expand(len(x))


def haar_cells(c: torch.Tensor) -> torch.Tensor:
    """``c [B, C, M, M] -> [B, C, 4, M/2, M/2]``: per 2x2 cell the kept value and the three details."""
    B, C, M, _ = c.shape
    cells = c.reshape(B, C, M // 2, 2, M // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(B, C, 4, M // 2, M // 2)
    return torch.einsum("jd,bcdxy->bcjxy", HAAR.to(c), cells)


def haar_uncells(comp: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`haar_cells` (the Haar matrix is orthogonal and symmetric)."""
    B, C, _, m, _ = comp.shape
    cells = torch.einsum("jd,bcjxy->bcdxy", HAAR.to(comp), comp)
    return cells.reshape(B, C, 2, 2, m, m).permute(0, 1, 4, 2, 5, 3).reshape(B, C, 2 * m, 2 * m)


def _component_covariance(G: torch.Tensor) -> torch.Tensor:
    """``G_l(r) [C, M, M]`` (covariance of the level-``l`` field) -> ``C_jj'(R) [C, 4, 4, M/2, M/2]``,
    ``Cov(comp_j(R0 + R), comp_j'(R0)) = sum_{delta, delta'} h_j(delta) h_j'(delta') G_l(2R + delta - delta')``."""
    C, M, _ = G.shape
    m = M // 2
    offsets = [(0, 0), (0, 1), (1, 0), (1, 1)]
    R = torch.arange(m, device=G.device)
    out = G.new_zeros(C, 4, 4, m, m)
    for a, (da0, da1) in enumerate(offsets):
        for b, (db0, db1) in enumerate(offsets):
            rows = (2 * R + da0 - db0) % M
            cols = (2 * R + da1 - db1) % M
            g = G[:, rows][:, :, cols]  # [C, m, m]
            out += HAAR.to(G)[:, a, None, None, None] * HAAR.to(G)[None, :, b, None, None] * g[:, None, None]
    return out


def _hermitian_power(S: torch.Tensor, power: float) -> torch.Tensor:
    """``S^power`` of Hermitian positive definite matrices ``[..., n, n]``."""
    w, V = torch.linalg.eigh(S)
    return (V * w.clamp_min(1e-300).pow(power).unsqueeze(-2).to(V.dtype)) @ V.mH


class GaussianPyramid(nn.Module):
    r"""The Gaussian RG of a stationary ensemble on a Layout (module docstring).

    Args:
        P: power spectrum ``[C, L, L]`` (:func:`power_spectrum`).
        layout: a MERA :class:`~rgflow.layout.Layout` with block size 2; its ``n_levels`` levels are
            the pyramid's (the top field has side ``L / 2^n_levels``).

    The coordinates interface every model's ``coords`` has: ``encode(x) -> (z per stage, context per
    stage, rest)`` and, generating, ``context(s, state)``, ``absorb(s, state, z) -> state`` stage by
    stage and ``finish(state) -> (x, rest)``, where ``ln q(x) = sum_s ln p_s(z_s | context_s) + rest``
    (here ``rest = ln|det dz/dx|``, a constant).

    Stages, in generation order (coarse to fine): stage 0 is the top field ``z_top [B, C, M, M]``,
    stage ``s >= 1`` is level ``l = n_levels - s``, ``z_l [B, 3C, M_l, M_l]`` with
    ``M_l = L / 2^(l+1)`` (channel-major: ``3 c + j`` for detail ``j`` of channel ``c``).
    ``contexts`` are the coarse fields the stages are conditioned on, each divided by its RMS.
    """

    def __init__(self, P: torch.Tensor, layout):
        super().__init__()
        if layout.kind != "mera" or layout.block_size != 2:
            raise ValueError(f"the Gaussian pyramid needs a MERA layout with block size 2, got {layout!r}")
        self.layout, self.n_levels = layout, layout.n_levels
        C, L = P.shape[0], P.shape[-1]
        self.channels, self.L = C, L
        G = torch.fft.ifft2(P.double()).real  # [C, L, L], the level-0 covariance
        logdet = torch.zeros((), dtype=torch.float64)
        rms = []
        for lvl in range(self.n_levels):
            S = torch.fft.fft2(_component_covariance(G))  # [C, 4, 4, m, m] per-site cross spectra
            S = S.permute(0, 3, 4, 1, 2)  # [C, m, m, 4, 4]
            S = 0.5 * (S + S.mH)
            S_cc, S_dc, S_dd = S[..., 0, 0].real, S[..., 1:, 0], S[..., 1:, 1:]
            A = S_dc / S_cc[..., None]  # [C, m, m, 3]
            Sigma = S_dd - A[..., :, None] * S_dc.conj()[..., None, :]
            Sigma = 0.5 * (Sigma + Sigma.mH)
            # complex maps stored as (real, imag) pairs: Module.to(dtype) would drop imaginary parts
            self.register_buffer(f"A{lvl}", torch.view_as_real(A))
            self.register_buffer(f"root{lvl}", torch.view_as_real(_hermitian_power(Sigma, 0.5)))
            self.register_buffer(f"inv_root{lvl}", torch.view_as_real(_hermitian_power(Sigma, -0.5)))
            logdet = logdet - 0.5 * torch.linalg.eigvalsh(Sigma).clamp_min(1e-300).log().sum()
            G = torch.fft.ifft2(S_cc).real  # covariance of c_{l+1}
            rms.append(float(G[:, 0, 0].mean().sqrt()))
        P_top = torch.fft.fft2(G).real.clamp_min(1e-300)
        self.register_buffer("P", P.clone())
        self.register_buffer("P_top", P_top)
        self.register_buffer("_logdet", logdet - 0.5 * P_top.log().sum())
        self.register_buffer("context_rms", torch.tensor(rms, dtype=torch.float64))  # level l's context c_{l+1}

    # ------------------------------------------------------------------ shapes
    @property
    def n_stages(self) -> int:
        return self.n_levels + 1

    def level_of_stage(self, s: int) -> int:
        """The Layout level a stage generates (``n_levels`` = top)."""
        return self.n_levels - s

    def stage_rank(self, s: int) -> int:
        """How many levels above the finest the stage lies (0: finest)."""
        return self.level_of_stage(s)

    def stage_shape(self, s: int) -> tuple[int, int, int]:
        L, C = self.layout.L, self.channels
        if s == 0:
            M = L >> self.n_levels
            return (C, M, M)
        M = L >> (self.level_of_stage(s) + 1)
        return (3 * C, M, M)

    def context_channels(self, s: int) -> int:
        return 0 if s == 0 else self.channels

    @property
    def logdet(self) -> torch.Tensor:
        """``ln |det dz/dx|`` (a constant)."""
        return self._logdet

    # ------------------------------------------------------------------ per-level maps
    def _maps(self, lvl: int, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.view_as_complex(getattr(self, f"A{lvl}").contiguous()),
                torch.view_as_complex(getattr(self, f"{which}{lvl}").contiguous()))

    def _whiten(self, lvl: int, d: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``d [B, C, 3, m, m]``, ``c [B, C, m, m]`` -> ``z [B, 3C, m, m]``."""
        A, W = self._maps(lvl, "inv_root")
        dh = torch.fft.fft2(d.to(A.dtype)).permute(0, 1, 3, 4, 2)  # [B, C, m, m, 3]
        ch = torch.fft.fft2(c.to(A.dtype))[..., None]
        zh = (W @ (dh - A * ch)[..., None])[..., 0]
        z = torch.fft.ifft2(zh.permute(0, 1, 4, 2, 3)).real.to(d.dtype)
        return z.reshape(z.shape[0], -1, *z.shape[-2:])

    def _colour(self, lvl: int, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_whiten`: ``z [B, 3C, m, m]``, ``c`` -> ``d [B, C, 3, m, m]``."""
        A, R = self._maps(lvl, "root")
        B, _, m, _ = z.shape
        zh = torch.fft.fft2(z.reshape(B, self.channels, 3, m, m).to(A.dtype)).permute(0, 1, 3, 4, 2)
        ch = torch.fft.fft2(c.to(A.dtype))[..., None]
        dh = (R @ zh[..., None])[..., 0] + A * ch
        return torch.fft.ifft2(dh.permute(0, 1, 4, 2, 3)).real.to(z.dtype)

    def context(self, s: int, c: torch.Tensor | None) -> torch.Tensor | None:
        """The network's context for stage ``s`` from the coarse field ``c`` generated so far."""
        return None if s == 0 else c / self.context_rms[self.level_of_stage(s)].to(c)

    def absorb(self, s: int, c: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
        """Decode stage ``s``: the coarse field before it (None for the top) and its ``z`` -> the finer field."""
        if s == 0:
            return torch.fft.ifft2(torch.fft.fft2(z.to(self.P_top.dtype)) * self.P_top.sqrt()).real.to(z.dtype)
        lvl = self.level_of_stage(s)
        d = self._colour(lvl, z, c)
        return haar_uncells(torch.cat([c[:, :, None], d], dim=2))

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor | None], torch.Tensor]:
        """``x [B, C, L, L] -> (z per stage, context per stage, ln|det dz/dx| [B])``."""
        zs, ctx, c = [], [], x
        for lvl in range(self.n_levels):
            comp = haar_cells(c)
            c = comp[:, :, 0]
            zs.append(self._whiten(lvl, comp[:, :, 1:], c))
            ctx.append(c / self.context_rms[lvl].to(c))
        top = torch.fft.ifft2(torch.fft.fft2(c.to(self.P_top.dtype)) / self.P_top.sqrt()).real.to(x.dtype)
        zs, ctx = [top] + zs[::-1], [None] + ctx[::-1]
        return zs, ctx, self.logdet.to(x).expand(len(x))

    def finish(self, c: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The field after the last stage -> ``(x, rest)``."""
        return c, self.logdet.to(c).expand(len(c))

    def decode(self, zs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse of :meth:`encode`: ``(x, rest)``."""
        c = None
        for s, z in enumerate(zs):
            c = self.absorb(s, c, z)
        return self.finish(c)
