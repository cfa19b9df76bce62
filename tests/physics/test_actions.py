"""Actions against explicit loop implementations of their documented formulas, conversions, symmetries."""
import itertools
import math

import pytest
import torch

from rgflow.physics import (
    complex_phi4_action,
    free_action,
    hopping_to_standard,
    ising_relaxed_action,
    make_action,
    phi4_action,
    phi4_hopping_action,
    standard_to_hopping,
)


def _sites(L):
    return itertools.product(range(L), range(L))


def loop_free(phi, m2):
    L = phi.shape[-1]
    S = 0.0
    for x, y in _sites(L):
        p = phi[x, y]
        S += 0.5 * ((phi[(x + 1) % L, y] - p) ** 2 + (phi[x, (y + 1) % L] - p) ** 2) + 0.5 * m2 * p**2
    return S


def loop_phi4(phi, m2, lam):
    L = phi.shape[-1]
    S = 0.0
    for x, y in _sites(L):
        p = phi[x, y]
        for dx, dy in ((1, 0), (0, 1)):
            S += p * (2 * p - phi[(x + dx) % L, (y + dy) % L] - phi[(x - dx) % L, (y - dy) % L])
        S += m2 * p**2 + lam * p**4
    return S


def loop_hopping(phi, kappa, lam):
    L = phi.shape[-1]
    S = 0.0
    for x, y in _sites(L):
        p = phi[x, y]
        S += -2 * kappa * p * (phi[(x + 1) % L, y] + phi[x, (y + 1) % L]) + (1 - 2 * lam) * p**2 + lam * p**4
    return S


def loop_complex(phi, t, mu, lam):
    L = phi.shape[-1]
    c = phi[0] + 1j * phi[1]
    S = 0.0
    for x, y in _sites(L):
        for nx, ny in (((x + 1) % L, y), (x, (y + 1) % L)):
            S += -t * (c[x, y].conj() * c[nx, ny] + c[x, y] * c[nx, ny].conj()).real
        S += mu * abs(c[x, y]) ** 2 + lam * abs(c[x, y]) ** 4
    return S


@pytest.fixture
def field():
    return torch.randn(2, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def test_free_action_matches_formula(field):
    S = free_action(field, 0.7)
    for b in range(2):
        assert float(S[b]) == pytest.approx(float(loop_free(field[b, 0], 0.7)), rel=1e-12)


def test_phi4_standard_matches_formula_and_hand_value(field):
    S = phi4_action(field, -4.0, 8.0)
    for b in range(2):
        assert float(S[b]) == pytest.approx(float(loop_phi4(field[b, 0], -4.0, 8.0)), rel=1e-12)
    # constant field: no kinetic term, S = V (m2 c^2 + lam c^4)
    c = torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64)
    assert float(phi4_action(c, -4.0, 8.0)) == pytest.approx(16 * (-4 * 0.25 + 8 * 0.0625))
    # staggered field a (-1)^(x+y): each of the 2V links has (dphi)^2 = 4 a^2
    a = 0.5
    stag = a * (-1.0) ** (torch.arange(4)[:, None] + torch.arange(4)[None, :]).double()
    assert float(phi4_action(stag[None, None], 0.0, 0.0)) == pytest.approx(2 * 16 * 4 * a**2)


def test_phi4_hopping_matches_formula(field):
    S = phi4_hopping_action(field, 0.27, 0.022)
    for b in range(2):
        assert float(S[b]) == pytest.approx(float(loop_hopping(field[b, 0], 0.27, 0.022)), rel=1e-12)


def test_complex_phi4_matches_formula():
    phi = torch.randn(2, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    S = complex_phi4_action(phi, 0.8, -1.5, 0.6)
    for b in range(2):
        assert float(S[b]) == pytest.approx(float(loop_complex(phi[b], 0.8, -1.5, 0.6)), rel=1e-12)


def test_hopping_standard_conversion(field):
    kappa, lam = 0.27, 0.022
    m2, lam_s = hopping_to_standard(kappa, lam)
    torch.testing.assert_close(phi4_action(math.sqrt(kappa) * field, m2, lam_s), phi4_hopping_action(field, kappa, lam))
    k2, l2 = standard_to_hopping(m2, lam_s)
    assert (k2, l2) == pytest.approx((kappa, lam), rel=1e-12)


@pytest.mark.parametrize(
    "name,C",
    [("free", 1), ("phi4", 1), ("phi4-hopping", 1), ("complex-phi4", 2), ("ising", 1)],
)
def test_translation_and_reflection_symmetry(name, C):
    action = make_action(name)
    phi = torch.randn(3, C, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    S = action(phi)
    for shift, dim in ((1, -1), (3, -2), (2, -1)):
        torch.testing.assert_close(action(torch.roll(phi, shift, dim)), S)
    torch.testing.assert_close(action(-phi), S)
    torch.testing.assert_close(action(phi.transpose(-1, -2)), S)


def test_complex_phi4_u1_symmetry():
    phi = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    a = 0.813
    rot = torch.stack([math.cos(a) * phi[:, 0] - math.sin(a) * phi[:, 1], math.sin(a) * phi[:, 0] + math.cos(a) * phi[:, 1]], 1)
    torch.testing.assert_close(complex_phi4_action(rot, 1.0, -2.0, 1.0), complex_phi4_action(phi, 1.0, -2.0, 1.0))


def test_ising_relaxed_action_against_dense_kernel():
    L, T, shift = 4, 2.5, 0.1
    beta = 1 / T
    A = torch.zeros(L * L, L * L, dtype=torch.float64)
    for x, y in _sites(L):
        for nx, ny in (((x + 1) % L, y), ((x - 1) % L, y), (x, (y + 1) % L), (x, (y - 1) % L)):
            A[x * L + y, nx * L + ny] += 1
    K = beta * A + (4 * beta + shift) * torch.eye(L * L, dtype=torch.float64)
    assert float(torch.linalg.eigvalsh(K).min()) == pytest.approx(shift)
    x = torch.randn(2, 1, L, L, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    v = x.reshape(2, -1)
    expected = 0.5 * (v @ torch.linalg.inv(K) * v).sum(1) - torch.log(torch.cosh(v)).sum(1)
    torch.testing.assert_close(ising_relaxed_action(x, T, shift), expected)


@pytest.mark.parametrize(
    "name,params,match",
    [
        ("phi3", {}, "unknown action 'phi3'"),
        ("phi4", {"kappa": 0.3}, "no coupling kappa"),
        ("phi4", {"lam": float("nan")}, "lam .action phi4. must be finite"),
        ("phi4", {"lam": -1.0}, "lam .action phi4. must be >= 0"),
        ("ising", {"T": 0.0}, "T .action ising. must be > 0"),
        ("free", {"m2": -1.0}, "m2 .action free. must be > 0"),
    ],
)
def test_make_action_rejects_bad_parameters(name, params, match):
    with pytest.raises(ValueError, match=match):
        make_action(name, **params)


def test_actions_reject_bad_fields():
    with pytest.raises(ValueError, match=r"phi must have shape \[B, C, L, L\]"):
        phi4_action(torch.zeros(4, 4), -4, 8)
    with pytest.raises(ValueError, match="C=2"):
        complex_phi4_action(torch.zeros(1, 1, 4, 4), 1, 1, 1)
    with pytest.raises(ValueError, match="float32 or float64"):
        phi4_action(torch.zeros(1, 1, 4, 4, dtype=torch.long), -4, 8)
    with pytest.raises(ValueError, match="NaN"):
        free_action(torch.full((1, 1, 4, 4), float("nan")), 1.0)
    with pytest.raises(ValueError, match="square"):
        free_action(torch.zeros(1, 1, 4, 8), 1.0)
