import math

import numpy as np
import pytest
import torch

from rgflow.physics import (
    estimate_observables,
    free_field_two_point,
    ising_spins,
    link_energy,
    magnetization,
    second_moment_xi,
    time_slice_correlator,
    two_point,
)


def test_observables_on_hand_made_fields():
    phi = torch.ones(2, 1, 4, 4, dtype=torch.float64)
    phi[1] *= -2
    assert magnetization(phi)[:, 0].tolist() == [1.0, -2.0]
    assert link_energy(phi).tolist() == [1.0, 4.0]
    est = estimate_observables(phi, n_bins=2)
    assert est["m"].mean == pytest.approx(-0.5)
    assert est["abs_m"].mean == pytest.approx(1.5)
    assert est["chi"].mean == pytest.approx(16 * 2.5)
    assert est["chi_c"].mean == pytest.approx(16 * (2.5 - 2.25))
    assert est["binder"].mean == pytest.approx(1 - (1 + 16) / 2 / (3 * 2.5**2))


def test_two_point_of_plane_wave():
    L = 8
    x = torch.arange(L, dtype=torch.float64)
    phi = torch.cos(2 * math.pi * x / L)[:, None].expand(L, L)[None, None]
    G = two_point(phi)[0]
    # G(r) = V^-1 sum_y cos(k y) cos(k (y + r)) = cos(k r) / 2
    torch.testing.assert_close(G[:, 0], 0.5 * torch.cos(2 * math.pi * x / L))
    torch.testing.assert_close(time_slice_correlator(G), L * 0.5 * torch.cos(2 * math.pi * x / L))


def test_second_moment_xi_of_free_propagator():
    # for the free field, G~(p) = 1/(m2 + phat^2) so xi_2 = 1/m exactly
    m2 = 0.25
    assert second_moment_xi(free_field_two_point(16, m2)) == pytest.approx(1 / math.sqrt(m2), rel=1e-10)


def test_free_field_samples_reproduce_exact_moments():
    L, m2, N = 8, 0.5, 20000
    gen = torch.Generator().manual_seed(0)
    from rgflow.physics.exact import lattice_momenta_sq

    var = 1.0 / (m2 + lattice_momenta_sq(L))
    white = torch.randn(N, L, L, dtype=torch.float64, generator=gen)
    phi = torch.fft.ifft2(torch.fft.fft2(white) * var.sqrt()).real[:, None]
    est = estimate_observables(phi)
    assert abs(est["chi"].mean - 1 / m2) < 3 * est["chi"].error  # V <m^2> = G~(0) = 1/m2
    exact_link = float(free_field_two_point(L, m2)[1, 0])
    assert abs(est["e_link"].mean - exact_link) < 3 * est["e_link"].error
    assert abs(est["xi2"].mean - 1 / math.sqrt(m2)) < 3 * est["xi2"].error


def test_ising_spins_conditional_distribution():
    x = torch.full((20000, 1, 2, 2), 0.7, dtype=torch.float64)
    s = ising_spins(x, torch.Generator().manual_seed(0))
    assert set(s.unique().tolist()) == {-1.0, 1.0}
    assert float(s.mean()) == pytest.approx(math.tanh(0.7), abs=0.01)


def test_reweighted_estimate_uses_weights():
    phi = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 3.0)]).double()
    log_w = np.log([3.0, 1.0])
    est = estimate_observables(phi, log_w=log_w, n_bins=2)
    assert est["m"].mean == pytest.approx((3 * 1 + 1 * 3) / 4)


@pytest.mark.parametrize("C", [1, 2])
def test_binder_cumulant_vanishes_for_gaussian_magnetisation(C):
    """U_4 = 1 - <|m|^4> / ((1 + 2/C) <|m|^2>^2) is 0 for a Gaussian C-component m (factor 2 for O(2))."""
    phi = torch.randn(40000, C, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    est = estimate_observables(phi)["binder"]
    assert abs(est.mean) < 4 * est.error


def test_primaries_own_their_memory():
    """A chain keeps every step's primaries: they must not be views that pin the step's [B, L, L] arrays."""
    from rgflow.physics.observables import primaries

    for name, value in primaries(torch.randn(4, 1, 32, 32)).items():
        assert value.shape == (4,) and value.flags.owndata, name
