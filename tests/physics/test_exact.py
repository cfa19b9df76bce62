"""Exact references against brute force: Ising enumeration, dense Gaussian determinants, HS relation."""
import math

import numpy as np
import pytest
import torch

from rgflow.physics import ISING_TC, free_field_lnZ, free_field_two_point, ising_lnZ_exact, ising_lnZ_offset
from rgflow.physics.actions import ising_kernel_eigenvalues, ising_relaxed_action
from rgflow.stats import effective_sample_size, log_mean_exp


def enumerate_ising_lnZ(L, T):
    V = L * L
    n = np.arange(2**V)
    s = (((n[:, None] >> np.arange(V)) & 1) * 2 - 1).reshape(-1, L, L).astype(float)
    E = (s * np.roll(s, -1, 1)).sum((1, 2)) + (s * np.roll(s, -1, 2)).sum((1, 2))
    a = E / T
    return a.max() + math.log(np.exp(a - a.max()).sum())


@pytest.mark.parametrize("L", [2, 3, 4])
@pytest.mark.parametrize("T", [1.2, ISING_TC, 3.5, 20.0])
def test_ising_lnZ_matches_enumeration(L, T):
    assert ising_lnZ_exact(L, T) == pytest.approx(enumerate_ising_lnZ(L, T), rel=1e-13, abs=1e-12)


def test_ising_lnZ_large_lattice_is_finite_and_extensive():
    # free energy per site at Tc approaches Onsager's value 0.9296953983869...
    f = ising_lnZ_exact(256, ISING_TC) / 256**2
    assert f == pytest.approx(0.929695398, abs=2e-5)


def _laplacian(L):
    K = torch.zeros(L * L, L * L, dtype=torch.float64)
    for x in range(L):
        for y in range(L):
            i = x * L + y
            for nx, ny in (((x + 1) % L, y), ((x - 1) % L, y), (x, (y + 1) % L), (x, (y - 1) % L)):
                K[i, i] += 1
                K[i, nx * L + ny] -= 1
    return K


@pytest.mark.parametrize("m2", [0.1, 1.0, 3.0])
def test_free_field_lnZ_and_propagator_match_dense_matrix(m2):
    L = 4
    K = _laplacian(L) + m2 * torch.eye(L * L, dtype=torch.float64)
    lnZ = 0.5 * L * L * math.log(2 * math.pi) - 0.5 * float(torch.linalg.slogdet(K)[1])
    assert free_field_lnZ(L, m2) == pytest.approx(lnZ, rel=1e-13)
    assert free_field_lnZ(L, m2, channels=2) == pytest.approx(2 * lnZ, rel=1e-13)
    G = torch.linalg.inv(K)
    torch.testing.assert_close(free_field_two_point(L, m2).flatten(), G[0], rtol=1e-12, atol=1e-14)


def test_hs_relation_by_independent_importance_sampling():
    """ln Z_Ising = ln Z_relax + offset, with ln Z_relax from a Gaussian proposal (no flow involved)."""
    L, T, N = 4, 5.0, 400_000
    gen = torch.Generator().manual_seed(11)
    var = ising_kernel_eigenvalues(L, T, 0.1) + 1.0
    white = torch.randn(N, L, L, dtype=torch.float64, generator=gen)
    x = torch.fft.ifft2(torch.fft.fft2(white) * var.sqrt()).real
    xh = torch.fft.fft2(x)
    log_q = -0.5 * ((xh.real**2 + xh.imag**2) / var).sum((1, 2)) / (L * L) - 0.5 * torch.log(2 * math.pi * var).sum()
    log_w = (-ising_relaxed_action(x[:, None], T) - log_q).numpy()
    ess = effective_sample_size(log_w)
    estimate = log_mean_exp(log_w) + ising_lnZ_offset(L, T)
    err = math.sqrt((1 / ess - 1) / N)
    assert abs(estimate - ising_lnZ_exact(L, T)) < 3 * err
    assert err < 0.05
