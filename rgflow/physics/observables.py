r"""Observables: per-configuration primaries and ensemble estimates with errors.

With ``m = V^{-1} sum_x phi(x)`` (a vector over channels for the complex field, ``|m|`` its
modulus) every JSON output of rgflow uses these names:

=========  ======================================  ===========================================
name       definition                              note
=========  ======================================  ===========================================
``m``      ``<m_1>``                               first component
``abs_m``  ``<|m|>``
``chi``    ``V <|m|^2>``
``chi_c``  ``V (<|m|^2> - <|m|>^2)``               connected
``binder`` ``1 - <|m|^4> / (3 <|m|^2>^2)``         Binder cumulant ``U_4``
``e_link`` ``<phi(x) . phi(x+mu)>``                averaged over ``x`` and ``mu``
``xi2``    ``sqrt(G~(0)/G~(p) - 1) / (2 sin(pi/L))``  second-moment length, ``p = 2 pi / L``
=========  ======================================  ===========================================

For the Ising relaxation the same names are used for the spins ``s = +-1`` drawn from
``P(s | x)`` (:func:`ising_spins`).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from rgflow.physics.fields import check_field
from rgflow.stats import Estimate, jackknife, tau_int

__all__ = [
    "magnetization",
    "abs_magnetization",
    "link_energy",
    "two_point",
    "time_slice_correlator",
    "second_moment_xi",
    "ising_spins",
    "primaries",
    "estimate_observables",
    "chain_observables",
    "OBSERVABLE_NAMES",
    "PRIMARY_OF",
]

OBSERVABLE_NAMES = ("m", "abs_m", "chi", "chi_c", "binder", "e_link", "xi2")
#: The primary whose autocorrelation time is reported for an observable name.
PRIMARY_OF = {"m": "m1", "abs_m": "abs_m", "chi": "m2", "e_link": "e_link"}


def magnetization(phi: torch.Tensor) -> torch.Tensor:
    """``m_c = V^{-1} sum_x phi_c(x)``: ``[B, C, L, L] -> [B, C]``."""
    check_field(phi)
    return phi.mean(dim=(-2, -1))


def abs_magnetization(phi: torch.Tensor) -> torch.Tensor:
    """``|m|`` (modulus over channels): ``[B, C, L, L] -> [B]``."""
    return magnetization(phi).norm(dim=1)


def link_energy(phi: torch.Tensor) -> torch.Tensor:
    """``(2V)^{-1} sum_x sum_mu phi(x) . phi(x + mu)``: ``[B, C, L, L] -> [B]``."""
    check_field(phi)
    return sum((phi * torch.roll(phi, -1, d)).sum(1).mean(dim=(-2, -1)) for d in (-2, -1)) / 2


def two_point(phi: torch.Tensor) -> torch.Tensor:
    """Per-configuration ``G(x) = V^{-1} sum_y phi(y) . phi(y + x)`` (FFT): ``[B, C, L, L] -> [B, L, L]``.

    Average over the batch for the (disconnected) two-point function.
    """
    check_field(phi)
    V = phi.shape[-1] * phi.shape[-2]
    ph = torch.fft.fft2(phi)
    return torch.fft.ifft2((ph.real**2 + ph.imag**2).sum(1)).real / V


def time_slice_correlator(G: torch.Tensor) -> torch.Tensor:
    """``C(t) = sum_x1 G(t, x1)`` from a two-point function ``[..., L, L] -> [..., L]``."""
    return G.sum(-1)


def second_moment_xi(G: torch.Tensor) -> float:
    r"""Second-moment correlation length from an averaged ``G(x): [L, L]``:

    ``xi_2 = sqrt(G~(0) / G~(p_min) - 1) / (2 sin(pi / L))``, ``G~(p) = sum_x G(x) cos(p x_0)``,
    with ``p_min = 2 pi / L`` averaged over both axes.
    """
    L = G.shape[-1]
    Gh = torch.fft.fft2(G).real
    g0, gp = float(Gh[0, 0]), float(0.5 * (Gh[1, 0] + Gh[0, 1]))
    return math.sqrt(max(g0 / gp - 1.0, 0.0)) / (2 * math.sin(math.pi / L))


def ising_spins(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Exact conditional spins of the HS relaxation: ``P(s = +1 | x) = e^{x} / (2 cosh x)``."""
    check_field(x, name="x", channels=1)
    u = torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    return torch.where(u < torch.sigmoid(2 * x), 1.0, -1.0).to(x.dtype)


def primaries(phi: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-configuration primary observables (float64 numpy ``[B]``) from which all names derive."""
    check_field(phi)
    with torch.no_grad():
        phi = phi.double()
        L = phi.shape[-1]
        V = L * L
        m = magnetization(phi)
        m2 = (m**2).sum(1)
        ph = torch.fft.fft2(phi)
        power = (ph.real**2 + ph.imag**2).sum(1) / V  # [B, L, L]
        return {
            "m1": m[:, 0].cpu().numpy(),
            "abs_m": m2.sqrt().cpu().numpy(),
            "m2": m2.cpu().numpy(),
            "m4": (m2**2).cpu().numpy(),
            "e_link": link_energy(phi).cpu().numpy(),
            "g0": power[:, 0, 0].cpu().numpy(),
            "gp": (0.5 * (power[:, 1, 0] + power[:, 0, 1])).cpu().numpy(),
        }


def estimate_observables(
    phi: torch.Tensor | dict[str, np.ndarray],
    log_w: np.ndarray | None = None,
    n_bins: int = 64,
) -> dict[str, Estimate]:
    """Estimates of :data:`OBSERVABLE_NAMES` with jackknife errors.

    Args:
        phi: configurations ``[N, C, L, L]`` or their :func:`primaries` (with key ``"L"`` absent
            the lattice side is read from ``phi``).
        log_w: optional log importance weights ``[N]`` (self-normalised reweighting).
        n_bins: jackknife bins; for a Markov chain use bins much longer than tau_int.
    """
    L = phi.shape[-1] if isinstance(phi, torch.Tensor) else int(phi["L"])
    p = primaries(phi) if isinstance(phi, torch.Tensor) else {k: v for k, v in phi.items() if k != "L"}
    V = L * L
    s = 2 * math.sin(math.pi / L)
    derived = {
        "m": lambda a: a["m1"],
        "abs_m": lambda a: a["abs_m"],
        "chi": lambda a: V * a["m2"],
        "chi_c": lambda a: V * (a["m2"] - a["abs_m"] ** 2),
        "binder": lambda a: 1.0 - a["m4"] / (3.0 * a["m2"] ** 2),
        "e_link": lambda a: a["e_link"],
        "xi2": lambda a: math.sqrt(max(a["g0"] / a["gp"] - 1.0, 0.0)) / s if a["gp"] > 0 else math.nan,
    }
    return {name: jackknife(p, fn, log_w=log_w, n_bins=n_bins) for name, fn in derived.items()}


def chain_observables(
    series: dict[str, np.ndarray], L: int, bin_factor: float = 10.0
) -> tuple[dict[str, Estimate], dict[str, Estimate]]:
    """Estimates from Markov chains, with errors corrected for autocorrelation.

    Args:
        series: primaries as ``name -> [chains, n]`` (or ``[n]`` for one chain).
        L: lattice side.
        bin_factor: jackknife bins are at least ``bin_factor * tau_int`` samples long (and never
            cross from one chain into the next).

    Returns:
        ``(observables, tau_int)``: name -> :class:`Estimate`, and for :data:`PRIMARY_OF` names
        the integrated autocorrelation time (in chain steps, averaged over chains) with its error.
    """
    series = {k: np.atleast_2d(np.asarray(v, np.float64)) for k, v in series.items()}
    chains, n = next(iter(series.values())).shape
    taus = {}
    for name, prim in PRIMARY_OF.items():
        vals = np.array([tau_int(series[prim][c])[:2] for c in range(chains)])
        taus[name] = Estimate(float(vals[:, 0].mean()), float(np.sqrt((vals[:, 1] ** 2).sum()) / chains), n=chains * n)
    tau_max = max(t.mean for t in taus.values())
    bin_len = max(1, int(np.ceil(bin_factor * tau_max)))
    per_chain = max(1, n // bin_len)
    n_used = per_chain * bin_len
    flat = {k: v[:, n - n_used :].reshape(-1) for k, v in series.items()}
    flat["L"] = L
    est = estimate_observables(flat, n_bins=max(2, chains * per_chain))
    est = {
        k: Estimate(e.mean, e.error, e.n, taus[k].mean if k in taus else None, taus[k].error if k in taus else None)
        for k, e in est.items()
    }
    return est, taus
