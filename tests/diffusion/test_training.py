"""Training through the one loop: the sampled weights, every level's share, the CLI end to end, bad input."""
import json
import math

import numpy as np
import pytest
import torch

from rgflow.cli import main
from rgflow.diffusion import DiffusionModel
from rgflow.diffusion.sampler import sample_fields
from rgflow.diffusion.train import EMA, DenoisingLoss
from rgflow.runs import open_run
from rgflow.ensemble import FieldBatches, load_ensemble, save_samples
from rgflow.layout import Layout
from rgflow.physics import free_field_two_point, make_action
from rgflow.physics.observables import estimate_observables
from tests.diffusion.test_gaussian import _field_covariance, _free_spectrum

L, M2 = 8, 0.5


@pytest.fixture(scope="module")
def free_ensemble(tmp_path_factory):
    """4096 exact free-field configurations (Cholesky), written in the common ensemble format."""
    path = tmp_path_factory.mktemp("ens") / "free.npz"
    chol = torch.linalg.cholesky(_field_covariance(L, M2))
    x = (chol @ torch.randn(L * L, 4096, dtype=torch.float64, generator=torch.Generator().manual_seed(0))).T
    save_samples(path, x.reshape(-1, 1, L, L).float(), make_action("free", m2=M2), L, "exact")
    return path


def test_ema_half_life_grows_with_training_so_the_sampled_weights_are_trained_weights():
    """A weight that jumps from its initial 0 to 1 after the first step: after 100 steps EDM's ramped
    EMA holds < 1e-6 of the initial value (a fixed decay of 0.999 would still hold 90 %)."""
    module = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(module.weight)
    ema = EMA(module, batch_size=64, halflife=500_000, rampup=0.05)
    with torch.no_grad():
        module.weight.fill_(1.0)
    for _ in range(100):
        ema.update()
    assert float(ema.shadow.weight) > 1 - 1e-6
    # and late in training the half-life is capped: the average reaches back about halflife samples
    ema.seen, ema.halflife = 10**9, 6400
    with torch.no_grad():
        module.weight.fill_(0.0)
    for _ in range(100):  # 100 steps of 64 samples = one half-life
        ema.update()
    assert abs(float(ema.shadow.weight) - 0.5) < 1e-6  # float32 weights


@pytest.mark.parametrize("size", [8, 16])
def test_every_level_gets_an_equal_share_of_the_loss(size):
    """An error of the same size on the top level alone (one variable, the zero mode) costs the same
    share of the loss at L = 8 and 16: 1/n_stages of it, not 1/L^2 (the old all-site average)."""
    model = DiffusionModel.build(_free_spectrum(size), Layout(size), "rg", "local", width=4, depth=2, odd=False).double()
    fields = torch.zeros(32, 1, size, size, dtype=torch.float64)
    loss = DenoisingLoss(model, lambda n: fields[:n], torch.Generator().manual_seed(0), make_action("free", m2=M2))
    top = model.stages[0]
    with torch.no_grad():
        top.net.out.bias.fill_(0.3)  # the top stage's output is off by 0.3 (its target is 0)
    value = float(loss(32))
    assert abs(value - 0.09 / model.coords.n_stages) < 1e-12
    assert loss.last_parts[0] == pytest.approx(0.09) and max(loss.last_parts[1:]) == 0.0


def test_the_force_target_of_a_gaussian_action_is_zero_and_carries_no_noise(free_ensemble):
    ens = load_ensemble(free_ensemble)
    model = DiffusionModel.build(_free_spectrum(L), Layout(L), "rg", "local", width=4, depth=2).double()
    loss = DenoisingLoss(model, FieldBatches(ens.fields.double(), torch.Generator()), torch.Generator(), ens.action)
    zs, _, gs = loss.encode(64)
    for z, g in zip(zs, gs):
        torch.testing.assert_close(g, -z, rtol=0, atol=1e-10)  # the pyramid whitens the free field exactly
    assert float(loss(64)) < 1e-20


def _cli_free_field_check(run, weights, nfe=8, n=4096):
    model = open_run(run, "diffusion", weights=weights).model
    x, _ = sample_fields(model, n, nfe, "ode", torch.Generator().manual_seed(11))
    est = estimate_observables(x.double())
    exact_chi = float(free_field_two_point(L, M2).sum())
    G = torch.fft.ifft2((torch.fft.fft2(x[:, 0].double()).abs() ** 2)).real / (L * L)
    g10 = 0.5 * (G[:, 1, 0] + G[:, 0, 1])
    exact_g10 = float(free_field_two_point(L, M2)[1, 0])
    chi, chi_err = est["chi"].mean, est["chi"].error
    assert abs(chi - exact_chi) < 3 * chi_err + 0.02 * exact_chi, (weights, chi, exact_chi)
    g, g_err = float(g10.mean()), float(g10.std() / math.sqrt(n))
    assert abs(g - exact_g10) < 3 * g_err + 0.02 * exact_g10, (weights, g, exact_g10)


@pytest.mark.parametrize("target", ["force", "dsm"])
def test_free_field_through_the_cli_defaults_from_the_sampled_weights(free_ensemble, tmp_path, target):
    """`rgflow diffuse train` with its defaults (denoising score matching, which must learn to leave the
    Gaussian alone; and the force target), then the EMA weights that `diffuse sample` uses and the
    raw ones reproduce chi and G(1,0) within 3 sigma + 2 % of the exact values."""
    run = tmp_path / target
    assert main(["diffuse", "train", "--data", str(free_ensemble), "--minutes", "0.5", "--target", target,
                 "--out", str(run)]) == 0
    for weights in ("ema", "raw"):
        _cli_free_field_check(run, weights)


def test_cli_train_sample_eval_json_npz_resume_and_schedules(free_ensemble, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["diffuse", "train", "--data", str(free_ensemble), "--width", "8", "--depth", "2", "--batch-size", "16",
            "--eval-every", "5", "--ckpt-every", "5"]
    assert main([*base, "--schedule", "ve", "--steps", "10", "--out", str(run)]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["kind"] == "diffusion" and cfg["noise_schedule"] == "ve" and cfg["net"] == "local" and cfg["L"] == L
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("heldout_loss_per_stage" in m.get("eval", {}) for m in metrics)
    assert main(["diffuse", "train", "--out", str(run), "--resume", "--steps", "15"]) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["step"] == 15 and state["extra"]["ema_seen"] == 15 * 16
    capsys.readouterr()
    out = tmp_path / "s.npz"
    assert main(["diffuse", "sample", str(run), "--nfe", "7", "-n", "32", "--json", "--out", str(out), "--seed", "4",
                 "--weights", "raw"]) == 0
    res = json.loads(capsys.readouterr().out)  # exactly one JSON object
    assert res["nfe"] == 7 and res["n_samples"] == 32 and res["seconds"] > 0 and res["weights"] == "raw"
    assert res["network_calls"] == 7 and res["lattice_nfe"] == 7
    assert set(res["observables"]) >= {"m", "abs_m", "chi", "binder", "e_link"}
    ens = load_ensemble(out)
    assert ens.fields.shape == (32, 1, L, L) and ens.source == "diffusion:ode" and ens.action.name == "free"
    assert int(np.load(out)["nfe"]) == 7
    assert main(["diffuse", "sample", str(run), "--nfe", "7", "-n", "4", "--sampler", "sde"]) == 0
    assert "sde sampler, 7 network evaluations per stage" in capsys.readouterr().out
    rg = tmp_path / "rg"
    assert main([*base, "--steps", "3", "--net", "unet", "--out", str(rg)]) == 0
    capsys.readouterr()
    assert main(["diffuse", "sample", str(rg), "--nfe", "3", "-n", "8", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    # the coarser a level, the more steps: 2, 4, 8, 16 Heun steps from the finest level to the top
    assert res["nfe"] == 3 and res["nfe_per_stage"] == [31, 15, 7, 3] and res["network_calls"] == 56
    assert res["lattice_nfe"] == pytest.approx((31 * 1 + 15 * 3 + 7 * 12 + 3 * 48) / 64)


def test_sampling_is_deterministic_with_a_seed(free_ensemble, tmp_path):
    run = tmp_path / "run"
    assert main(["diffuse", "train", "--data", str(free_ensemble), "--width", "8", "--depth", "2", "--steps", "3",
                 "--out", str(run)]) == 0
    model = open_run(run, "diffusion").model
    a, _ = sample_fields(model, 8, 9, "sde", torch.Generator().manual_seed(5))
    b, _ = sample_fields(model, 8, 9, "sde", torch.Generator().manual_seed(5))
    c, _ = sample_fields(model, 8, 9, "sde", torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_input_is_one_line_exit_2(free_ensemble, tmp_path, capsys):
    flow_run = tmp_path / "flow"
    assert main(["train", "--L", "4", "--block", "affine", "--hidden", "8", "--n-couplings", "2", "--steps", "2",
                 "--out", str(flow_run)]) == 0
    diff_run = tmp_path / "diff"
    assert main(["diffuse", "train", "--data", str(free_ensemble), "--width", "8", "--depth", "2", "--steps", "2",
                 "--out", str(diff_run)]) == 0
    old_run = tmp_path / "old"
    old_run.mkdir()
    old = json.loads((diff_run / "config.json").read_text())
    old.update(delta=4.0, level_scale="level", net_space="field", ema=0.999)
    (old_run / "config.json").write_text(json.dumps(old))
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    odd = tmp_path / "odd.npz"
    save_samples(odd, torch.zeros(4, 1, 5, 5), make_action("free"), 5, "test")
    capsys.readouterr()
    a = str(tmp_path / "a")
    cases = [
        (["diffuse", "train", "--data", str(tmp_path / "missing.npz"), "--steps", "2", "--out", a], "does not exist"),
        (["diffuse", "train", "--data", str(foreign), "--steps", "2", "--out", a], "lacks"),
        (["diffuse", "train", "--data", str(odd), "--steps", "2", "--out", a], "L=5 is not allowed"),
        (["diffuse", "train", "--steps", "2", "--out", a], "--data is required"),
        (["diffuse", "train", "--data", str(free_ensemble), "--schedule", "vp", "--steps", "2", "--out", a],
         "invalid choice: 'vp'"),
        (["diffuse", "train", "--data", str(free_ensemble), "--net", "mlp", "--steps", "2", "--out", a],
         "invalid choice: 'mlp'"),
        (["diffuse", "train", "--data", str(free_ensemble), "--depth", "1", "--steps", "2", "--out", a],
         "depth=1 is not allowed"),
        (["diffuse", "train", "--data", str(free_ensemble), "--ema-halflife", "-5", "--steps", "2", "--out", a],
         "ema_halflife=-5.0 is not allowed"),
        (["diffuse", "train", "--data", str(free_ensemble), "--ema-rampup", "2", "--steps", "2", "--out", a],
         "ema_rampup=2.0 is not allowed"),
        (["diffuse", "train", "--data", str(free_ensemble), "--levels", "1:", "--steps", "2", "--out", a],
         "levels > 0 needs --coords RUN"),
        (["diffuse", "train", "--data", str(free_ensemble), "--coords", str(flow_run), "--levels", "1:",
          "--schedule", "ve", "--steps", "2", "--out", a], "supports --schedule rg and --target dsm only"),
        (["diffuse", "sample", str(diff_run), "--nfe", "0", "-n", "4"], "--nfe must be a positive integer"),
        (["diffuse", "sample", str(diff_run), "--nfe", "3", "-n", "4", "--weights", "best"], "invalid choice: 'best'"),
        (["diffuse", "sample", str(flow_run), "--nfe", "4", "-n", "4"], "is a flow run, not a diffusion run"),
        (["diffuse", "sample", str(old_run), "--nfe", "4", "-n", "4"], "earlier diffusion format"),
        (["eval", str(diff_run), "--samples", "1"], "--samples must be >= 2"),
        (["sample", str(diff_run), "-n", "3", "--out", str(tmp_path / "x.npz")], "is a diffusion run"),
        (["mcmc", str(diff_run), "--sampler", "latent-hmc"], "a diffusion run supports --sampler imh"),
        (["mcmc", str(diff_run), "--sampler", "imh", "--weights", "best"], "invalid choice: 'best'"),
        (["diffuse", "eval", str(diff_run), "--nfe", "0"], "--nfe must be a positive integer"),
        (["train", "--out", str(diff_run), "--resume"], "is a diffusion run"),
        (["diffuse", "train", "--out", str(flow_run), "--resume"], "is a flow run"),
    ]
    for args, needle in cases:
        try:
            code = main(args)
        except SystemExit as exc:  # argparse's own refusals (invalid choices)
            code = exc.code
        assert code == 2, args
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "a").exists()


def test_diffuse_eval_and_imh_and_the_hybrid_end_to_end(free_ensemble, tmp_path, capsys):
    """`rgflow diffuse eval --json` has the keys of `rgflow eval --json`; `rgflow mcmc RUN --sampler imh`
    runs on a diffusion run as on a flow run; the hybrid (--coords RUN --levels K:) trains and evaluates."""
    diff_run, flow_run, hybrid = tmp_path / "diff", tmp_path / "flow", tmp_path / "hybrid"
    assert main(["diffuse", "train", "--data", str(free_ensemble), "--width", "8", "--depth", "2", "--steps", "20",
                 "--out", str(diff_run)]) == 0
    assert main(["train", "--action", "free", "--L", str(L), "--m2", str(M2), "--steps", "20", "--hidden", "8",
                 "--out", str(flow_run)]) == 0
    assert main(["eval", str(flow_run), "--samples", "64", "--json"]) == 0
    flow_keys = set(json.loads(capsys.readouterr().out))
    for run, extra in ((diff_run, []), (hybrid, ["--coords", str(flow_run), "--levels", "1:"])):
        if extra:
            assert main(["diffuse", "train", "--data", str(free_ensemble), *extra, "--width", "8", "--steps", "20",
                         "--out", str(run)]) == 0
            assert json.loads((run / "config.json").read_text())["levels"] == 1
        capsys.readouterr()
        assert main(["diffuse", "eval", str(run), "--nfe", "5", "--samples", "64", "--json"]) == 0
        res = json.loads(capsys.readouterr().out)
        assert flow_keys <= set(res) and {"lnZ", "lnZ_err", "ess", "pareto_k", "nfe", "seconds_per_sample"} <= set(res)
        assert np.isfinite(res["lnZ"]) and res["n_samples"] == 64 and res["nfe"] == 5 and res["weights"] == "ema"
        assert main(["mcmc", str(run), "--sampler", "imh", "--nfe", "5", "--n", "16", "--chains", "2", "--json",
                     "--out", str(tmp_path / "chain.npz"), "--save-every", "4", "--weights", "raw"]) == 0
        mc = json.loads(capsys.readouterr().out)
        assert mc["sampler"] == "imh" and mc["n_samples"] == 32 and 0 < mc["acceptance"] <= 1
        assert "abs_m" in mc["cost_per_independent_sample"]


def test_encoded_pool_and_a_resumed_hybrid_run_continues_exactly(free_ensemble, tmp_path):
    """A hybrid run killed right after its step-60 checkpoint and resumed ends with the weights of an
    uninterrupted one: the pool (refilled at step 65) and its count are part of the checkpoint."""
    import signal
    import subprocess
    import sys

    from tests.train.test_fault_tolerance import _KILL_AT_CHECKPOINT

    flow_run = tmp_path / "flow"
    assert main(["train", "--action", "free", "--L", str(L), "--m2", str(M2), "--steps", "5", "--hidden", "8",
                 "--out", str(flow_run)]) == 0
    cmd = ["diffuse", "train", "--data", str(free_ensemble), "--coords", str(flow_run), "--levels", "1:", "--width", "8",
           "--batch-size", "512", "--ckpt-every", "20", "--eval-every", "1000", "--steps", "80"]
    assert main([*cmd, "--out", str(tmp_path / "straight")]) == 0
    proc = subprocess.run([sys.executable, "-c", _KILL_AT_CHECKPOINT, "60", *cmd, "--out", str(tmp_path / "cut")],
                          capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert main(["diffuse", "train", "--out", str(tmp_path / "cut"), "--resume"]) == 0
    a, b = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=True) for r in ("straight", "cut"))
    assert a["step"] == b["step"] == 80
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["extra"]["ema"]:
        assert torch.equal(a["extra"]["ema"][k], b["extra"]["ema"][k]), k
