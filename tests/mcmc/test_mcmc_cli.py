import json

import numpy as np
import pytest

from rgflow.cli import main

TINY = ["--L", "4", "--block", "affine", "--hidden", "8", "--couplings", "2", "--batch-size", "16"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("mcmc") / "run"
    assert main(["train", "--action", "free", "--m2", "1", *TINY, "--steps", "30", "--out", str(path)]) == 0
    return path


def test_physical_hmc_without_a_run_writes_chain_and_figure(tmp_path, capsys):
    out = tmp_path / "chain.npz"
    code = main(["mcmc", "--action", "free", "--m2", "1", "--L", "4", "--sampler", "hmc", "--n", "200", "--chains", "4",
                 "--json", "--out", str(out)])
    res = json.loads(capsys.readouterr().out)
    assert code == 0
    for key in ("observables", "tau_int", "acceptance", "n_samples", "seconds_per_step", "grad_evals_per_step"):
        assert key in res
    assert res["n_samples"] == 800 and res["grad_evals_per_step"] == 10
    assert all(len(v) == 2 for v in res["tau_int"].values())
    data = np.load(out)
    assert data["series_abs_m"].shape == (4, 200) and data["final"].shape == (4, 1, 4, 4)
    assert str(data["action"]) == "free" and json.loads(str(data["params"])) == {"m2": 1.0}
    assert out.with_suffix(".png").is_file()


@pytest.mark.parametrize("sampler", ["imh", "latent-hmc", "latent-local", "local"])
def test_samplers_on_a_trained_run(run, sampler, capsys):
    assert main(["mcmc", str(run), "--sampler", sampler, "--n", "100", "--chains", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["sampler"] == sampler and 0 < res["acceptance"] <= 1


def test_human_table(capsys):
    assert main(["mcmc", "--action", "phi4", "--L", "4", "--sampler", "local", "--n", "100", "--chains", "2"]) == 0
    out = capsys.readouterr().out
    assert "tau_int" in out and "abs_m" in out
