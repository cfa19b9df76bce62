"""Training through the one loop, the CLI end to end, determinism and bad input."""
import json

import numpy as np
import pytest
import torch

from rgflow.cli import main
from rgflow.diffusion.sampler import GaussianDenoiser, sample_fields
from rgflow.diffusion.train import DenoisingLoss, DiffusionModel, config_for_ensemble, load_diffusion_run
from rgflow.ensemble import FieldBatches, load_ensemble, save_samples
from rgflow.physics import make_action

L, M2 = 8, 0.5


@pytest.fixture(scope="module")
def free_ensemble(tmp_path_factory):
    """2048 exact free-field configurations (Cholesky), written in the common ensemble format."""
    from tests.diffusion.test_exact import _field_covariance

    path = tmp_path_factory.mktemp("ens") / "free.npz"
    cov = _field_covariance(L, M2)
    x = (torch.linalg.cholesky(cov) @ torch.randn(L * L, 2048, dtype=torch.float64,
                                                   generator=torch.Generator().manual_seed(0))).T
    save_samples(path, x.reshape(-1, 1, L, L).float(), make_action("free", m2=M2), L, "exact")
    return path


def test_a_briefly_trained_denoiser_moves_toward_the_analytic_one(free_ensemble):
    """On the free field the exact denoiser is known: 300 steps of denoising score matching bring
    the network's output at least 3x closer to it (mean squared distance over t and samples)."""
    torch.manual_seed(0)
    cfg = config_for_ensemble(str(free_ensemble), steps=300, width=16, depth=2, dtype="float64")
    ens = load_ensemble(free_ensemble)
    x = ens.fields.double()
    model = DiffusionModel.from_config(cfg, L, 1).double()
    model.coords.fit_scale(x)
    eye = torch.eye(L * L, dtype=torch.float64).reshape(-1, 1, L, L)
    R = model.coords.to_coords(eye)[0].reshape(L * L, L * L).T
    from tests.diffusion.test_exact import _field_covariance

    exact = GaussianDenoiser(R @ _field_covariance(L, M2) @ R.T, model.coords)
    gen = torch.Generator().manual_seed(1)
    y = model.coords.to_coords(x[:256])[0]

    def distance():
        total = 0.0
        for t in (0.2, 0.4, 0.6, 0.8):
            sig = model.schedule.sigma(torch.full((256,), t, dtype=torch.float64))
            v = y + model.coords.sigma_map(sig) * torch.randn(y.shape, dtype=torch.float64, generator=gen)
            with torch.no_grad():
                total += float(((model.denoiser(v, sig) - exact(v, sig)) ** 2).mean())
        return total

    before = distance()
    gen = torch.Generator().manual_seed(2)
    loss = DenoisingLoss(model, FieldBatches(x, gen), gen)
    opt = torch.optim.Adam(model.denoiser.parameters(), lr=2e-3)
    for _ in range(300):
        opt.zero_grad()
        loss(64).backward()
        opt.step()
    assert distance() < before / 3


def test_cli_train_sample_json_npz_and_resume(free_ensemble, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["diffuse", "train", "--data", str(free_ensemble), "--width", "8", "--depth", "2", "--batch-size", "16",
            "--eval-every", "5", "--ckpt-every", "5"]
    assert main([*base, "--schedule", "standard", "--steps", "10", "--out", str(run)]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["kind"] == "diffusion" and cfg["delta"] == 0 and cfg["level_scale"] == "global" and cfg["L"] == L
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("heldout_loss" in m.get("eval", {}) for m in metrics)
    assert main(["diffuse", "train", "--out", str(run), "--resume", "--steps", "15"]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 15
    capsys.readouterr()
    out = tmp_path / "s.npz"
    assert main(["diffuse", "sample", str(run), "--nfe", "7", "-n", "32", "--json", "--out", str(out), "--seed", "4"]) == 0
    res = json.loads(capsys.readouterr().out)  # exactly one JSON object
    assert res["nfe"] == 7 and res["n_samples"] == 32 and res["seconds"] > 0
    assert set(res["observables"]) >= {"m", "abs_m", "chi", "binder", "e_link"}
    ens = load_ensemble(out)
    assert ens.fields.shape == (32, 1, L, L) and ens.source == "diffusion:ode" and ens.action.name == "free"
    assert int(np.load(out)["nfe"]) == 7
    assert main(["diffuse", "sample", str(run), "--nfe", "7", "-n", "4", "--sampler", "sde"]) == 0
    assert "sde sampler, 7 network evaluations" in capsys.readouterr().out


def test_sampling_is_deterministic_with_a_seed(free_ensemble, tmp_path):
    run = tmp_path / "run"
    assert main(["diffuse", "train", "--data", str(free_ensemble), "--width", "8", "--depth", "1", "--steps", "3",
                 "--out", str(run)]) == 0
    _, model, _, _ = load_diffusion_run(run)
    a, _ = sample_fields(model, 8, 9, "sde", torch.Generator().manual_seed(5))
    b, _ = sample_fields(model, 8, 9, "sde", torch.Generator().manual_seed(5))
    c, _ = sample_fields(model, 8, 9, "sde", torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_input_is_one_line_exit_2(free_ensemble, tmp_path, capsys):
    flow_run = tmp_path / "flow"
    assert main(["train", "--L", "4", "--block", "affine", "--hidden", "8", "--n-couplings", "2", "--steps", "2",
                 "--out", str(flow_run)]) == 0
    diff_run = tmp_path / "diff"
    assert main(["diffuse", "train", "--data", str(free_ensemble), "--width", "8", "--depth", "1", "--steps", "2",
                 "--out", str(diff_run)]) == 0
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    odd = tmp_path / "odd.npz"
    save_samples(odd, torch.zeros(4, 1, 5, 5), make_action("free"), 5, "test")
    capsys.readouterr()
    cases = [
        (["diffuse", "train", "--data", str(tmp_path / "missing.npz"), "--steps", "2", "--out", str(tmp_path / "a")],
         "does not exist"),
        (["diffuse", "train", "--data", str(foreign), "--steps", "2", "--out", str(tmp_path / "a")], "lacks"),
        (["diffuse", "train", "--data", str(odd), "--steps", "2", "--out", str(tmp_path / "a")], "L=5 is not allowed"),
        (["diffuse", "train", "--steps", "2", "--out", str(tmp_path / "a")], "--data is required"),
        (["diffuse", "sample", str(diff_run), "--nfe", "0", "-n", "4"], "--nfe must be a positive integer"),
        (["diffuse", "sample", str(flow_run), "--nfe", "4", "-n", "4"], "is a flow run, not a diffusion run"),
        (["eval", str(diff_run)], "is a diffusion run, not a lattice flow run"),
        (["sample", str(diff_run), "-n", "3", "--out", str(tmp_path / "x.npz")], "is a diffusion run"),
        (["mcmc", str(diff_run), "--sampler", "latent-hmc"], "a diffusion run supports --sampler imh"),
        (["diffuse", "train", "--data", str(free_ensemble), "--levels", "1:", "--steps", "2", "--out",
          str(tmp_path / "a")], "levels > 0 needs --coords RUN"),
        (["diffuse", "eval", str(diff_run), "--nfe", "0"], "--nfe must be a positive integer"),
        (["train", "--out", str(diff_run), "--resume"], "is a diffusion run"),
        (["diffuse", "train", "--out", str(flow_run), "--resume"], "is a flow run"),
        (["diffuse", "train", "--data", str(free_ensemble), "--delta", "-1", "--steps", "2", "--out",
          str(tmp_path / "a")], "delta=-1.0 is not allowed"),
    ]
    for args, needle in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "a").exists()


def test_diffuse_eval_and_imh_and_the_hybrid_end_to_end(free_ensemble, tmp_path, capsys):
    """`rgflow diffuse eval --json` has the keys of `rgflow eval --json`; `rgflow mcmc RUN --sampler imh`
    runs on a diffusion run as on a flow run; the hybrid (--coords RUN --levels K:) trains and evaluates."""
    import json

    diff_run, flow_run, hybrid = tmp_path / "diff", tmp_path / "flow", tmp_path / "hybrid"
    assert main(["diffuse", "train", "--data", str(free_ensemble), "--width", "8", "--depth", "1", "--steps", "20",
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
        assert np.isfinite(res["lnZ"]) and res["n_samples"] == 64 and res["nfe"] == 5
        assert main(["mcmc", str(run), "--sampler", "imh", "--nfe", "5", "--n", "16", "--chains", "2", "--json",
                     "--out", str(tmp_path / "chain.npz"), "--save-every", "4"]) == 0
        mc = json.loads(capsys.readouterr().out)
        assert mc["sampler"] == "imh" and mc["n_samples"] == 32 and 0 < mc["acceptance"] <= 1
        assert "abs_m" in mc["cost_per_independent_sample"]


def test_encoded_pool_reuses_each_encoding_and_a_resumed_hybrid_run_continues_exactly(free_ensemble, tmp_path):
    """Trained-flow coordinates: fields are encoded a pool at a time and each encoding is served `reuse`
    times on average before the next pool; the pool is checkpointed, so a hybrid run resumed at step 6
    ends with the weights of an uninterrupted one."""
    from rgflow.diffusion.train import EncodedPool

    class CountingCoords:
        calls = 0

        def encode(self, x):
            CountingCoords.calls += 1
            return 2 * x.flatten(1), torch.zeros(len(x))

    x = load_ensemble(free_ensemble).fields[:512]
    gen = torch.Generator().manual_seed(0)
    pool = EncodedPool(CountingCoords(), FieldBatches(x, gen), gen, size=64, reuse=4, chunk=16)
    for _ in range(8):  # 8 batches of 32 = 4 x 64 served from the first pool
        w = pool(32)
        assert w.shape == (32, L * L) and bool((w[:, None] == pool.pool[None]).all(-1).any(-1).all())
    assert CountingCoords.calls == 4
    state = {k: v.clone() if torch.is_tensor(v) else v for k, v in pool.state().items()}
    g_state = gen.get_state()
    nxt = pool(32)
    assert CountingCoords.calls == 8  # a fresh pool of 64 in chunks of 16
    gen2 = torch.Generator()
    gen2.set_state(g_state)
    again = EncodedPool(CountingCoords(), FieldBatches(x, gen2), gen2, size=64, reuse=4, chunk=16)
    again.load(state)
    torch.testing.assert_close(again(32), nxt, rtol=0, atol=0)

    # a hybrid run killed right after its step-60 checkpoint and resumed ends with the weights of an
    # uninterrupted one: the pool (refilled at step 65) and its count are part of the checkpoint
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
