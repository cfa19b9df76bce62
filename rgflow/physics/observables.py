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
``binder`` ``1 - <|m|^4> / ((1 + 2/C) <|m|^2>^2)``  Binder cumulant ``U_4`` (0 for Gaussian ``m``)
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
from dataclasses import dataclass

from rgflow.stats import Estimate, gamma_method, jackknife

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
    "ChainEstimates",
    "derived_observables",
    "OBSERVABLE_NAMES",
    "THERMALIZATION_PRIMARIES",
]

OBSERVABLE_NAMES = ("m", "abs_m", "chi", "chi_c", "binder", "e_link", "xi2")
#: Primaries whose early and late chain segments must agree for a chain to count as thermalised.
THERMALIZATION_PRIMARIES = ("abs_m", "m2", "e_link")


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
        values = {
            "m1": m[:, 0],
            "abs_m": m2.sqrt(),
            "m2": m2,
            "m4": m2**2,
            "e_link": link_energy(phi),
            "g0": power[:, 0, 0],
            "gp": 0.5 * (power[:, 1, 0] + power[:, 0, 1]),
        }
        # copies: a numpy view of a slice would keep the whole [B, L, L] power spectrum alive for as
        # long as a chain's series is (at L = 64 that was 0.5 MB per recorded step)
        return {k: v.cpu().numpy().copy() for k, v in values.items()}


def derived_observables(L: int, channels: int = 1) -> dict:
    """name -> ``F(means of the primaries)`` for every name of :data:`OBSERVABLE_NAMES`.

    The Binder cumulant of a ``C``-component field is ``1 - <|m|^4> / ((1 + 2/C) <|m|^2>^2)``,
    normalised to vanish for a Gaussian ``m`` (factor 3 for one component, 2 for two).
    """
    V = L * L
    s = 2 * math.sin(math.pi / L)
    gauss = 1.0 + 2.0 / channels
    return {
        "m": lambda a: a["m1"],
        "abs_m": lambda a: a["abs_m"],
        "chi": lambda a: V * a["m2"],
        "chi_c": lambda a: V * (a["m2"] - a["abs_m"] ** 2),
        "binder": lambda a: 1.0 - a["m4"] / (gauss * a["m2"] ** 2),
        "e_link": lambda a: a["e_link"],
        "xi2": lambda a: math.sqrt(max(a["g0"] / a["gp"] - 1.0, 0.0)) / s if a["gp"] > 0 else math.nan,
    }


def estimate_observables(
    phi: torch.Tensor | dict[str, np.ndarray],
    log_w: np.ndarray | None = None,
    n_bins: int = 64,
    channels: int | None = None,
) -> dict[str, Estimate]:
    """Estimates of :data:`OBSERVABLE_NAMES` from independent samples, with jackknife errors.

    Args:
        phi: configurations ``[N, C, L, L]`` or their :func:`primaries` plus the key ``"L"``.
        log_w: optional log importance weights ``[N]`` (self-normalised reweighting).
        n_bins: jackknife bins (for Markov chains use :func:`chain_observables` instead).
        channels: field components ``C`` (read from ``phi`` when it is a tensor; default 1).
    """
    if isinstance(phi, torch.Tensor):
        L, C, p = phi.shape[-1], phi.shape[1], primaries(phi)
    else:
        L, C, p = int(phi["L"]), channels or 1, {k: v for k, v in phi.items() if k != "L"}
    return {name: jackknife(p, fn, log_w=log_w, n_bins=n_bins) for name, fn in derived_observables(L, C).items()}


@dataclass
class ChainEstimates:
    """Observables of Markov chains by the Gamma-method (:func:`rgflow.stats.gamma_method`).

    ``observables``: name -> :class:`Estimate` (with ``tau_int``, its error and ``reliable``);
    ``n_samples`` recorded samples (all chains), ``n_discarded`` leading samples dropped per
    chain as thermalisation (reported, never silent), ``n_used = chains * (n - n_discarded)``;
    ``thermalized``: the first quarter and the last half of the used part agree within
    ``3 sigma`` for every primary in :data:`THERMALIZATION_PRIMARIES` (``thermalization_z``
    holds the largest deviation in units of the combined error).
    """

    observables: dict[str, Estimate]
    chains: int
    n_samples: int
    n_discarded: int
    n_used: int
    thermalized: bool
    thermalization_z: float

    @property
    def tau_int(self) -> dict[str, Estimate]:
        """name -> ``tau_int`` as an :class:`Estimate` (value, error) in chain steps."""
        return {k: Estimate(e.tau_int, e.tau_int_error, e.n, reliable=e.reliable) for k, e in self.observables.items()}

    @property
    def reliable(self) -> dict[str, bool]:
        return {k: e.reliable for k, e in self.observables.items()}


def chain_observables(
    series: dict[str, np.ndarray], L: int, channels: int = 1, discard: int | str = "auto", S: float = 2.0
) -> ChainEstimates:
    """Estimates from Markov chains with Gamma-method errors and ``tau_int`` for every observable.

    Args:
        series: primaries as ``name -> [chains, n]`` (or ``[n]`` for one chain).
        L: lattice side; channels: field components ``C``.
        discard: leading samples dropped from every chain as thermalisation: an int, or
            ``"auto"`` = ``min(ceil(10 tau_max), n // 4)`` with ``tau_max`` the largest
            ``tau_int`` of the observables over the whole series.
        S: the Gamma-method's window parameter.

    All remaining samples of all chains enter every estimate (no binning, nothing dropped).
    """
    series = {k: np.atleast_2d(np.asarray(v, np.float64)) for k, v in series.items()}
    chains, n = next(iter(series.values())).shape
    derived = derived_observables(L, channels)
    if discard == "auto":
        taus = [gamma_method(series, fn, S).tau_int for fn in derived.values()]
        tau_max = max((t for t in taus if math.isfinite(t)), default=0.5)
        discard = min(int(math.ceil(10 * tau_max)), n // 4)
    if not isinstance(discard, int) or not 0 <= discard <= n - 4:
        raise ValueError(f"discard must be 'auto' or an integer in [0, {n - 4}] (chains of {n}), got {discard!r}")
    used = {k: v[:, discard:] for k, v in series.items()}
    est = {name: gamma_method(used, fn, S).estimate() for name, fn in derived.items()}
    z = _thermalization_z(used, S)
    return ChainEstimates(est, chains, chains * n, discard, chains * (n - discard), z < 3.0, z)


def _thermalization_z(used: dict[str, np.ndarray], S: float) -> float:
    """Largest ``|mean(first quarter) - mean(last half)| / combined error`` over the primaries."""
    n = next(iter(used.values())).shape[1]
    q = n // 4
    if q < 4:
        return 0.0
    zs = []
    for k in THERMALIZATION_PRIMARIES:
        if k not in used:
            continue
        early, late = gamma_method(used[k][:, :q], S=S), gamma_method(used[k][:, n - 2 * q:], S=S)
        err = math.hypot(early.error, late.error)
        if err > 0:
            zs.append(abs(early.value - late.value) / err)
    return max(zs, default=0.0)
