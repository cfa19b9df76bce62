"""Reverse-KL training reproduces exact partition functions (free field, Ising via HS relaxation)."""
import math

import pytest
import torch

from rgflow.config import TrainConfig
from rgflow.flows import build_flow
from rgflow.layout import Layout
from rgflow.physics import make_action
from rgflow.train import ReverseKL, build_model, evaluate, train
from rgflow.runs import open_run


def test_untrained_flow_has_vanishing_ess_and_positive_kl(tmp_path):
    cfg = TrainConfig(action="free", L=8, params={"m2": 1.0}, steps=1)
    res = evaluate(build_model(cfg), cfg.make_action(), 4096)
    assert res["ess"] < 0.01
    assert res["kl"] > 10  # identity flow + N(0,1) prior vs the free field: ~80 nats at L=8


def test_loss_is_variational_free_energy_with_prior_term():
    torch.manual_seed(0)
    flow = build_flow(Layout(4), hidden=8, n_couplings=2).double()
    action = make_action("free", m2=1.0)
    loss_fn = ReverseKL(flow, action)
    torch.manual_seed(1)
    loss = loss_fn(4096)
    torch.manual_seed(1)
    x, log_q = flow.sample(4096)
    torch.testing.assert_close(loss, (log_q + action(x)).mean())
    # at the identity flow, E[ln q] = -V (1 + ln 2 pi) / 2: the prior's entropy is included
    V = 16
    assert float(log_q.detach().mean()) == pytest.approx(-V * (1 + math.log(2 * math.pi)) / 2, abs=0.2)


def test_path_gradient_has_same_loss_value():
    torch.manual_seed(0)
    flow = build_flow(Layout(4), hidden=8, n_couplings=2).double()
    for p in flow.parameters():
        p.data += 0.1 * torch.randn_like(p)
    action = make_action("phi4")
    torch.manual_seed(3)
    a = ReverseKL(flow, action)(64)
    torch.manual_seed(3)
    b = ReverseKL(flow, action, path_gradient=True)(64)
    torch.testing.assert_close(a, b)
    b.backward()
    assert all(p.grad is not None for p in flow.parameters())


def _train_and_evaluate(path, n_eval, **overrides):
    cfg = TrainConfig(L=4, block="affine", batch_size=128, eval_every=10**6, seed=0, **overrides)
    train(cfg, path)
    run = open_run(path, "flow")
    cfg, flow = run.config, run.model
    return evaluate(flow, cfg.make_action(), n_eval, seed=1)


def test_free_field_training_reaches_exact_lnZ(tmp_path):
    res = _train_and_evaluate(tmp_path / "run", 8192, action="free", params={"m2": 1.0}, steps=1200)
    assert res["ess"] > 0.9
    assert abs(res["lnZ"] - res["lnZ_exact"]) < 3 * res["lnZ_err"]
    assert res["kl"] > -3 * res["f_variational_err"]


def test_ising_relaxation_reweighted_lnZ_matches_exact(tmp_path):
    # The Z2-odd flow covers both magnetisation sectors by construction; a plain flow trained by
    # (mode-seeking) reverse KL may settle in one and miss ln 2 of ln Z.
    res = _train_and_evaluate(tmp_path / "run", 16384, action="ising", params={"T": 2.269185314213022}, steps=1500,
                              equivariant=True)
    assert res["ess"] > 0.03 and res["lnZ_reliable"]
    assert abs(res["lnZ"] - res["lnZ_exact"]) < 3 * res["lnZ_err"]
    assert res["lnZ_err"] < 0.05


def test_ising_default_is_the_z2_mixture_and_reaches_exact_lnZ(tmp_path):
    # rgflow train --action ising symmetrises by default (--mixture auto -> z2): both sectors are
    # sampled, the sector check stays quiet and ln Z agrees with the exact value
    assert TrainConfig(action="ising", steps=1).mixture == "z2" and TrainConfig(steps=1).mixture is None
    res = _train_and_evaluate(tmp_path / "run", 16384, action="ising", params={"T": 2.269185314213022}, steps=500)
    assert abs(res["sector_balance"]) < 0.05 and res["lnZ_warnings"] == []
    assert abs(res["lnZ"] - res["lnZ_exact"]) < 3 * res["lnZ_err"] and res["lnZ_err"] < 0.05


def test_one_sector_flow_gets_the_sector_warning():
    """A flow that only ever proposes m > 0 on a symmetric action: ln Z would be ln 2 low; eval says so."""
    from rgflow.train.diagnostics import lnz_warnings

    cfg = TrainConfig(action="ising", L=4, steps=1, mixture=None)
    flow = build_model(cfg)
    with torch.no_grad():  # shift the field far into the m > 0 sector
        flow.prior.log_scale.fill_(-3.0)
    shifted = _Shifted(flow, 3.0)
    res = evaluate(shifted, cfg.make_action(), 2048)
    assert res["sector_balance"] == 1.0
    assert any("one Z2 sector" in w and "--mixture z2" in w for w in res["lnZ_warnings"])
    assert lnz_warnings({"lnZ_reliable": True, "sector_balance": 0.01}) == []


class _Shifted(torch.nn.Module):
    """``x = G(z) + c``: a density with all its mass near ``+c``."""

    def __init__(self, flow, c):
        super().__init__()
        self.flow, self.c = flow, c

    def sample(self, n, generator=None):
        x, log_q = self.flow.sample(n, generator=generator)
        return x + self.c, log_q


def test_kinetic_penalty_comes_from_the_sampling_pass_with_path_gradients():
    """With path gradients and the RNODE penalty both on, the penalty is that of the sampling pass,
    not of the detached re-evaluation: its gradient is the same with and without path gradients."""
    torch.manual_seed(0)
    flow = build_flow(Layout(4), block="ode", hidden=8, n_couplings=1, ode_steps=4).double()
    for p in flow.parameters():
        p.data += 0.1 * torch.randn_like(p)
    action = make_action("phi4")

    def grad(path_gradient, weight):
        flow.zero_grad()
        torch.manual_seed(3)
        ReverseKL(flow, action, path_gradient=path_gradient, kinetic_weight=weight)(16).backward()
        return torch.cat([p.grad.flatten() for p in flow.parameters()])

    penalty_plain = grad(False, 1.0) - grad(False, 0.0)
    penalty_path = grad(True, 1.0) - grad(True, 0.0)
    assert penalty_plain.abs().max() > 1e-6
    torch.testing.assert_close(penalty_path, penalty_plain, atol=1e-10, rtol=1e-8)


def test_jacobian_penalty_is_the_frobenius_norm_of_the_velocity_jacobian():
    """RNODE's second term: the ODE block's exact ``||df/dx||_F^2`` (from the trace's vector-Jacobian
    products), and ``ReverseKL(jacobian_weight=w)`` adds ``w E[sum_blocks int ||J||_F^2 dt]``."""
    from rgflow.flows.ode import ODEBlock

    torch.manual_seed(0)
    block = ODEBlock(4, hidden=8, steps=4).double()
    for p in block.parameters():
        p.data += 0.3 * torch.randn_like(p)
    x, t = torch.randn(5, 4, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    zeros = x.new_zeros(5)
    _, _, _, frobenius = block.dynamics(t, (x, zeros, zeros, zeros))
    for b in range(5):
        J = torch.autograd.functional.jacobian(lambda a: block.dynamics.velocity(a[None], t.reshape(1, 1))[0], x[b])
        assert float(frobenius[b].detach()) == pytest.approx(float((J**2).sum()), rel=1e-10)

    flow = build_flow(Layout(4), block="ode-cnn", hidden=4, layers=2, ode_steps=2).double()
    for p in flow.parameters():
        p.data += 0.1 * torch.randn_like(p)
    action = make_action("phi4")
    losses = []
    for weight in (0.0, 0.5):
        torch.manual_seed(3)
        losses.append(ReverseKL(flow, action, jacobian_weight=weight)(8).detach())
    penalty = sum(layer.jacobian.sum() for layer in flow.sublayers).detach() / 8
    assert float(penalty) > 0
    assert float(losses[1] - losses[0]) == pytest.approx(0.5 * float(penalty), rel=1e-10)


def test_forward_kl_on_a_free_field_ensemble_reaches_the_exact_likelihood(tmp_path):
    """Maximum likelihood (`rgflow train --data`) on exact free-field samples: the held-out NLL per
    site approaches the exact one, -mean(ln p) = mean(S) + ln Z, on the same held-out fields."""
    import json

    from rgflow.cli import main
    from rgflow.ensemble import save_samples
    from rgflow.physics import free_field_lnZ
    from tests.diffusion.test_gaussian import _field_covariance

    L, m2 = 4, 1.0
    cov = _field_covariance(L, m2)
    x = (torch.linalg.cholesky(cov) @ torch.randn(L * L, 4000, dtype=torch.float64,
                                                   generator=torch.Generator().manual_seed(0))).T.reshape(-1, 1, L, L)
    action = make_action("free", m2=m2)
    save_samples(tmp_path / "free.npz", x, action, L, "exact")
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "free.npz"), "--block", "affine", "--hidden", "16", "--dtype",
                 "float64", "--steps", "600", "--eval-every", "600", "--lr", "3e-3", "--batch-size", "128",
                 "--out", str(run)]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["action"] == "free" and cfg["L"] == L and cfg["data"].endswith("free.npz")
    ev = [json.loads(line)["eval"] for line in (run / "metrics.jsonl").read_text().splitlines() if "eval" in line][-1]
    from rgflow.ensemble import split_ensemble

    _, test_idx = split_ensemble(4000, 0.1, 0)
    exact = (action(x[test_idx]) + free_field_lnZ(L, m2)).double() / (L * L)
    assert ev["n_heldout"] == len(test_idx) == 400
    assert abs(ev["heldout_nll_per_site"] - float(exact.mean())) < 3 * float(exact.std() / 20) + 0.01
    assert ev["ess"] > 0.8  # and the same model, judged against the action, is a good sampler
