"""Exact densities of the deterministic sampler: colouring Jacobians, sparse LU, Newton inversion, ln Z."""
import math

import pytest
import torch

from rgflow.diffusion import DiffusionModel
from rgflow.diffusion.exact import exact_log_prob, exact_sample, step_jacobian, step_logabsdet, velocity_jacobian
from rgflow.diffusion.jacobian import colouring, dense_jacobian, local_jacobian, sparse_logabsdet, to_dense
from rgflow.diffusion.nets import LocalNet, Odd
from rgflow.layout import Layout
from rgflow.physics import make_action
from rgflow.train.diagnostics import evaluate
from tests.diffusion.test_gaussian import _free_spectrum

M2 = 0.5


def _perturbed(model, scale=0.05, seed=0):
    """Small random weights everywhere (the output layers too): a generic non-Gaussian model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, dtype=p.dtype, generator=g))
    return model


@pytest.mark.parametrize("M,radius", [(8, 1), (16, 2), (12, 2), (5, 1), (4, 3), (64, 2), (30, 1)])
def test_colouring_separates_each_colours_sites_by_more_than_twice_the_radius(M, radius):
    colour, owner = colouring(M, radius)
    for g in range(owner.shape[0]):
        sites = torch.nonzero(colour == g).flatten()
        i, j = sites // M, sites % M
        di = (i[:, None] - i[None]).abs() % M
        dj = (j[:, None] - j[None]).abs() % M
        d = torch.maximum(torch.minimum(di, M - di), torch.minimum(dj, M - dj))
        assert bool((d + 1000 * torch.eye(len(sites), dtype=torch.long) > 2 * radius).all())
    if M % (2 * radius + 1) == 0:
        assert owner.shape[0] == (2 * radius + 1) ** 2
    assert owner.shape[0] <= M * M
    if M >= (2 * radius + 1) * (2 * radius + 2):
        assert owner.shape[0] <= (2 * radius + 2) ** 2


@pytest.mark.parametrize("M,depth", [(8, 2), (16, 3)])
def test_local_jacobian_by_colouring_equals_autograd(M, depth):
    torch.manual_seed(0)
    net = _perturbed(Odd(LocalNet(4, 3, width=6, depth=depth, grid=M)), 0.3).double()
    h = torch.randn(2, 4, M, M, dtype=torch.float64)
    c = torch.rand(2, dtype=torch.float64)
    rows, cols, vals = local_jacobian(lambda u: net(u, c), h, net.radius)
    dense = dense_jacobian(lambda u: net(u, c[:1].expand(len(u))), h[:1])
    D_out, D_in = 3 * M * M, 4 * M * M
    torch.testing.assert_close(to_dense(rows, cols, vals[:1], (D_out, D_in)), dense, rtol=0, atol=1e-12)
    assert len(rows) < D_out * D_in or M <= 2 * depth + 1


@pytest.mark.parametrize("last", [True, False])
def test_sparse_lu_log_det_of_a_step_equals_the_dense_one(last):
    L = 32  # level 0 has 768 variables on a 16 x 16 grid: a genuinely sparse Jacobian
    model = _perturbed(DiffusionModel.build(_free_spectrum(L), Layout(L), "rg", "local", width=4, depth=2).double(), 0.2)
    stage = model.stages[-1]
    z = torch.randn(2, *stage.shape, dtype=torch.float64)
    ctx = torch.randn(2, 1, *stage.shape[1:], dtype=torch.float64)
    t0, t1 = torch.tensor(0.6, dtype=torch.float64), torch.tensor(0.45, dtype=torch.float64)
    kind, *_ = velocity_jacobian(stage, z, t0, ctx)
    assert kind == "sparse"
    sign, dense = (t.detach() for t in torch.linalg.slogdet(step_jacobian(stage, z, t0, t1, ctx, last)))
    import scipy.sparse as sp

    J = step_jacobian(stage, z, t0, t1, ctx, last)
    for b in range(2):
        s, log = sparse_logabsdet(sp.csr_matrix(J[b].detach().numpy()))
        assert s == float(sign[b]) and abs(log - float(dense[b])) < 1e-10
    # and the production path (Jacobians from colouring, assembled sparse) gives the same number
    from rgflow.diffusion import exact

    old = exact.SPARSE_MIN_VARS
    try:
        exact.SPARSE_MIN_VARS = 1
        torch.testing.assert_close(step_logabsdet(stage, z, t0, t1, ctx, last), dense.detach(), rtol=0, atol=1e-10)
    finally:
        exact.SPARSE_MIN_VARS = old


@pytest.mark.parametrize("schedule,net", [("rg", "local"), ("rg", "unet"), ("standard", "local"), ("ve", "unet")])
def test_log_prob_inverts_the_sampler_and_agrees_with_its_ln_q(schedule, net):
    L = 8
    model = _perturbed(DiffusionModel.build(_free_spectrum(L), Layout(L), schedule, net, width=6, depth=2, nfe=5).double())
    x, log_q = model.sample(4, torch.Generator().manual_seed(1))
    assert x.shape == (4, 1, L, L) and log_q.grad_fn is None
    torch.testing.assert_close(model.log_prob(x), log_q, rtol=0, atol=1e-8)


def test_ln_q_is_normalised_reweighting_recovers_the_exact_free_field_ln_z():
    """If ln q were off by a constant, ln Z from the weights exp(-S - ln q) would be off by it too."""
    L = 4
    action = make_action("free", m2=M2)
    model = _perturbed(DiffusionModel.build(_free_spectrum(L, 0.65), Layout(L), "rg", "local", width=6, depth=2,
                                            nfe=3).double(), 0.03)
    res = evaluate(model, action, 6000, seed=3)
    assert 0.05 < res["ess"] < 0.999  # a different distribution: the weights are not trivial
    assert abs(res["lnZ"] - res["lnZ_exact"]) < 4 * res["lnZ_err"] + 1e-3
    assert res["kl"] > 0


def test_exact_density_records_no_graph_to_the_weights_and_leaves_them_trainable():
    L = 8
    model = _perturbed(DiffusionModel.build(_free_spectrum(L), Layout(L), "rg", "local", width=4, depth=2, nfe=3).double())
    x, log_q = exact_sample(model, 3, 3)
    assert log_q.grad_fn is None
    assert all(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(exact_log_prob(model, x, 3), log_q, rtol=0, atol=1e-8)


def test_a_step_that_folds_space_is_an_error():
    L = 8
    model = _perturbed(DiffusionModel.build(_free_spectrum(L), Layout(L), "rg", "local", width=8, depth=3,
                                            nfe=1).double(), 3.0)
    with pytest.raises(FloatingPointError, match="folded space"):
        model.sample(8, torch.Generator().manual_seed(0))


def test_cost_of_an_exact_sample_does_not_grow_with_the_lattice_through_the_jacobian():
    """The colouring needs the same number of products at L = 32 as at L = 64 (a constant)."""
    counts = []
    for L in (32, 64):
        model = DiffusionModel.build(_free_spectrum(L), Layout(L), "rg", "local", width=4, depth=3)
        stage = model.stages[-1]
        counts.append(colouring(stage.shape[-1], stage.radius)[1].shape[0] * stage.shape[0])
    assert counts[0] == counts[1] < 3 * 16 * 16
    assert math.isfinite(counts[0])
