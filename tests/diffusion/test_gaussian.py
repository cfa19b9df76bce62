"""The Gaussian part of the diffusion models is exact: whitening maps against the free field."""
import math

import pytest
import torch

from rgflow.diffusion import DiffusionModel, GaussianPyramid, SpectralWhitening, power_spectrum
from rgflow.diffusion.gaussian import hartley
from rgflow.diffusion.sampler import generate, heun_step, stage_steps, tau_grid
from rgflow.diffusion.stages import noise_scale
from rgflow.layout import Layout
from rgflow.physics import free_field_two_point
from rgflow.physics.exact import lattice_momenta_sq

M2 = 0.5


def _field_covariance(L, m2):
    """The free field's exact covariance ``[L^2, L^2]`` (sites row-major)."""
    G = free_field_two_point(L, m2)
    idx = torch.arange(L)
    dx = (idx[:, None, None, None] - idx[None, None, :, None]) % L
    dy = (idx[None, :, None, None] - idx[None, None, None, :]) % L
    return G[dx, dy].reshape(L * L, L * L)


def _free_spectrum(L, m2=M2):
    return (1 / (m2 + lattice_momenta_sq(L)))[None]


def _linear_map(model, nfe: int) -> torch.Tensor:
    """With a zero network the sampler is linear, ``x = T z``: push the unit vectors of every stage through it."""
    sizes = [st.n_vars for st in model.stages]
    D = sum(sizes)
    eye = torch.eye(D, dtype=torch.float64)
    coords, state, start = model.coords, None, 0
    for s, (stage, n, N) in enumerate(zip(model.stages, sizes, stage_steps(model, nfe))):
        z = eye[:, start:start + n].reshape(D, *stage.shape)
        taus = tau_grid(N, z)
        for i in range(N):
            z = heun_step(stage, z, taus[i], taus[i + 1], coords.context(s, state), i == N - 1)
        state = coords.absorb(s, state, z)
        start += n
    return coords.finish(state)[0].reshape(D, -1).T


def test_hartley_is_orthonormal_self_inverse_and_diagonalises_a_stationary_covariance():
    L = 6
    x = torch.randn(3, 2, L, L, dtype=torch.float64)
    torch.testing.assert_close(hartley(hartley(x)), x, rtol=0, atol=1e-13)
    eye = torch.eye(L * L, dtype=torch.float64).reshape(-1, 1, L, L)
    H = hartley(eye).reshape(L * L, L * L)
    torch.testing.assert_close(H @ H.T, torch.eye(L * L, dtype=torch.float64), rtol=0, atol=1e-13)
    cov = H @ _field_covariance(L, M2) @ H.T
    torch.testing.assert_close(cov, torch.diag(_free_spectrum(L).flatten()), rtol=0, atol=1e-12)


def test_power_spectrum_of_an_exact_ensemble_is_the_propagator_and_lattice_symmetric():
    L = 8
    chol = torch.linalg.cholesky(_field_covariance(L, M2))
    x = (chol @ torch.randn(L * L, 20000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))).T
    P = power_spectrum(x.reshape(-1, 1, L, L))
    exact = _free_spectrum(L)
    assert float(((P - exact) / exact).abs().max()) < 0.05
    torch.testing.assert_close(P, P.transpose(-1, -2), rtol=0, atol=1e-12)
    torch.testing.assert_close(P, P.flip(-1).roll(1, -1), rtol=0, atol=1e-12)  # k -> -k


@pytest.mark.parametrize("L", [4, 8, 12, 16])
def test_pyramid_levels_are_the_layouts_and_its_maps_are_inverse(L):
    layout = Layout(L)
    pyr = GaussianPyramid(_free_spectrum(L), layout)
    sizes = [math.prod(pyr.stage_shape(s)) for s in range(pyr.n_stages)]
    assert sizes == [layout.n_latents[pyr.level_of_stage(s)] for s in range(pyr.n_stages)]
    x = torch.randn(5, 1, L, L, dtype=torch.float64)
    zs, contexts, rest = pyr.encode(x)
    assert [tuple(z.shape[1:]) for z in zs] == [pyr.stage_shape(s) for s in range(pyr.n_stages)]
    assert contexts[0] is None and all(c.shape[1] == 1 for c in contexts[1:])
    back, rest2 = pyr.decode(zs)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(rest, rest2)


@pytest.mark.parametrize("schedule", ["rg", "standard", "ve"])
@pytest.mark.parametrize("L", [4, 8, 12])
def test_a_zero_network_generates_the_ensembles_gaussian_exactly_at_any_nfe(schedule, L):
    """x = T z with z ~ N(0, 1): T T^T is the free field's covariance to rounding, at NFE 1 and 15,
    and ln|det T| is the coordinates' constant."""
    model = DiffusionModel.build(_free_spectrum(L), Layout(L), schedule, "local", width=4, depth=2).double()
    for nfe in (1, 15):
        T = _linear_map(model, nfe)
        torch.testing.assert_close(T @ T.T, _field_covariance(L, M2), rtol=0, atol=1e-12)
        torch.testing.assert_close(torch.linalg.slogdet(T)[1], -model.coords.encode(torch.zeros(1, 1, L, L,
                                   dtype=torch.float64))[2][0], rtol=0, atol=1e-9)


def test_the_zero_model_reproduces_the_free_field_through_the_sampler():
    L = 8
    model = DiffusionModel.build(_free_spectrum(L), Layout(L), "rg", "local", width=4, depth=2).double()
    x = generate(model, 8000, 3, "sde", torch.Generator().manual_seed(0))  # the SDE sampler is exact for F = 0 too
    G = torch.fft.ifft2((torch.fft.fft2(x[:, 0]).abs() ** 2).mean(0)).real / (L * L)
    exact = free_field_two_point(L, M2)
    assert float((G - exact).abs().max()) < 5 * math.sqrt(2 / 8000) * float(exact[0, 0])


def test_ve_noise_is_wang_aarts_zhou():
    tau = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    s = noise_scale("ve", tau, s_max=0.0)
    torch.testing.assert_close(s**2, (25.0 ** (2 * tau) - 1) / (2 * math.log(25.0)))
    assert abs(float(s[-1]) - 9.8452) < 1e-4 and float(s[0]) == 0.0


def test_spectral_whitening_round_trip():
    L = 8
    w = SpectralWhitening(_free_spectrum(L))
    x = torch.randn(4, 1, L, L, dtype=torch.float64)
    (u,), _, rest = w.encode(x)
    back, rest2 = w.finish(u)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(rest, rest2)
