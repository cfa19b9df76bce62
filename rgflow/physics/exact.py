r"""Exact finite-volume references: Gaussian free field and the 2-d Ising model on a torus.

All functions work in float64 and return Python floats or float64 tensors.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from rgflow.physics.fields import check_coupling

__all__ = ["lattice_momenta_sq", "free_field_lnZ", "free_field_two_point", "ising_lnZ_exact", "ISING_TC"]

#: Critical temperature of the square-lattice Ising model, ``2 / ln(1 + sqrt 2)``.
ISING_TC = 2.0 / math.log(1.0 + math.sqrt(2.0))


def lattice_momenta_sq(L: int) -> torch.Tensor:
    """``khat^2 = sum_mu 4 sin^2(k_mu / 2)`` for ``k_mu = 2 pi n_mu / L``: ``[L, L]`` float64."""
    s = 4 * torch.sin(math.pi * torch.arange(L, dtype=torch.float64) / L) ** 2
    return s[:, None] + s[None, :]


def free_field_lnZ(L: int, m2: float, channels: int = 1) -> float:
    r"""``ln Z`` of :func:`rgflow.physics.free_action` on the ``L x L`` torus.

    ``S = 1/2 phi^T (-Delta + m2) phi`` so
    ``ln Z = C [ (V/2) ln 2 pi - 1/2 sum_k ln(m2 + khat^2) ]``.
    """
    m2 = check_coupling("m2", m2, positive=True)
    V = L * L
    return channels * (0.5 * V * math.log(2 * math.pi) - 0.5 * float(torch.log(m2 + lattice_momenta_sq(L)).sum()))


def free_field_two_point(L: int, m2: float) -> torch.Tensor:
    r"""Exact propagator ``G(x) = <phi(y) phi(y + x)> = V^{-1} sum_k e^{i k x} / (m2 + khat^2)``: ``[L, L]``."""
    m2 = check_coupling("m2", m2, positive=True)
    return torch.fft.ifft2(1.0 / (m2 + lattice_momenta_sq(L))).real


def _log_abs_2cosh(a: np.ndarray) -> np.ndarray:
    a = np.abs(a)
    return a + np.log1p(np.exp(-2 * a))


def _log_abs_2sinh(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.sign(a)
    a = np.abs(a)
    with np.errstate(divide="ignore"):
        return a + np.log(-np.expm1(-2 * a)), s


def ising_lnZ_exact(L: int, T: float) -> float:
    r"""Exact ``ln Z`` of the 2-d Ising model on an ``L x L`` torus (Kaufman 1949; Ferdinand & Fisher 1969).

    ``Z = sum_s exp(K sum_x sum_mu s(x) s(x+mu))``, ``K = 1/T``:

    ``Z = 1/2 (2 sinh 2K)^{V/2} [prod_r 2cosh(L g_{2r+1}/2) + prod_r 2sinh(L g_{2r+1}/2)
    + prod_r 2cosh(L g_{2r}/2) + prod_r 2sinh(L g_{2r}/2)]``, ``r = 0..L-1``, with
    ``cosh g_l = cosh 2K coth 2K - cos(pi l / L)`` for ``l >= 1`` and the signed
    ``g_0 = 2K + ln tanh K`` (negative above ``T_c``, which makes the last product negative
    for odd counts of negative factors). Evaluated in log space with signs.
    """
    T = check_coupling("T", T, positive=True)
    if L < 2:
        raise ValueError(f"L must be >= 2 for ising_lnZ_exact, got {L}")
    K = 1.0 / T
    ls = np.arange(2 * L)
    arg = np.cosh(2 * K) / np.tanh(2 * K) - np.cos(np.pi * ls / L)
    gamma = np.arccosh(np.maximum(arg, 1.0))
    gamma[0] = 2 * K + np.log(np.tanh(K))
    odd, even = gamma[1::2] * L / 2, gamma[0::2] * L / 2
    logs, signs = [], []
    for half in (odd, even):
        logs.append(_log_abs_2cosh(half).sum())
        signs.append(1.0)
        ls_, sg = _log_abs_2sinh(half)
        logs.append(ls_.sum())
        signs.append(float(np.prod(sg)))
    logs = np.array(logs)
    top = logs[np.isfinite(logs)].max()
    total = float(sum(s * np.exp(lg - top) for s, lg in zip(signs, logs) if np.isfinite(lg)))
    if total <= 0:
        raise ArithmeticError(f"ising_lnZ_exact lost precision at L={L}, T={T}")
    return -math.log(2.0) + 0.5 * L * L * math.log(2 * math.sinh(2 * K)) + top + math.log(total)
