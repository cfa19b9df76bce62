"""The diffusion backend against the Gaussian free field, where everything is exact."""
import math

import pytest
import torch

from rgflow.diffusion import GaussianDenoiser, RGCoordinates, RGSchedule, sample_coords
from rgflow.flows import haar_flow
from rgflow.layout import Layout
from rgflow.physics import free_field_two_point
from rgflow.physics.observables import estimate_observables

L, M2 = 8, 0.5


def _field_covariance(L, m2):
    G = free_field_two_point(L, m2)
    idx = torch.arange(L)
    dx = (idx[:, None, None, None] - idx[None, None, :, None]) % L
    dy = (idx[None, :, None, None] - idx[None, None, None, :]) % L
    return G[dx, dy].reshape(L * L, L * L)


def gff_coords(size, scaling):
    """Haar coordinates of the ``size x size`` free field with its exact scale: ``(coords, covariance of y,
    covariance of x)``."""
    coords = RGCoordinates(haar_flow(Layout(size)).double(), scaling).double()
    K_inv = _field_covariance(size, M2)
    x = (torch.linalg.cholesky(K_inv) @ torch.randn(size * size, 4096, dtype=torch.float64,
                                                      generator=torch.Generator().manual_seed(0))).T
    coords.fit_scale(x.reshape(-1, 1, size, size))
    eye = torch.eye(size * size, dtype=torch.float64).reshape(-1, 1, size, size)
    R = coords.to_coords(eye)[0].reshape(size * size, size * size).T  # y = R x (scale included)
    return coords, R @ K_inv @ R.T, K_inv


def _coords(scaling):
    """Haar coordinates with the exact scale of the free field, and the exact covariance of y."""
    return gff_coords(L, scaling)[:2]


@pytest.mark.parametrize("delta,scaling", [(0.0, "global"), (4.0, "level")])
def test_forward_marginal_is_the_exact_gaussian(delta, scaling):
    """y_t = alpha y + sigma eps has covariance alpha Sigma alpha + sigma^2 (per level)."""
    coords, cov = _coords(scaling)
    schedule = RGSchedule(coords.n_levels, delta)
    t = torch.full((1,), 0.45, dtype=torch.float64)
    a, s = (coords.sigma_map(v).reshape(-1) for v in schedule.alpha_sigma(t))
    gen = torch.Generator().manual_seed(1)
    y = (torch.linalg.cholesky(cov) @ torch.randn(L * L, 40000, dtype=torch.float64, generator=gen)).T
    yt = a * y + s * torch.randn(y.shape, dtype=torch.float64, generator=gen)
    exact = a[:, None] * cov * a[None, :] + torch.diag(s**2)
    sample = yt.T @ yt / len(yt)
    assert (sample - exact).abs().max() < 6 * math.sqrt(2 / len(yt)) * exact.diagonal().max()


def test_standard_schedule_on_haar_is_isotropic_diffusion_of_the_field():
    """Delta = 0 with a global scale: mapping the noised coordinates back gives alpha x + sigma eps_x
    for eps_x = R^T eps (the same noise, the same result)."""
    coords, _ = _coords("global")
    schedule = RGSchedule(coords.n_levels, 0.0)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 1, L, L, dtype=torch.float64, generator=gen)
    eps_x = torch.randn(x.shape, dtype=torch.float64, generator=gen)
    for t in (0.1, 0.5, 0.9):
        a, s = schedule.alpha_sigma(torch.full((1,), t, dtype=torch.float64))
        assert torch.allclose(a, a[:, :1]) and torch.allclose(s, s[:, :1])  # one log-SNR for all levels
        eps_y = coords.flow(eps_x)[0]  # orthonormal: the same noise in RG coordinates
        y_t = a[0, 0] * coords.to_coords(x)[0] + s[0, 0] * eps_y / coords.scale[0, 0]
        back = coords.to_field(y_t)[0]
        torch.testing.assert_close(back, a[0, 0] * x + s[0, 0] * eps_x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind,nfe", [("ode", 127), ("sde", 800)])  # Euler-Maruyama is first order
@pytest.mark.parametrize("delta,scaling", [(0.0, "global"), (4.0, "level")])
def test_analytic_score_samples_reproduce_the_free_field(kind, nfe, delta, scaling):
    """With the exact denoiser, sampled fields have chi = 1/m^2 and the exact G(1, 0)."""
    coords, cov = _coords(scaling)
    schedule = RGSchedule(coords.n_levels, delta)
    y, used, _ = sample_coords(GaussianDenoiser(cov, coords), schedule, coords, 4000, nfe, kind,
                               torch.Generator().manual_seed(3))
    assert used == nfe
    x = coords.to_field(y)[0]
    est = estimate_observables(x)
    exact = {"chi": 1 / M2, "e_link": float(free_field_two_point(L, M2)[1, 0])}
    for name, value in exact.items():
        assert abs(est[name].mean - value) < 4 * est[name].error, (name, est[name], value)


def test_rg_schedule_erases_fine_levels_first():
    schedule = RGSchedule(4, 4.0)
    lam = schedule.logsnr(torch.linspace(0, 1, 101, dtype=torch.float64))
    assert torch.all(lam[:, :-1] <= lam[:, 1:])  # at every t a coarser level is at least as clean
    assert torch.all(lam[0] == schedule.logsnr_max) and torch.all(lam[-1] == schedule.logsnr_min)
    windows = [schedule.active_window(level) for level in range(4)]
    assert all(a[0] < b[0] and a[1] < b[1] for a, b in zip(windows, windows[1:]))
