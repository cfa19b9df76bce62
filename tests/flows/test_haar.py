"""The orthonormal Haar map on the Layout against exact Gaussian free-field results."""
import pytest
import torch

from rgflow.flows import haar_flow
from rgflow.layout import Layout
from rgflow.physics import free_field_two_point


def _dense(flow, V, C=1):
    """The map's matrix R (``u = R x``) by applying it to the identity basis."""
    L = int(round(V**0.5))
    eye = torch.eye(C * V, dtype=torch.float64).reshape(C * V, C, L, L)
    return flow(eye)[0].reshape(C * V, C * V).T


@pytest.mark.parametrize("L,b", [(8, 2), (16, 2), (16, 4)])
def test_haar_levels_of_the_free_field(L, b):
    """Per-level variances of u = R x under the exact propagator: from samples of the exact field
    mapped by the flow, and (one top site) the top latent's variance chi = 1/m^2 (it is sqrt(V) * mean)."""
    m2 = 0.5
    layout = Layout(L, block_size=b)
    flow = haar_flow(layout).double()
    G = free_field_two_point(L, m2)  # [L, L], G(x) = <phi(0) phi(x)>
    idx = torch.arange(L)
    dx = (idx[:, None, None, None] - idx[None, None, :, None]) % L
    dy = (idx[None, :, None, None] - idx[None, None, None, :]) % L
    K_inv = G[dx, dy].reshape(L * L, L * L)  # dense exact covariance of x
    R = _dense(flow, L * L)
    torch.testing.assert_close(R @ R.T, torch.eye(L * L, dtype=torch.float64), atol=1e-12, rtol=0)
    cov_u = R @ K_inv @ R.T
    exact_var = [cov_u.diagonal()[ix] for ix in layout.level_sites]
    if layout.n_latents[-1] == 1:  # a single top site is sqrt(V) times the mean field
        assert float(exact_var[-1][0]) == pytest.approx(1 / m2, rel=1e-10)
    # Monte Carlo: exact free-field samples (Cholesky) through the flow, split by level
    gen = torch.Generator().manual_seed(0)
    x = (torch.linalg.cholesky(K_inv) @ torch.randn(L * L, 20000, dtype=torch.float64, generator=gen)).T
    u = flow(x.reshape(-1, 1, L, L))[0]
    for level, (part, var) in enumerate(zip(layout.split(u), exact_var)):
        sample_var = (part[:, 0] ** 2).mean(0)  # zero mean
        torch.testing.assert_close(sample_var.mean(), var.mean(), rtol=0.05, atol=0), level
    # coarse levels carry the long-wavelength fluctuations: per-site variance grows with level
    means = [float(v.mean()) for v in exact_var]
    assert all(a < b for a, b in zip(means, means[1:]))


def test_haar_needs_mera():
    with pytest.raises(ValueError, match="the Haar map needs a MERA layout"):
        haar_flow(Layout(4, kind="tebd", depth=2))
