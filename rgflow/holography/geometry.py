r"""Bulk geometry: distances between bulk latents and the fits that decide between geometries.

A latent of level ``l`` stored at boundary site ``(x, y)`` sits at height ``h_l = h0 2^l`` above
it. In the upper-half-space model of H^3 the geodesic distance is

``cosh d = 1 + (dx^2 + dy^2 + (h1 - h2)^2) / (2 h1 h2)``

with periodic (minimum-image) ``dx, dy``; the flat alternative treats the level as a Euclidean
coordinate, ``d = sqrt(dx^2 + dy^2 + (c (l1 - l2))^2)``. Both are fitted to
``ln|C| = a - d / xi`` by weighted least squares: for a fixed shape parameter (``h0`` or ``c``)
the model is linear in ``(a, 1/xi)``; the shape parameter is scanned on a log grid and refined,
its error read off ``Delta chi^2 = 1``. The information criterion is AIC ``= chi^2 + 2k``
(``k = 3`` for both), so the geometry with the smaller AIC fits better.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["hyperbolic_distance", "flat_distance", "GeometryFit", "fit_geometry", "GEOMETRIES"]

GEOMETRIES = ("hyperbolic", "flat")


def _periodic(d: np.ndarray, L: int) -> np.ndarray:
    d = np.abs(d) % L
    return np.minimum(d, L - d)


def hyperbolic_distance(p: np.ndarray, q: np.ndarray, L: int, h0: float) -> np.ndarray:
    """H^3 distance between bulk points ``p, q: [..., 3]`` rows ``(level, x, y)`` on an ``L`` torus."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    h1, h2 = h0 * 2.0 ** p[..., 0], h0 * 2.0 ** q[..., 0]
    dx, dy = _periodic(p[..., 1] - q[..., 1], L), _periodic(p[..., 2] - q[..., 2], L)
    arg = 1 + (dx**2 + dy**2 + (h1 - h2) ** 2) / (2 * h1 * h2)
    return np.arccosh(np.maximum(arg, 1.0))


def flat_distance(p: np.ndarray, q: np.ndarray, L: int, c: float) -> np.ndarray:
    """Euclidean distance with the level as a third coordinate of unit ``c``."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    dx, dy = _periodic(p[..., 1] - q[..., 1], L), _periodic(p[..., 2] - q[..., 2], L)
    return np.sqrt(dx**2 + dy**2 + (c * (p[..., 0] - q[..., 0])) ** 2)


@dataclass
class GeometryFit:
    """``ln|C| = a - d(shape) / xi``: parameters with errors, ``chi2``, ``dof``, ``aic``."""

    geometry: str
    shape_name: str
    shape: float
    shape_error: float
    a: float
    a_error: float
    xi: float
    xi_error: float
    chi2: float
    dof: int

    @property
    def aic(self) -> float:
        return self.chi2 + 2 * 3

    def to_dict(self) -> dict:
        return {"params": {self.shape_name: [self.shape, self.shape_error], "a": [self.a, self.a_error],
                           "xi": [self.xi, self.xi_error]},
                "chi2": self.chi2, "dof": self.dof, "chi2_per_dof": self.chi2 / max(self.dof, 1), "aic": self.aic}


def _linear(d: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted LS of ``y = a - b d``: ``(chi2, [a, b], covariance)``."""
    X = np.stack([np.ones_like(d), -d], axis=1)
    A = X.T @ (w[:, None] * X)
    cov = np.linalg.pinv(A)
    beta = cov @ (X.T @ (w * y))
    r = y - X @ beta
    return float((w * r**2).sum()), beta, cov


def fit_geometry(pairs_p: np.ndarray, pairs_q: np.ndarray, log_c: np.ndarray, log_c_err: np.ndarray, L: int,
                 geometry: str = "hyperbolic", grid: np.ndarray | None = None) -> GeometryFit:
    """Fit ``log_c = a - d / xi`` over point pairs ``[n, 3]`` with errors ``log_c_err`` (see module)."""
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry={geometry!r} is not allowed; allowed: {', '.join(GEOMETRIES)}")
    if len(log_c) < 4:
        raise ValueError(f"a geometry fit needs at least 4 correlators, got {len(log_c)}")
    dist = hyperbolic_distance if geometry == "hyperbolic" else flat_distance
    w = 1.0 / np.maximum(np.asarray(log_c_err, float), 1e-12) ** 2
    grid = np.geomspace(0.05, 20.0, 120) if grid is None else grid

    def chi2_at(s: float) -> float:
        return _linear(dist(pairs_p, pairs_q, L, s), log_c, w)[0]

    values = np.array([chi2_at(s) for s in grid])
    k = int(np.argmin(values))
    lo, hi = math.log(grid[max(k - 1, 0)]), math.log(grid[min(k + 1, len(grid) - 1)])
    for _ in range(60):  # golden-section refinement in ln(shape)
        m1, m2 = lo + 0.382 * (hi - lo), lo + 0.618 * (hi - lo)
        if chi2_at(math.exp(m1)) < chi2_at(math.exp(m2)):
            hi = m2
        else:
            lo = m1
    s = math.exp(0.5 * (lo + hi))
    chi2, (a, b), cov = _linear(dist(pairs_p, pairs_q, L, s), log_c, w)
    # shape error from Delta chi^2 = 1 (profile over a, b), by a local quadratic in ln(shape)
    h = 0.02
    c_up, c_dn = chi2_at(s * math.exp(h)), chi2_at(s * math.exp(-h))
    curv = (c_up + c_dn - 2 * chi2) / h**2
    shape_err = s * math.sqrt(2 / curv) if curv > 0 else math.inf
    xi = 1 / b if b != 0 else math.inf
    xi_err = math.sqrt(cov[1, 1]) / b**2 if b != 0 else math.inf
    return GeometryFit(geometry, "h0" if geometry == "hyperbolic" else "c", s, shape_err, float(a),
                       float(math.sqrt(cov[0, 0])), float(xi), float(xi_err), chi2, len(log_c) - 3)
