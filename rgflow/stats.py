r"""Statistics as records: every Monte Carlo estimate carries its error (and, for chains, tau_int).

* :class:`Estimate` -- ``mean``, ``error``, optional ``tau_int`` (with its error) and ``n``;
  printed in the compact form ``0.6229(46)``.
* :func:`jackknife` -- binned jackknife for derived quantities ``f(<a>, <b>, ...)`` of
  (optionally importance-weighted) primary observables.
* :func:`tau_int` -- integrated autocorrelation time with Madras-Sokal / Wolff automatic
  windowing, ``tau = 1/2 + sum_{t=1}^W rho(t)`` with the smallest ``W >= c tau(W)``.
* :func:`log_mean_exp`, :func:`effective_sample_size` -- importance-weight summaries.
* :func:`pareto_khat` -- reliability of importance weights: the shape ``k`` of a generalised
  Pareto fit to the largest weights (Vehtari et al., *Pareto smoothed importance sampling*).
  For ``k > 0.7`` the weights' variance is effectively infinite and neither ``ln Z`` nor its
  delta-method error can be trusted, however large the ESS looks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

__all__ = [
    "Estimate", "format_value_error", "jackknife", "tau_int", "autocorrelation", "log_mean_exp", "effective_sample_size",
    "pareto_khat",
    "KHAT_RELIABLE",
]

#: Above this Pareto shape importance-sampling estimates are unreliable (Vehtari et al. 2024).
KHAT_RELIABLE = 0.7


def format_value_error(mean: float, error: float, digits: int = 2) -> str:
    """Format as ``1.234(56)``: the error's leading ``digits`` digits in parentheses."""
    if not math.isfinite(mean):
        return str(mean)
    if not math.isfinite(error) or error <= 0:
        return f"{mean:.6g}(0)" if error == 0 else f"{mean:.6g}(?)"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(error))))
    err_digits = int(round(error * 10**decimals))
    if err_digits >= 10**digits:  # rounding carried a digit: 0.0995 -> 0.10
        decimals = max(0, decimals - 1)
        err_digits = int(round(error * 10**decimals))
    if decimals == 0:
        return f"{mean:.0f}({err_digits})"
    return f"{mean:.{decimals}f}({err_digits})"


@dataclass(frozen=True)
class Estimate:
    """A Monte Carlo estimate: ``mean +- error``; ``tau_int`` in units of samples when known."""

    mean: float
    error: float
    n: int = 0
    tau_int: float | None = None
    tau_int_error: float | None = None

    def __str__(self) -> str:
        return format_value_error(self.mean, self.error)

    def to_list(self) -> list[float]:
        """``[value, error]``, the form every JSON output of rgflow uses."""
        return [float(self.mean), float(self.error)]


def log_mean_exp(log_w: np.ndarray) -> float:
    """``ln( N^-1 sum_i exp(log_w_i) )`` without overflow."""
    log_w = np.asarray(log_w, dtype=np.float64)
    top = log_w.max()
    return float(top + np.log(np.mean(np.exp(log_w - top))))


def effective_sample_size(log_w: np.ndarray) -> float:
    """Normalised ESS ``(sum w)^2 / (N sum w^2)`` in ``(0, 1]`` (Kish), from log weights."""
    log_w = np.asarray(log_w, dtype=np.float64)
    w = np.exp(log_w - log_w.max())
    return float(w.sum() ** 2 / (len(w) * (w**2).sum()))


def jackknife(
    primaries: Mapping[str, np.ndarray],
    derived: Callable[[Mapping[str, float]], float],
    log_w: np.ndarray | None = None,
    n_bins: int = 64,
) -> Estimate:
    r"""Binned jackknife estimate of ``derived({name: <primary>})``.

    Args:
        primaries: name -> per-sample values ``[N]`` (e.g. ``m2``, ``m4``).
        derived: function of the (weighted) means, e.g. ``lambda a: 1 - a["m4"] / (3 a["m2"]**2)``.
        log_w: optional log importance weights ``[N]``; means are then self-normalised,
            ``<a> = sum w a / sum w``, and the jackknife also propagates the weights' noise.
        n_bins: number of contiguous bins (for a correlated chain choose bins >> tau_int).

    Returns:
        :class:`Estimate` with the full-sample value and the jackknife error.
    """
    names = list(primaries)
    data = np.stack([np.asarray(primaries[k], dtype=np.float64) for k in names])  # [P, N]
    N = data.shape[1]
    if N < 2:
        raise ValueError(f"jackknife needs at least 2 samples, got {N}")
    w = np.ones(N) if log_w is None else np.exp(np.asarray(log_w, np.float64) - np.max(log_w))
    n_bins = max(2, min(n_bins, N))
    edges = np.linspace(0, N, n_bins + 1).astype(int)
    wsum = np.add.reduceat(w, edges[:-1])
    wxsum = np.add.reduceat(data * w, edges[:-1], axis=1)
    full = derived(dict(zip(names, wxsum.sum(1) / wsum.sum())))
    loo_w = wsum.sum() - wsum
    loo = (wxsum.sum(1, keepdims=True) - wxsum) / np.where(loo_w > 0, loo_w, np.nan)
    thetas = np.array([derived(dict(zip(names, loo[:, b]))) for b in range(n_bins)])
    if not (math.isfinite(full) and np.isfinite(thetas).all()):
        return Estimate(float(full), math.nan, n=N)
    err = math.sqrt((n_bins - 1) / n_bins * np.sum((thetas - thetas.mean()) ** 2))
    return Estimate(float(full), err, n=N)


def autocorrelation(x: np.ndarray) -> np.ndarray:
    """Normalised autocorrelation ``rho(t)``, ``t = 0..N-1`` (FFT, zero-padded)."""
    x = np.asarray(x, np.float64) - np.mean(x)
    n = len(x)
    f = np.fft.rfft(x, 2 * n)
    acf = np.fft.irfft(f * np.conj(f))[:n] / np.arange(n, 0, -1)
    return acf / acf[0] if acf[0] > 0 else np.zeros(n)


def tau_int(x: np.ndarray, c: float = 6.0) -> tuple[float, float, np.ndarray]:
    r"""Integrated autocorrelation time with automatic windowing (Madras & Sokal 1988).

    ``tau(W) = 1/2 + sum_{t=1}^{W} rho(t)``; ``W`` is the smallest window with ``W >= c tau(W)``.
    Error ``sigma_tau = tau sqrt(2 (2W + 1) / N)``. With this convention ``tau = 1/2`` for
    independent samples and the error of the mean is ``sqrt(2 tau var / N)``.

    Returns:
        ``(tau, tau_error, rho)`` with ``rho`` the autocorrelation up to ``W``.
    """
    x = np.asarray(x, np.float64)
    n = len(x)
    if n < 4:
        raise ValueError(f"tau_int needs at least 4 samples, got {n}")
    rho = autocorrelation(x)
    if not np.any(rho):
        return 0.5, 0.0, rho[:1]
    taus = 0.5 + np.cumsum(rho[1:])
    windows = np.arange(1, n)
    ok = np.nonzero(windows >= c * taus)[0]
    W = int(windows[ok[0]]) if len(ok) else n - 1
    tau = float(max(taus[W - 1], 0.5))
    return tau, tau * math.sqrt(2 * (2 * W + 1) / n), rho[: W + 1]


def _gpd_shape(y: np.ndarray, prior_n: float = 10.0) -> float:
    """Shape ``k`` of a generalised Pareto fit to exceedances ``y > 0`` (sorted ascending).

    Zhang & Stephens (2009) empirical-Bayes estimate: a profile likelihood over a grid of
    ``theta`` (``k = mean(ln(1 - theta y))``), posterior-weighted, then shrunk towards 0.5 with
    ``prior_n`` pseudo-observations as in PSIS.
    """
    n = len(y)
    m = 30 + int(math.sqrt(n))
    j = np.arange(1, m + 1, dtype=np.float64)
    quartile = y[max(int(n / 4 + 0.5) - 1, 0)]
    theta = 1.0 / y[-1] + (1.0 - np.sqrt(m / (j - 0.5))) / (3.0 * quartile)
    k = np.log1p(-theta[:, None] * y[None, :]).mean(axis=1)
    profile = n * (np.log(-theta / k) - k - 1.0)
    post = np.exp(profile - profile.max())  # softmax: the posterior weights of the theta grid
    post /= post.sum()
    theta_hat = float((theta * post).sum())
    k_hat = float(np.log1p(-theta_hat * y).mean())  # theta < 0 for heavy tails, so k > 0
    return (n * k_hat + prior_n * 0.5) / (n + prior_n)  # shrink towards 0.5 as PSIS does


def pareto_khat(log_w: np.ndarray) -> float:
    """Pareto shape ``k`` of the upper tail of the importance weights ``exp(log_w)``.

    The tail is the largest ``M = ceil(min(N/5, 3 sqrt N))`` weights; ``k < 0.5``: finite
    variance, ``0.5 < k < 0.7``: slow but usable, ``k > 0.7``: unreliable. Returns ``inf`` when
    the tail is degenerate (fewer than 5 distinct tail weights).
    """
    log_w = np.asarray(log_w, dtype=np.float64)
    n = len(log_w)
    M = int(math.ceil(min(0.2 * n, 3 * math.sqrt(n))))
    x = np.sort(log_w - log_w.max())
    cutoff = x[-M - 1]
    tail = np.exp(x[-M:]) - math.exp(cutoff)
    tail = tail[tail > 0]
    if len(tail) < 5:
        return math.inf
    return _gpd_shape(tail)
