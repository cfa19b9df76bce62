"""One contract test over every bijection: shapes, round trip, log-dets, Jacobian, gradients, identity at init."""
import pytest
import torch

from rgflow.flows import (
    AffineCoupling, BlockSublayer, ConditionerMLP, RGFlow, build_flow, haar_flow, make_block, spline_coupling,
)
from rgflow.flows.couplings import block_masks
from rgflow.flows.priors import Prior
from rgflow.layout import Layout


def _vector(t):  # a transform on [N, D]
    return ("vector", t)


def _field(t, C, L):  # a transform on [B, C, L, L]
    return ("field", t, C, L)


CASES = {
    "affine-coupling": lambda: _vector(AffineCoupling(block_masks(2, 1, 1)[0], lambda i, o: ConditionerMLP(i, o, 8))),
    "spline-coupling": lambda: _vector(spline_coupling(block_masks(2, 1, 2)[1], hidden=8, layers=1)),
    "affine-block-b2": lambda: _vector(make_block("affine", 2, 1, n_couplings=4, hidden=8)),
    "spline-block-b2": lambda: _vector(make_block("spline", 2, 1, n_couplings=3, hidden=8)),
    "affine-block-b4-C2": lambda: _vector(make_block("affine", 4, 2, n_couplings=7, hidden=8)),
    "sublayer": lambda: _field(BlockSublayer(Layout(4).sublayers[0], make_block("affine", 2, 1, 2, 8)), 1, 4),
    "mera-affine-L4": lambda: _field(build_flow(Layout(4), block="affine", hidden=8, n_couplings=2), 1, 4),
    "mera-spline-L4": lambda: _field(build_flow(Layout(4), block="spline", hidden=8, n_couplings=2), 1, 4),
    "mera-b4-L8-C2": lambda: _field(build_flow(Layout(8, block_size=4), channels=2, block="affine", hidden=8, n_couplings=2), 2, 8),
    "mera-repeats2-laplace": lambda: _field(
        build_flow(Layout(4, repeats=2), block="affine", hidden=8, n_couplings=2, prior="laplace", learn_level_scale=True), 1, 4
    ),
    "tebd-L4": lambda: _field(build_flow(Layout(4, kind="tebd", depth=2), block="affine", hidden=8, n_couplings=2), 1, 4),
    "ode-block": lambda: _vector(make_block("ode", 2, 1, n_couplings=1, hidden=8, ode_steps=16)),
    "ode-z2-block": lambda: _vector(make_block("ode", 2, 1, n_couplings=2, hidden=8, ode_steps=16, equivariance="z2")),
    "ode-u1-block-C2": lambda: _vector(make_block("ode", 2, 2, n_couplings=1, hidden=8, ode_steps=16,
                                                  equivariance="u1")),
    "affine-z2-block": lambda: _vector(make_block("affine", 2, 1, n_couplings=4, hidden=8, equivariance="z2")),
    "spline-z2-block": lambda: _vector(make_block("spline", 2, 1, n_couplings=3, hidden=8, equivariance="z2")),
    "mera-ode-L4": lambda: _field(build_flow(Layout(4), block="ode", hidden=8, n_couplings=1, ode_steps=16), 1, 4),
    "mera-ode-cnn-L4": lambda: _field(build_flow(Layout(4), block="ode-cnn", hidden=4, layers=2, ode_steps=4), 1, 4),
    "mera-ode-cnn-u1-L4": lambda: _field(build_flow(Layout(4), 2, block="ode-cnn", hidden=4, layers=1, ode_steps=4,
                                                    equivariance="u1"), 2, 4),
    "mera-conv-L8": lambda: _field(build_flow(Layout(8), block="conv", hidden=8, layers=1, n_couplings=6), 1, 8),
    "mera-conv-z2-L8": lambda: _field(build_flow(Layout(8), block="conv", hidden=8, layers=1, equivariance="z2"), 1, 8),
    "mera-conv-C2-L4": lambda: _field(build_flow(Layout(4), 2, block="conv", hidden=8, layers=2), 2, 4),
    "mera-conv-spline-affine-L8": lambda: _field(build_flow(Layout(8), block="conv", hidden=8, layers=1, n_couplings=2,
                                                            conv_coupling="spline-affine"), 1, 8),
    "mera-conv-finest-L8": lambda: _field(build_flow(Layout(8), block="conv", hidden=8, layers=1, conv_finest=True),
                                          1, 8),
    "haar-block-b2": lambda: _vector(make_block("haar", 2, 1)),
    "haar-block-b4-C2": lambda: _vector(make_block("haar", 4, 2)),
    "haar-flow-L8": lambda: _field(haar_flow(Layout(8)), 1, 8),
    "haar-flow-b4-C2-L8": lambda: _field(haar_flow(Layout(8, block_size=4), channels=2), 2, 8),
    "mixed-blocks": lambda: _field(
        RGFlow(
            Layout(4),
            [make_block(k, 2, 1, 2, 8) for k in ("affine", "spline", "ode", "affine")],
            Prior(Layout(4), 1),
        ),
        1,
        4,
    ),
}


#: Fixed maps (no parameters): orthonormal instead of identity at init; nothing to perturb.
FIXED = {name for name in CASES if name.startswith("haar")}


def _make(name):
    torch.manual_seed(0)
    case = CASES[name]()
    t = case[1]
    if case[0] == "vector":
        D = t.matrix.shape[0] if name in FIXED else t._transforms[0].features if hasattr(t, "_transforms") else t.features
        shape = (3, D)
    else:
        shape = (3, case[2], case[3], case[3])
    return t, shape


def _perturbed(name):
    """The case with random weights (smaller for the cubic U(1) velocity, and for CNNs, whose 9 * width inputs per
    output would make 0.3 saturate the splines) and a random input batch."""
    t, shape = _make(name)
    _perturb(t, 0.005 if "cnn-u1" in name else 0.1 if "u1" in name or "cnn" in name or "conv" in name else 0.3)
    return t, shape, torch.randn(shape)


def _tol(name, exact):
    """ODE blocks are bijections up to the solver error (RK4, 16-64 steps); couplings to rounding."""
    return 1e-5 if "ode" in name or "mixed" in name else exact


def _perturb(t, scale=0.3):
    """Random weights; the cubic U(1) velocity gets smaller ones so that RK4(16) stays accurate."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


@pytest.mark.parametrize("name", list(CASES))
def test_identity_at_init(name, float64):
    """Trainable bijections start as the identity; fixed maps are orthonormal (J J^T = 1, log-det 0)."""
    t, shape = _make(name)
    x = torch.randn(shape)
    y, ld = t(x)
    assert y.shape == x.shape and ld.shape == (shape[0],)
    torch.testing.assert_close(ld, torch.zeros_like(ld), atol=1e-12, rtol=0)
    if name in FIXED:
        assert sum(p.numel() for p in t.parameters()) == 0
        J = torch.autograd.functional.jacobian(lambda v: t(v.reshape(1, *shape[1:]))[0].flatten(), x[0].flatten())
        torch.testing.assert_close(J @ J.T, torch.eye(len(J), dtype=J.dtype), atol=1e-12, rtol=0)
        return
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_and_logdets(name, float64):
    t, shape, x = _perturbed(name)
    y, ld_f = t(x)
    x2, ld_i = t.inverse(y)
    torch.testing.assert_close(x2, x, atol=_tol(name, 1e-8), rtol=0)
    torch.testing.assert_close(ld_f + ld_i, torch.zeros_like(ld_f), atol=_tol(name, 1e-8), rtol=0)
    assert not torch.allclose(y, x), "perturbed transform should not be the identity"


@pytest.mark.parametrize("name", list(CASES))
def test_same_numbers_without_gradients(name, float64):
    """Evaluation under ``torch.no_grad`` (sampling, ESS, Metropolis) equals the training-mode maps."""
    t, shape, x = _perturbed(name)
    y, ld_f = t(x)
    x2, ld_i = t.inverse(y)
    with torch.no_grad():
        y0, ld_f0 = t(x)
        x20, ld_i0 = t.inverse(y)
    for a, b in ((y0, y), (ld_f0, ld_f), (x20, x2), (ld_i0, ld_i)):
        torch.testing.assert_close(a, b.detach(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", list(CASES))
def test_logdet_matches_autograd_jacobian(name, float64):
    t, shape, x = _perturbed(name)
    _, ld = t(x)
    for b in range(1 if "cnn" in name else shape[0]):  # an ODE-CNN Jacobian costs ~10 s per sample
        f = lambda v: t(v.reshape(1, *shape[1:]))[0].flatten()
        J = torch.autograd.functional.jacobian(f, x[b].flatten())
        sign, logabs = torch.linalg.slogdet(J)
        assert sign != 0
        torch.testing.assert_close(ld[b], logabs, atol=_tol(name, 1e-7), rtol=1e-9)


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_reach_every_parameter(name, float64):
    t, shape, x = _perturbed(name)
    if name in FIXED:  # no parameters; the gradient reaches the input instead
        x = x.clone().requires_grad_(True)
        (t(x)[0] ** 2).sum().backward()
        torch.testing.assert_close(x.grad, 2 * x.detach(), atol=1e-12, rtol=0)  # orthonormal: |y| = |x|
        return
    if isinstance(t, RGFlow):
        loss = t.log_prob(x).sum() + t.sample(3)[1].sum()
    else:
        y, ld = t(x)
        loss = (y**2).sum() + ld.sum()
    loss.backward()
    for pname, p in t.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {pname}"


def test_flow_sample_log_prob_consistent(float64):
    flow = build_flow(Layout(8), block="spline", hidden=8, n_couplings=2, learn_level_scale=True)
    _perturb(flow)
    x, log_q = flow.sample(7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(flow.log_prob(x), log_q, atol=1e-10, rtol=1e-10)


def test_flow_float32_and_nflows_composition():
    from nflows.transforms.base import CompositeTransform

    flow = build_flow(Layout(4), hidden=8, n_couplings=2)
    x, log_q = flow.sample(4)
    assert x.dtype == torch.float32 and log_q.dtype == torch.float32
    composite = CompositeTransform([flow.sublayers[0], flow.sublayers[1]])
    y, ld = composite(x)
    assert y.shape == x.shape and ld.shape == (4,)


def test_flow_rejects_bad_fields():
    flow = build_flow(Layout(4), hidden=8, n_couplings=2)
    with pytest.raises(ValueError, match="x must have lattice side L=4"):
        flow(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        flow(torch.full((2, 1, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="C=1"):
        flow.log_prob(torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match="n \\(number of samples\\)"):
        flow.sample(0)
    with pytest.raises(ValueError, match="block kind 'bogus'"):
        build_flow(Layout(4), block="bogus")
