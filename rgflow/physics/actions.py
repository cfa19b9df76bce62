r"""Lattice actions: pure functions of a periodic field batch ``phi: [B, C, L, L] -> S: [B]``.

Sums run over the sites ``x`` of an ``L x L`` torus and the two unit vectors ``mu``;
``phi(x + mu)`` is ``torch.roll(phi, -1, dim)``. The Boltzmann weight is ``exp(-S)``.

Conventions (each function's docstring repeats its formula):

* Gaussian free field ``S = sum_x [ 1/2 sum_mu (phi(x+mu) - phi(x))^2 + 1/2 m2 phi^2 ]``.
* phi^4, standard (Albergo et al.) convention
  ``S = sum_x [ sum_mu phi(x) (2 phi(x) - phi(x+mu) - phi(x-mu)) + m2 phi^2 + lam phi^4 ]``.
* phi^4, hopping convention ``S = sum_x [ -2 kappa sum_mu phi(x) phi(x+mu) + (1 - 2 lam) phi^2 + lam phi^4 ]``.
  With ``phi_std = sqrt(kappa) phi_hop`` the two are the same action when
  ``m2 = (1 - 2 lam_hop) / kappa - 4`` and ``lam_std = lam_hop / kappa^2`` (see
  :func:`hopping_to_standard`); the partition functions differ by the Jacobian,
  ``ln Z_std = ln Z_hop + (V/2) ln kappa``.
* complex phi^4 / O(2) with ``phi = phi_1 + i phi_2`` stored as two channels,
  ``S = -t sum_<ij> (phi_i^* phi_j + c.c.) + sum_i (mu |phi_i|^2 + lam |phi_i|^4)``,
  ``<ij>`` each nearest-neighbour pair once, so ``phi_i^* phi_j + c.c. = 2 Re phi_i^* phi_j``.
* Ising at temperature ``T`` (``Z = sum_s exp(beta sum_x sum_mu s(x) s(x+mu))``, ``beta = 1/T``),
  through the continuous Hubbard-Stratonovich relaxation of NeuralRG (Li & Wang 2018):
  ``S(x) = 1/2 x^T K^{-1} x - sum_i ln cosh x_i`` with ``K = beta A + c 1``, ``A`` the
  nearest-neighbour adjacency of the torus and ``c = 4 beta + shift``, so that the smallest
  eigenvalue of ``K`` is ``shift > 0`` (even ``L``; larger for odd ``L``). Then exactly
  ``ln Z_Ising = ln Z_relax + V ln 2 - c V / 2 - (V/2) ln 2 pi - 1/2 ln det K``
  (:func:`ising_lnZ_offset`), and given ``x`` the spins are independent with
  ``P(s_i = +-1 | x) = e^{+-x_i} / (2 cosh x_i)``; given the spins, ``x ~ N(K s, K)``
  (:func:`ising_field_given_spins`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rgflow.physics.fields import check_coupling, check_field

__all__ = [
    "free_action",
    "phi4_action",
    "phi4_hopping_action",
    "complex_phi4_action",
    "ising_relaxed_action",
    "ising_field_given_spins",
    "ising_kernel_eigenvalues",
    "ising_lnZ_offset",
    "ising_shift_constant",
    "hopping_to_standard",
    "standard_to_hopping",
]

_DIMS = (-2, -1)


def _neighbour_sum(phi: torch.Tensor) -> torch.Tensor:
    """``sum_mu phi(x) . phi(x+mu)`` per configuration (channels dotted): ``[B, C, L, L] -> [B]``."""
    return sum((phi * torch.roll(phi, -1, d)).sum(dim=(1, 2, 3)) for d in _DIMS)


def free_action(phi: torch.Tensor, m2: float, check: bool = True) -> torch.Tensor:
    r"""Gaussian free field ``S = sum_x [1/2 sum_mu (phi(x+mu) - phi(x))^2 + 1/2 m2 phi(x)^2]``.

    Args:
        phi: ``[B, C, L, L]`` (channels are independent copies).
        m2: squared mass; ``m2 > 0`` for a normalisable measure.

    Returns:
        ``[B]``.
    """
    if check:  # validation at the API boundary; hot loops pass check=False
        check_field(phi)
    grad2 = sum(((torch.roll(phi, -1, d) - phi) ** 2).sum(dim=(1, 2, 3)) for d in _DIMS)
    return 0.5 * grad2 + 0.5 * m2 * (phi**2).sum(dim=(1, 2, 3))


def phi4_action(phi: torch.Tensor, m2: float, lam: float, check: bool = True) -> torch.Tensor:
    r"""Real phi^4, standard convention (Albergo, Kanwar & Shanahan 2019):

    ``S = sum_x [ sum_mu phi(x)(2 phi(x) - phi(x+mu) - phi(x-mu)) + m2 phi(x)^2 + lam phi(x)^4 ]``,
    equivalently ``sum_x [ sum_mu (phi(x+mu) - phi(x))^2 + m2 phi^2 + lam phi^4 ]``.

    Args:
        phi: ``[B, 1, L, L]``.
        m2, lam: bare mass squared and quartic coupling.

    Returns:
        ``[B]``.
    """
    if check:  # validation at the API boundary; hot loops pass check=False
        check_field(phi, channels=1)
    p2 = phi**2
    local = (4.0 + m2) * p2 + lam * p2**2
    return local.sum(dim=(1, 2, 3)) - 2.0 * _neighbour_sum(phi)


def phi4_hopping_action(phi: torch.Tensor, kappa: float, lam: float, check: bool = True) -> torch.Tensor:
    r"""Real phi^4, hopping convention:

    ``S = sum_x [ -2 kappa sum_mu phi(x) phi(x+mu) + (1 - 2 lam) phi(x)^2 + lam phi(x)^4 ]``.

    This is ``sum_x [-2 kappa sum_mu phi phi_mu + phi^2 + lam (phi^2 - 1)^2]`` without the
    constant ``lam V``. Args: ``phi: [B, 1, L, L]``; returns ``[B]``.
    """
    if check:  # validation at the API boundary; hot loops pass check=False
        check_field(phi, channels=1)
    p2 = phi**2
    local = (1.0 - 2.0 * lam) * p2 + lam * p2**2
    return local.sum(dim=(1, 2, 3)) - 2.0 * kappa * _neighbour_sum(phi)


def complex_phi4_action(phi: torch.Tensor, t: float, mu: float, lam: float, check: bool = True) -> torch.Tensor:
    r"""Complex phi^4 / O(2) model with ``phi = phi_1 + i phi_2`` as channels ``[B, 2, L, L]``:

    ``S = -t sum_<ij> (phi_i^* phi_j + c.c.) + sum_i (mu |phi_i|^2 + lam |phi_i|^4)``
    ``  = sum_x [ -2t sum_mu (phi_1 phi_1(x+mu) + phi_2 phi_2(x+mu)) + mu |phi|^2 + lam |phi|^4 ]``.

    Invariant under global U(1) rotations of ``(phi_1, phi_2)``. Returns ``[B]``.
    """
    if check:  # validation at the API boundary; hot loops pass check=False
        check_field(phi, channels=2)
    mod2 = (phi**2).sum(dim=1)
    local = mu * mod2 + lam * mod2**2
    return local.sum(dim=(1, 2)) - 2.0 * t * _neighbour_sum(phi)


def hopping_to_standard(kappa: float, lam: float) -> tuple[float, float]:
    """Map hopping ``(kappa, lam)`` to standard ``(m2, lam)`` with ``phi_std = sqrt(kappa) phi_hop``.

    ``m2 = (1 - 2 lam) / kappa - 4``, ``lam_std = lam / kappa^2``.
    """
    kappa = check_coupling("kappa", kappa, positive=True)
    return (1.0 - 2.0 * lam) / kappa - 4.0, lam / kappa**2


def standard_to_hopping(m2: float, lam: float) -> tuple[float, float]:
    """Inverse of :func:`hopping_to_standard`: returns ``(kappa, lam_hop)``.

    Solves ``(4 + m2) kappa = 1 - 2 lam_std kappa^2`` for the positive root.
    """
    a, b = 2.0 * lam, 4.0 + m2
    if a == 0:
        if b <= 0:
            raise ValueError(f"no hopping form for m2={m2}, lam={lam}: need 4 + m2 > 0 when lam = 0")
        kappa = 1.0 / b
    else:
        kappa = (-b + math.sqrt(b * b + 4 * a)) / (2 * a)
    return kappa, lam * kappa**2


# ---------------------------------------------------------------------------------------------
# Ising through the Hubbard-Stratonovich relaxation
# ---------------------------------------------------------------------------------------------


def ising_shift_constant(T: float, shift: float) -> float:
    """Diagonal offset ``c = 4 beta + shift`` making ``K = beta A + c 1`` positive definite."""
    return 4.0 / T + shift


def ising_kernel_eigenvalues(L: int, T: float, shift: float, dtype=torch.float64, device=None) -> torch.Tensor:
    """Eigenvalues of ``K = beta A + c 1`` on the ``L x L`` torus, indexed by momentum: ``[L, L]``.

    ``K(k) = c + 2 beta (cos k_1 + cos k_2)``, ``k_mu = 2 pi n_mu / L``.
    """
    beta = 1.0 / T
    k = 2 * math.pi * torch.arange(L, dtype=dtype, device=device) / L
    cos = torch.cos(k)
    return ising_shift_constant(T, shift) + 2 * beta * (cos[:, None] + cos[None, :])


def ising_relaxed_action(x: torch.Tensor, T: float, shift: float = 0.1, check: bool = True) -> torch.Tensor:
    r"""Hubbard-Stratonovich relaxation of the Ising model (NeuralRG):

    ``S(x) = 1/2 x^T K^{-1} x - sum_i ln cosh(x_i)``, ``K = beta A + (4 beta + shift) 1``.

    ``K^{-1}`` is applied exactly in momentum space (FFT). ``x: [B, 1, L, L]``; returns ``[B]``.
    """
    if check:  # validation at the API boundary; hot loops pass check=False
        check_field(x, name="x", channels=1)
    L = x.shape[-1]
    eig = ising_kernel_eigenvalues(L, T, shift, dtype=x.dtype, device=x.device)
    xh = torch.fft.fft2(x[:, 0])
    quad = ((xh.real**2 + xh.imag**2) / eig).sum(dim=(1, 2)) / (L * L)
    log_cosh = F.softplus(2.0 * x) - x - math.log(2.0)
    return 0.5 * quad - log_cosh.sum(dim=(1, 2, 3))


def ising_field_given_spins(s: torch.Tensor, T: float, shift: float = 0.1,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    r"""A relaxation field drawn from ``P(x | s)`` of :func:`ising_relaxed_action`: ``x ~ N(K s, K)``.

    The joint weight is ``exp(-1/2 x^T K^{-1} x + s . x) = exp(-1/2 (x - K s)^T K^{-1} (x - K s))
    exp(1/2 s^T K s)``, so for Ising-distributed spins ``s`` this ``x`` is a sample of
    ``exp(-S(x))``. ``K`` and ``K^{1/2}`` act in momentum space (FFT of white noise ``xi``):
    ``x = K s + K^{1/2} xi``. ``s: [B, 1, L, L]`` (``+-1``); returns ``[B, 1, L, L]``.
    """
    eig = ising_kernel_eigenvalues(s.shape[-1], T, shift, dtype=s.dtype, device=s.device)
    xi = torch.randn(s.shape, dtype=s.dtype, device=s.device, generator=generator)
    return torch.fft.ifft2(eig * torch.fft.fft2(s) + eig.sqrt() * torch.fft.fft2(xi)).real


def ising_lnZ_offset(L: int, T: float, shift: float = 0.1) -> float:
    """Constant ``C`` with ``ln Z_Ising = ln Z_relax + C`` for :func:`ising_relaxed_action`.

    ``C = V ln 2 - c V/2 - (V/2) ln 2 pi - 1/2 ln det K``.
    """
    V = L * L
    logdet = float(torch.log(ising_kernel_eigenvalues(L, T, shift)).sum())
    c = ising_shift_constant(T, shift)
    return V * math.log(2.0) - c * V / 2 - V / 2 * math.log(2 * math.pi) - 0.5 * logdet
