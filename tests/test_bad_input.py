"""Bad-input catalogue: every case gives one clear line naming the parameter (CLI: exit code 2, no
traceback) or a ValueError naming it (Python API), and leaves nothing half-written."""
import math

import pytest
import torch

from rgflow import Layout, build_flow, make_action
from rgflow.cli import main
from rgflow.config import TrainConfig
from rgflow.physics import free_field_lnZ, ising_lnZ_exact, phi4_action

TINY = ["--L", "4", "--block", "affine", "--hidden", "8", "--n-couplings", "2", "--batch-size", "8"]


@pytest.fixture
def run(tmp_path_factory):
    """A real (tiny) run folder, trained once for the whole module."""
    path = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", *TINY, "--steps", "2", "--out", str(path)]) == 0
    return path


CLI_CASES = [
    ("unknown action", ["train", "--action", "phi5", "--out", "X"], "invalid choice: 'phi5'"),
    ("L not a block multiple", ["train", "--L", "7", "--steps", "2", "--out", "X"], "L=7 is not allowed for block_size=2"),
    ("L smaller than block", ["train", "--L", "2", "--block-size", "4", "--steps", "2", "--out", "X"], "L=2 is not allowed"),
    ("odd block size", ["train", "--block-size", "3", "--steps", "2", "--out", "X"], "block_size=3 is not allowed"),
    ("negative steps", ["train", "--steps", "-5", "--out", "X"], "steps=-5 is not allowed"),
    ("negative minutes", ["train", "--minutes", "-1", "--out", "X"], "minutes=-1.0 is not allowed"),
    ("NaN minutes", ["train", "--minutes", "nan", "--out", "X"], "minutes=nan is not allowed"),
    ("zero batch", ["train", "--batch-size", "0", "--steps", "2", "--out", "X"], "batch_size=0 is not allowed"),
    ("NaN coupling", ["train", "--lam", "nan", "--steps", "2", "--out", "X"], "lam (action phi4) must be finite"),
    ("negative quartic", ["train", "--lam", "-1", "--steps", "2", "--out", "X"], "lam (action phi4) must be >= 0"),
    ("negative temperature", ["train", "--action", "ising", "--T", "-1", "--steps", "2", "--out", "X"], "T (action ising) must be > 0"),
    ("massless free field", ["train", "--action", "free", "--m2", "0", "--steps", "2", "--out", "X"], "m2 (action free) must be > 0"),
    ("coupling of another action", ["train", "--kappa", "0.2", "--steps", "2", "--out", "X"], "no coupling kappa"),
    ("unknown block", ["train", "--block", "bogus", "--out", "X"], "invalid choice: 'bogus'"),
    ("conv levels without MERA", ["train", "--block", "conv", "--flow", "tebd", "--depth", "2", "--steps", "2", "--out",
                                  "X"], "block='conv' needs flow='mera'"),
    ("unknown device", ["train", "--device", "gpu", "--steps", "2", "--out", "X"], "device='gpu' is not allowed"),
    ("absent device", ["train", "--device", "cuda:7", "--steps", "2", "--out", "X"], "device='cuda:7' is not available"),
    ("negative Jacobian penalty", ["train", "--block", "ode-cnn", "--ode-jacobian", "-1", "--out", "X"],
     "ode_jacobian=-1.0 is not allowed"),
    ("checkpointed adaptive solver", ["train", "--block", "ode-cnn", "--ode-method", "dopri5", "--ode-checkpoint",
                                      "--out", "X"], "ode_checkpoint=true is not allowed with ode_method='dopri5'"),
    ("unknown dtype", ["train", "--dtype", "float16", "--out", "X"], "invalid choice: 'float16'"),
    ("missing config file", ["train", "--config", "missing.toml", "--out", "X"], "config file 'missing.toml' does not exist"),
    ("eval of a non-run", ["eval", "not-a-run"], "not-a-run is not a run folder"),
    ("resume of a non-run", ["train", "--out", "X", "--resume"], "cannot resume"),
    ("zero samples", ["sample", "not-a-run", "-n", "0", "--out", "s.npz"], "-n (number of samples) must be a positive integer"),
    ("sample file not .npz", ["sample", "not-a-run", "-n", "3", "--out", "s.txt"], "--out must name an .npz file"),
    ("sample into a missing folder", ["sample", "not-a-run", "-n", "3", "--out", "nope/s.npz"], "does not exist or is not writable"),
    ("eval with one sample", ["eval", "not-a-run", "--samples", "1"], "--samples must be >= 2"),
    ("zero demo budget", ["demo", "--minutes", "0"], "--minutes must be > 0"),
    ("unknown subcommand", ["fly"], "invalid choice: 'fly'"),
    ("unknown sampler", ["mcmc", "--sampler", "gibbs"], "invalid choice: 'gibbs'"),
    ("flow sampler without a run", ["mcmc", "--sampler", "imh"], "sampler 'imh' needs a trained run"),
    ("local sampler on a non-local action", ["mcmc", "--action", "ising", "--sampler", "local", "--L", "4"],
     "sampler 'local' needs a nearest-neighbour action"),
    ("mcmc lattice size", ["mcmc", "--sampler", "hmc", "--L", "5"], "L=5 is not allowed"),
    ("mcmc too few steps", ["mcmc", "--sampler", "hmc", "--n", "2"], "--n must be >= 4"),
    ("mcmc output not .npz", ["mcmc", "--sampler", "hmc", "--out", "c.txt"], "--out must name an .npz file"),
    ("mcmc negative warm-up", ["mcmc", "--sampler", "hmc", "--warmup", "-1"], "--warmup must be >= 0"),
    ("mcmc negative save-every", ["mcmc", "--sampler", "hmc", "--save-every", "-2", "--out", "c.npz"],
     "--save-every must be >= 0"),
]


def _cli(args, capsys):
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    return code, capsys.readouterr().err


def _assert_one_line(code, err, needle):
    assert code == 2
    assert needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("name,args,needle", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(name, args, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = _cli(args, capsys)
    _assert_one_line(code, err, needle)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_cli_bad_config_files(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text("L = = 4\n")
    _assert_one_line(*_cli(["train", "--config", "bad.toml", "--out", "X"], capsys), "bad.toml' is not valid TOML")
    (tmp_path / "unknown.toml").write_text("steps = 3\nfoo = 1\n")
    _assert_one_line(*_cli(["train", "--config", "unknown.toml", "--out", "X"], capsys), "unknown config key(s) foo")
    assert not (tmp_path / "X").exists()


def test_cli_bad_run_folders(run, tmp_path, capsys):
    before = sorted(p.name for p in run.iterdir())
    _assert_one_line(*_cli(["train", *TINY, "--steps", "2", "--out", str(run)], capsys), "already holds a run")
    _assert_one_line(*_cli(["train", "--out", str(run), "--resume", "--hidden", "16"], capsys),
                     "incompatible config (hidden: checkpoint 8 vs config 16)")
    assert sorted(p.name for p in run.iterdir()) == before
    blocker = tmp_path / "file"
    blocker.write_text("")
    _assert_one_line(*_cli(["train", *TINY, "--steps", "2", "--out", str(blocker / "run")], capsys),
                     "cannot write to run folder")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((run / "config.json").read_text())
    (broken / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:100])
    _assert_one_line(*_cli(["eval", str(broken)], capsys), "checkpoint.pt: not a readable checkpoint")
    (broken / "config.json").write_text("{not json")
    _assert_one_line(*_cli(["eval", str(broken)], capsys), "config.json: not valid JSON")


API_CASES = [
    ("layout L", lambda: Layout(12, block_size=8), "L=12 is not allowed for block_size=8"),
    ("layout kind", lambda: Layout(8, kind="peps"), "kind='peps' is not allowed"),
    ("field wrong rank", lambda: build_flow(Layout(4)).log_prob(torch.zeros(4, 4)), "x must have shape [B, C, L, L]"),
    ("field wrong size", lambda: build_flow(Layout(4)).log_prob(torch.zeros(2, 1, 8, 8)), "x must have lattice side L=4"),
    ("field wrong dtype", lambda: build_flow(Layout(4)).log_prob(torch.zeros(2, 1, 4, 4, dtype=torch.int64)), "float32 or float64"),
    ("field with NaN", lambda: build_flow(Layout(4)).log_prob(torch.full((2, 1, 4, 4), math.nan)), "x contains NaN"),
    ("latent wrong channels", lambda: build_flow(Layout(4)).inverse(torch.zeros(2, 2, 4, 4)), "z must have C=1"),
    ("action wrong channels", lambda: make_action("complex-phi4")(torch.zeros(2, 1, 4, 4)), "phi must have C=2"),
    ("action non-square", lambda: phi4_action(torch.zeros(1, 1, 4, 6), -4, 8), "square lattice"),
    ("zero samples", lambda: build_flow(Layout(4)).sample(0), "n (number of samples) must be a positive integer"),
    ("unknown prior", lambda: build_flow(Layout(4), prior="cauchy"), "prior kind 'cauchy' is not allowed"),
    ("config dtype", lambda: TrainConfig(steps=1, dtype="float16"), "dtype='float16' is not allowed"),
    ("config no budget", lambda: TrainConfig(), "a budget is required"),
    ("config flat odd L", lambda: TrainConfig(steps=1, flow="flat", L=5), "L=5 is not allowed for flow='flat'"),
    ("massless exact lnZ", lambda: free_field_lnZ(4, 0.0), "m2 must be > 0"),
    ("Ising at T=0", lambda: ising_lnZ_exact(4, 0.0), "T must be > 0"),
]


@pytest.mark.parametrize("name,call,needle", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input(name, call, needle):
    with pytest.raises(ValueError) as info:
        call()
    assert needle in str(info.value)
    assert "\n" not in str(info.value)
