"""Convolutional coupling levels (block kind 'conv'): symmetries, L-independence, the affine kind, --init-from."""
import pytest
import torch

from rgflow.config import TrainConfig
from rgflow.flows import build_flow
from rgflow.flows.conv import ConvCouplingStack, PeriodicConv3x3
from rgflow.layout import Layout
from tests.flows import perturbed


def _perturbed(module):
    return perturbed(module, 0.1, seed=1)


@pytest.mark.parametrize("m", [1, 2, 5, 8])
def test_periodic_conv_is_the_circular_conv2d_with_its_state_dict(m, float64):
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")
    conv = PeriodicConv3x3(3, 4)
    conv.load_state_dict(ref.state_dict())  # same keys and shapes: saved runs load unchanged
    x = torch.randn(2, 3, m, m)
    torch.testing.assert_close(conv(x), ref(x), rtol=0, atol=1e-12)
    xl = x.contiguous(memory_format=torch.channels_last)  # the memory format the couplings feed it
    torch.testing.assert_close(conv(xl), ref(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["affine", "spline", "spline-affine"])
def test_stack_round_trip_logdet_and_oddness(kind, float64):
    stack = _perturbed(ConvCouplingStack(1, 4, kind, hidden=8, layers=1, equivariance="z2"))
    y = torch.randn(2, 1, 4, 4)
    z, ld = stack(y, level=1)
    y2, ld2 = stack(z, level=1, inverse=True)
    torch.testing.assert_close(y2, y, atol=1e-10, rtol=0)
    torch.testing.assert_close(ld + ld2, torch.zeros_like(ld), atol=1e-10, rtol=0)
    zm, ldm = stack(-y, level=1)
    torch.testing.assert_close(zm, -z, atol=1e-12, rtol=0)  # odd map, even log-det
    torch.testing.assert_close(ldm, ld, atol=1e-12, rtol=0)
    J = torch.autograd.functional.jacobian(lambda v: stack(v.view(1, 1, 4, 4), 1)[0].flatten(), y[0].flatten())
    torch.testing.assert_close(ld[0], torch.linalg.slogdet(J)[1], atol=1e-9, rtol=0)


def test_spline_affine_is_the_identity_at_init_and_moves_the_conditional_scale(float64):
    y = torch.randn(2, 1, 4, 4)
    stack = ConvCouplingStack(1, 2, "spline-affine", hidden=8, layers=1)
    z, ld = stack(y, level=0)
    torch.testing.assert_close(z, y, atol=1e-12, rtol=0)
    torch.testing.assert_close(ld, torch.zeros(2), atol=1e-12, rtol=0)
    with torch.no_grad():  # the log-scale's output bias: s = 3 tanh(0.5 / 3) at every moved site
        for c in stack.couplings:
            c.out.bias[1] = 0.5
    s = 3.0 * torch.tanh(torch.tensor(0.5 / 3.0))
    z, ld = stack(20 * y, level=0)  # also beyond the spline's range [-6, 6], where the spline is the identity
    torch.testing.assert_close(z, 20 * y * torch.exp(s), atol=1e-9, rtol=0)  # the pair moves every site once
    torch.testing.assert_close(ld, torch.full((2,), 16 * s.item()), atol=1e-9, rtol=0)


def test_level_index_changes_the_map(float64):
    stack = _perturbed(ConvCouplingStack(1, 2, "spline", hidden=8, layers=1))
    y = torch.randn(2, 1, 4, 4)
    assert not torch.allclose(stack(y, 0)[0], stack(y, 2)[0])


def test_conv_flow_is_translation_invariant_and_z2_even(float64):
    flow = _perturbed(build_flow(Layout(16, depth=2), block="conv", hidden=8, layers=1, equivariance="z2"))
    x = torch.randn(3, 1, 16, 16)
    lq = flow.log_prob(x)
    period = flow.layout.translation_period
    assert period == 4
    torch.testing.assert_close(flow.log_prob(torch.roll(x, (period, -period), dims=(-2, -1))), lq, atol=1e-9, rtol=0)
    torch.testing.assert_close(flow.log_prob(-x), lq, atol=1e-9, rtol=0)
    assert not torch.allclose(flow.log_prob(torch.roll(x, 1, dims=-1)), lq, atol=1e-6)  # the test can fail


def test_parameters_independent_of_L_and_a_plain_weight_copy(float64):
    # 4 couplings: random perturbations of 8 couplings x 5 levels compose into splines steep enough to lose
    # digits in sample -> log_prob (3e-3 here); trained 8-coupling flows agree to 1e-12 (docs/scale.md)
    small = _perturbed(build_flow(Layout(8), block="conv", hidden=8, layers=1, n_couplings=4))
    big = build_flow(Layout(32), block="conv", hidden=8, layers=1, n_couplings=4)
    assert sum(p.numel() for p in small.parameters()) == sum(p.numel() for p in big.parameters())
    big.load_state_dict(small.state_dict())  # strict: the same keys and shapes at every L
    x, log_q = big.sample(4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(big.log_prob(x), log_q, atol=1e-9, rtol=1e-9)
    with pytest.raises(ValueError, match="learn_level_scale=True is not allowed with block 'conv'"):
        build_flow(Layout(8), block="conv", learn_level_scale=True)
    with pytest.raises(ValueError, match="equivariance='u1' is not available for block kind 'conv'"):
        build_flow(Layout(8), 2, block="conv", equivariance="u1")


def test_init_from_a_smaller_lattice_copies_every_weight(tmp_path):
    from rgflow.runs import open_run
    from rgflow.train import train
    from rgflow.train.flow import build_model, init_from_run

    common = dict(action="phi4", block="conv", hidden=8, layers=1, eval_every=10**9, log_every=1)
    train(TrainConfig(L=8, steps=2, **common), tmp_path / "L8")
    cfg = TrainConfig(L=16, steps=1, init_from=str(tmp_path / "L8"), **common)
    assert cfg.learn_level_scale is False
    flow = build_model(cfg)
    init_from_run(cfg, flow)
    small = open_run(tmp_path / "L8", "flow").model
    for (name, a), (_, b) in zip(small.state_dict().items(), flow.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    with pytest.raises(ValueError, match="block='conv' needs flow='mera'"):
        TrainConfig(L=8, flow="tebd", block="conv", depth=2, steps=1)


def test_own_finest_stack_is_independent_of_L_and_refused_elsewhere(float64):
    small = _perturbed(build_flow(Layout(8), block="conv", hidden=8, layers=1, conv_finest=True))
    big = build_flow(Layout(16), block="conv", hidden=8, layers=1, conv_finest=True)
    assert sum(p.numel() for p in small.parameters()) == 2 * sum(p.numel() for p in small.conv_stack.parameters())
    big.load_state_dict(small.state_dict())
    x = torch.randn(2, 1, 8, 8)
    shared = build_flow(Layout(8), block="conv", hidden=8, layers=1)
    shared.load_state_dict({k: v for k, v in small.state_dict().items() if k.startswith("conv_stack")})
    assert not torch.allclose(small.log_prob(x), shared.log_prob(x))  # level 0 runs its own couplings
    with pytest.raises(ValueError, match="conv_finest=True is not allowed with block 'spline'"):
        build_flow(Layout(8), block="spline", conv_finest=True)


def test_conv_run_on_the_free_field_through_the_cli_against_exact_answers(tmp_path, capsys):
    """The user's path: `rgflow train --block conv`, the saved run folder, `rgflow eval --by-level --json`;
    ln Z, chi = 1/m^2 and the exact KL (F_var + ln Z_exact) against the split's total."""
    import json

    from rgflow.cli.main import main

    run, m2 = tmp_path / "free", 0.5
    assert main(["train", "--action", "free", "--m2", str(m2), "--L", "8", "--block", "conv", "--hidden", "8",
                 "--layers", "1", "--steps", "100", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--samples", "4096", "--by-level", "--by-level-samples", "256",
                 "--by-level-inner", "16", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["ess"] > 0.2 and res["pareto_k"] < 0.7
    assert abs(res["lnZ"] - res["lnZ_exact"]) < 4 * res["lnZ_err"]
    chi, chi_err = res["observables"]["chi"]
    assert abs(chi - 1 / m2) < 4 * chi_err
    split = res["by_level"]
    assert abs(split["kl_total"] - res["kl"]) < 4 * split["kl_total_err"]
