"""The hot path of the flow: rgflow's spline kernel and the feature-major block path compute nflows' function."""
import pytest
import torch
from nflows.transforms.splines.rational_quadratic import unconstrained_rational_quadratic_spline

from rgflow.flows import make_block
from rgflow.flows.base import block_map
from rgflow.flows.spline import rq_spline


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("bins", [2, 8, 12])
def test_spline_equals_nflows_linear_tails(float64, inverse, bins):
    torch.manual_seed(bins)
    N, F, bound = 4000, 3, 4.0
    params = 2 * torch.randn(N, F, 3 * bins - 1)
    x = 3 * torch.randn(N, F)  # about a third of the points in the tails
    x[:5] = torch.tensor([-bound, bound, 0.0])  # the knots at the ends are inside
    y, logdet = unconstrained_rational_quadratic_spline(
        x, params[..., :bins], params[..., bins : 2 * bins], params[..., 2 * bins :],
        inverse=inverse, tails="linear", tail_bound=bound)
    y2, logdet2 = rq_spline(x.T, params.permute(1, 2, 0), bound, inverse=inverse)
    assert torch.allclose(y2, y.T, atol=1e-10, rtol=0)
    assert torch.allclose(logdet2, logdet.sum(1), atol=1e-10, rtol=0)
    outside = x.abs() > bound
    assert outside.any() and torch.equal(y2.T[outside], x[outside])


def test_spline_round_trip_and_finite_gradients_far_in_the_tails(float64):
    torch.manual_seed(0)
    params = torch.randn(2, 23, 500, requires_grad=True)
    x = (20 * torch.randn(2, 500)).requires_grad_(True)
    y, ld = rq_spline(x, params, 6.0)
    back, ld_back = rq_spline(y, params, 6.0, inverse=True)
    assert torch.allclose(back, x, atol=1e-10) and torch.allclose(ld + ld_back, torch.zeros(500), atol=1e-10)
    gx, gp = torch.autograd.grad((y.sum() + ld.sum()), (x, params))
    assert torch.isfinite(gx).all() and torch.isfinite(gp).all()


@pytest.mark.parametrize("kind,equivariance,channels,block", [
    ("spline", None, 1, 2), ("affine", None, 1, 2), ("affine", "z2", 1, 2), ("spline", None, 2, 4),
    ("spline", "z2", 1, 2), ("haar", None, 2, 4),
])
@pytest.mark.parametrize("inverse", [False, True])
def test_feature_major_path_equals_row_major(float64, kind, equivariance, channels, block, inverse):
    torch.manual_seed(1)
    t = make_block(kind, block, channels, n_couplings=3, hidden=8, equivariance=equivariance)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.3 * torch.randn_like(p))
    u = torch.randn(50, channels * block * block)
    v, ld = (t.inverse if inverse else t)(u)
    v2, ld2 = block_map(t, u.T.contiguous(), inverse)
    assert torch.allclose(v2.T, v, atol=1e-12) and torch.allclose(ld2, ld, atol=1e-12)
