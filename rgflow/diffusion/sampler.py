r"""Reverse-time samplers in EDM variables, one noise level per RG level; every network call counted.

Time grid ``t_i = 1 - i/N`` (uniform in every level's log-SNR), per-site noise
``sigma_i = sigma_e(level, t_i)`` and ``sigma_N = 0``. Start: ``y(1) ~ N(0, 1)`` (the VP
marginal of unit-scale data), ``v = y / alpha(1)``.

* ``"ode"`` -- Heun's method for the probability-flow ODE ``dv/dsigma = (v - D(v)) / sigma``
  (Karras et al. 2022, Algorithm 1): ``NFE = 2N - 1`` (the last step, to ``sigma = 0``, is Euler).
* ``"sde"`` -- Euler-Maruyama for the reverse SDE, ``v <- v + (sigma_i^2 - sigma_{i+1}^2) s(v)
  + sqrt(sigma_i^2 - sigma_{i+1}^2) z`` with the score ``s = (D(v) - v) / sigma^2``: ``NFE = N``.

Sites whose level is not being noised at ``t_i`` (clipped log-SNR) have ``sigma_{i+1} = sigma_i``
and do not move: with the RG schedule the coarse levels are generated first.
"""
from __future__ import annotations

import torch

__all__ = ["sample_coords", "sample_fields", "steps_for_nfe", "time_grid", "heun_step", "GaussianDenoiser",
           "SAMPLER_KINDS"]

SAMPLER_KINDS = ("ode", "sde")


def steps_for_nfe(nfe: int, kind: str) -> int:
    """The number of steps ``N`` whose cost is at most ``nfe`` network evaluations."""
    if kind not in SAMPLER_KINDS:
        raise ValueError(f"--sampler {kind!r} is not allowed; allowed: {', '.join(SAMPLER_KINDS)}")
    if not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"--nfe must be a positive integer, got {nfe!r}")
    return (nfe + 1) // 2 if kind == "ode" else nfe


def time_grid(schedule, coords, N: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(t [N + 1], sigma [N + 1, n_levels] with sigma_N = 0, alpha(1) [1, n_levels])`` in the
    coordinates' dtype and device."""
    ref = coords.scale
    ts = torch.linspace(1.0, 0.0, N + 1, dtype=ref.dtype, device=ref.device)
    sig = schedule.sigma(ts)
    sig[-1] = 0.0
    return ts, sig, schedule.alpha_sigma(ts[:1])[0]


def heun_step(denoiser, coords, v: torch.Tensor, s_i: torch.Tensor, s_next: torch.Tensor, last: bool) -> torch.Tensor:
    """One deterministic PF-ODE step ``v(sigma_i) -> v(sigma_{i+1})`` (Heun; Euler when ``last``).
    ``s_i, s_next``: per-level noise ``[B, n_levels]``. A pure function of ``v``: the exact sampler
    differentiates it."""
    m_i, m_next = coords.sigma_map(s_i), coords.sigma_map(s_next)
    d = (v - denoiser(v, s_i)) / m_i
    v_next = v + (m_next - m_i) * d
    if last:
        return v_next
    d2 = (v_next - denoiser(v_next, s_next)) / m_next
    return v + (m_next - m_i) * (d + d2) / 2


@torch.no_grad()
def sample_coords(denoiser, schedule, coords, n: int, nfe: int, kind: str = "ode",
                  generator: torch.Generator | None = None, snapshots: int = 0):
    """Draw ``n`` samples of the diffused scaled RG coordinates ``w`` with at most ``nfe`` evaluations.

    Args:
        denoiser: callable ``D(v [B, *coords.shape], sigma_levels [B, n_levels]) -> v.shape``.
        schedule: an :class:`~rgflow.diffusion.schedule.RGSchedule`; coords: the
            :class:`~rgflow.diffusion.coords.RGCoordinates` (level map, shape, dtype, device).
        snapshots: keep this many intermediate ``v`` (evenly spaced in steps) for figures.

    Returns:
        ``(w [n, *coords.shape], nfe_used, [(t, v), ...])``.
    """
    N = steps_for_nfe(nfe, kind)
    ts, sig, alpha1 = time_grid(schedule, coords, N)
    ref = coords.scale
    y1 = torch.randn(n, *coords.shape, dtype=ref.dtype, device=ref.device, generator=generator)
    v = y1 / coords.sigma_map(alpha1)
    used, keep = 0, []
    every = max(N // snapshots, 1) if snapshots else 0
    for i in range(N):
        s_i, s_next = sig[i].expand(n, -1), sig[i + 1].expand(n, -1)
        if kind == "sde":
            m_i, m_next = coords.sigma_map(s_i), coords.sigma_map(s_next)
            D = denoiser(v, s_i)
            var = (m_i**2 - m_next**2).clamp_min(0)
            v = v + var * (D - v) / m_i**2
            if i < N - 1:
                v = v + var.sqrt() * torch.randn(v.shape, dtype=v.dtype, device=v.device, generator=generator)
            used += 1
        else:
            v = heun_step(denoiser, coords, v, s_i, s_next, last=i == N - 1)
            used += 1 if i == N - 1 else 2
        if every and (i + 1) % every == 0:
            keep.append((float(ts[i + 1]), v.clone()))
    return v, used, keep


@torch.no_grad()
def sample_fields(model, n: int, nfe: int, kind: str = "ode", generator: torch.Generator | None = None,
                  batch_size: int = 1024) -> tuple[torch.Tensor, int]:
    """``n`` lattice fields ``x = R^{-1}(s y)`` from a :class:`~rgflow.diffusion.train.DiffusionModel`
    (in batches); returns ``(x [n, C, L, L], NFE per sample)``."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"-n (number of samples) must be a positive integer, got {n!r}")
    xs, used = [], 0
    for start in range(0, n, batch_size):
        w, used, _ = sample_coords(model.denoiser, model.schedule, model.coords, min(batch_size, n - start), nfe, kind,
                                   generator)
        xs.append(model.coords.decode(w, generator)[0])
    return torch.cat(xs), used


class GaussianDenoiser:
    r"""The exact denoiser of Gaussian data ``y ~ N(0, Sigma)`` (``Sigma`` over the flattened
    ``C L L`` coordinates): ``D(v) = Sigma (Sigma + diag(sigma^2))^{-1} v``. With it, the samplers
    are tested against exact answers (Gaussian free field)."""

    def __init__(self, cov: torch.Tensor, coords):
        self.cov, self.coords = cov, coords

    def __call__(self, v: torch.Tensor, sigma_levels: torch.Tensor) -> torch.Tensor:
        sigma = self.coords.sigma_map(sigma_levels[:1]).expand(1, *self.coords.shape).reshape(-1)
        A = self.cov + torch.diag(sigma**2)
        return (self.cov @ torch.linalg.solve(A, v.reshape(len(v), -1).T)).T.reshape(v.shape)
