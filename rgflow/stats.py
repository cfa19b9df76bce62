r"""Statistics as records: every Monte Carlo estimate carries its error (and, for chains, tau_int).

* :class:`Estimate` -- ``mean``, ``error``, optional ``tau_int`` (with its error) and ``n``;
  printed in the compact form ``0.6229(46)``.
* :func:`jackknife` -- binned jackknife for derived quantities ``f(<a>, <b>, ...)`` of
  (optionally importance-weighted) primary observables.
* :func:`gamma_method` -- Wolff's Gamma-method (UWerr) for Markov chains: autocovariances
  pooled over all chains around the global mean, automatic window with the parameter ``S``,
  bias-corrected ``tau_int`` with its error, derived quantities by linearised error propagation,
  and a ``reliable`` flag for chains too short to resolve ``tau_int`` (see :class:`GammaResult`).
* :func:`tau_int` -- the Gamma-method's ``tau_int`` of one series (or several chains).
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
    "Estimate", "GammaResult", "format_value_error", "jackknife", "gamma_method", "tau_int", "autocorrelation",
    "log_mean_exp", "effective_sample_size", "pareto_khat", "KHAT_RELIABLE", "MIN_LENGTH_IN_TAU",
]

#: Above this Pareto shape importance-sampling estimates are unreliable (Vehtari et al. 2024).
KHAT_RELIABLE = 0.7
#: A chain shorter than this many ``tau_int`` cannot resolve its own autocorrelation: such
#: estimates are flagged ``reliable=False`` (Wolff 2004 asks for ``N >> tau``; we use 50 tau).
MIN_LENGTH_IN_TAU = 50.0


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
    """A Monte Carlo estimate: ``mean +- error``; ``tau_int`` in units of samples when known.

    ``reliable`` is False when the chains were too short to resolve ``tau_int`` (then the error
    may be underestimated, see :func:`gamma_method`).
    """

    mean: float
    error: float
    n: int = 0
    tau_int: float | None = None
    tau_int_error: float | None = None
    reliable: bool = True

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
    """Normalised autocorrelation ``rho(t)``, ``t = 0..n-1`` of one series or of several chains
    ``[R, n]`` (pooled around the global mean, as in :func:`gamma_method`)."""
    gamma = _pooled_autocovariance(np.atleast_2d(np.asarray(x, np.float64)), None)
    return gamma / gamma[0] if gamma[0] > 0 else np.zeros_like(gamma)


def _pooled_autocovariance(deltas: np.ndarray, w_max: int | None) -> np.ndarray:
    r"""``Gamma(t) = sum_r sum_i d_{r,i} d_{r,i+t} / sum_r (n - t)`` for ``t < w_max`` (FFT per chain)."""
    R, n = deltas.shape
    w_max = n if w_max is None else min(w_max, n)
    pad = 2 * n
    power = np.abs(np.fft.rfft(deltas, pad, axis=1)) ** 2
    gamma = np.fft.irfft(power, pad, axis=1)[:, :w_max].sum(0)
    return gamma / (R * (n - np.arange(w_max)))


@dataclass(frozen=True)
class GammaResult:
    """Outcome of :func:`gamma_method` for one (primary or derived) quantity.

    ``value`` is ``F`` at the global means; ``error = sqrt(2 tau_int Gamma(0) / N)``;
    ``tau_int`` (bias-corrected) and ``tau_int_error`` in chain steps; ``window`` the summation
    window ``W``; ``n`` all samples, ``n_per_chain`` their length; ``reliable`` is False when the
    window search hit its limit or ``n_per_chain < MIN_LENGTH_IN_TAU * tau_int``; ``rho`` the
    normalised autocorrelation up to the window.
    """

    value: float
    error: float
    tau_int: float
    tau_int_error: float
    window: int
    n: int
    n_per_chain: int
    reliable: bool
    rho: np.ndarray

    def estimate(self) -> Estimate:
        return Estimate(self.value, self.error, self.n, self.tau_int, self.tau_int_error, self.reliable)


def _derivatives(f: Callable[[Mapping[str, float]], float], means: dict, steps: dict) -> dict:
    """Central finite differences of ``f`` at ``means`` with per-primary ``steps``."""
    grad = {}
    for k, h in steps.items():
        if h == 0:
            grad[k] = 0.0
            continue
        up, down = dict(means), dict(means)
        up[k], down[k] = means[k] + h, means[k] - h
        grad[k] = (f(up) - f(down)) / (2 * h)
    return grad


def gamma_method(
    primaries: Mapping[str, np.ndarray] | np.ndarray,
    derived: Callable[[Mapping[str, float]], float] | None = None,
    S: float = 2.0,
) -> GammaResult:
    r"""Wolff's Gamma-method (U. Wolff, Comput. Phys. Commun. 156, 143 (2004); UWerr).

    Args:
        primaries: name -> chains ``[R, n]`` (or ``[n]``, one chain) of primary observables, or a
            single array (then ``derived`` must be None: the quantity is its mean).
        derived: ``F({name: mean})``; default: the mean of the only primary. Its error follows
            by linearised propagation: the chains are projected on ``dF/da_alpha`` (central
            differences with steps ``sqrt(Gamma_aa(0) / N) / 4``) before the analysis.
        S: Wolff's window parameter, ``tau / tau_int`` assumed for the slowest mode (default 2).

    With ``delta_{r,i} = sum_alpha dF/da_alpha (a_alpha(r, i) - abar_alpha)`` around the
    **global** means (pooled over chains, so slow modes that differ between short chains count),
    ``Gamma(t) = sum_{r,i} delta_{r,i} delta_{r,i+t} / sum_r (n - t)``,
    ``tau(W) = 1/2 + sum_{t=1}^W Gamma(t)/Gamma(0)``; ``W`` is the first window with
    ``exp(-W/tau_W) - tau_W / sqrt(W N) < 0``, ``tau_W = S / ln((2 tau(W) + 1)/(2 tau(W) - 1))``.
    Then ``tau_int = tau(W) (1 + (2W + 1)/N) / (1 + 1/N)`` (bias correction, Wolff eq. 49),
    ``error = sqrt(2 tau_int Gamma(0) (1 + 1/N) / N)`` and
    ``tau_int_error = 2 tau(W) sqrt((W + 1/2 - tau(W)) / N)`` (eq. 42).
    """
    if isinstance(primaries, np.ndarray) or not isinstance(primaries, Mapping):
        if derived is not None:
            raise ValueError("derived needs primaries given as a mapping name -> chains")
        primaries = {"x": primaries}
        derived = _the_mean("x")
    elif derived is None:
        if len(primaries) != 1:
            raise ValueError("derived is required when there is more than one primary")
        derived = _the_mean(next(iter(primaries)))
    data = {k: np.atleast_2d(np.asarray(v, np.float64)) for k, v in primaries.items()}
    shapes = {v.shape for v in data.values()}
    if len(shapes) != 1:
        raise ValueError(f"all primaries must have the same shape [chains, n], got {sorted(shapes)}")
    R, n = shapes.pop()
    N = R * n
    if n < 4:
        raise ValueError(f"the Gamma-method needs chains of at least 4 samples, got {n}")
    means = {k: float(v.mean()) for k, v in data.items()}
    steps = {k: math.sqrt(float(((v - means[k]) ** 2).mean()) / N) / 4 for k, v in data.items()}
    value = float(derived(means))
    grad = _derivatives(derived, means, steps)
    if not math.isfinite(value) or not all(math.isfinite(g) for g in grad.values()):
        return GammaResult(value, math.nan, math.nan, math.nan, 0, N, n, False, np.ones(1))
    deltas = sum(g * (data[k] - means[k]) for k, g in grad.items() if g != 0)
    if isinstance(deltas, int) or not np.any(deltas):  # F does not depend on the data
        return GammaResult(value, 0.0, 0.5, 0.0, 0, N, n, True, np.ones(1))
    w_max = max(n // 2, 2)
    gamma = _pooled_autocovariance(deltas, w_max)
    if gamma[0] <= 0:
        return GammaResult(value, 0.0, 0.5, 0.0, 0, N, n, True, np.ones(1))
    rho = gamma / gamma[0]
    taus = np.maximum(0.5 + np.cumsum(np.concatenate(([0.0], rho[1:]))), 0.5 + np.finfo(float).eps)
    W_all = np.arange(1, w_max)
    tau_w = S / np.log((2 * taus[1:] + 1) / (2 * taus[1:] - 1))
    g_w = np.exp(-W_all / tau_w) - tau_w / np.sqrt(W_all * N)
    below = np.nonzero(g_w < 0)[0]
    found = len(below) > 0
    W = int(W_all[below[0]]) if found else w_max - 1
    tau_raw = float(taus[W])
    tau = tau_raw * (1 + (2 * W + 1) / N) / (1 + 1 / N)
    dtau = 2 * tau_raw * math.sqrt(max(W + 0.5 - tau_raw, 0.0) / N)
    error = math.sqrt(2 * tau * gamma[0] * (1 + 1 / N) / N)
    reliable = found and n >= MIN_LENGTH_IN_TAU * tau
    return GammaResult(value, error, tau, dtau, W, N, n, bool(reliable), rho[: W + 1])


def _the_mean(name: str) -> Callable[[Mapping[str, float]], float]:
    return lambda a: a[name]


def tau_int(x: np.ndarray, S: float = 2.0) -> tuple[float, float, np.ndarray]:
    r"""``(tau_int, its error, rho up to the window)`` of one series ``[n]`` or chains ``[R, n]``
    by :func:`gamma_method`. ``tau = 1/2`` for independent samples; the error of the mean is
    ``sqrt(2 tau var / N)``.
    """
    res = gamma_method(np.asarray(x, np.float64), S=S)
    return res.tau_int, res.tau_int_error, res.rho


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
