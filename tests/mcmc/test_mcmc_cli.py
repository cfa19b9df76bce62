import json

import numpy as np
import pytest

from rgflow.cli import main
from rgflow.ensemble import load_ensemble
from rgflow.physics.observables import primaries

TINY = ["--L", "4", "--block", "affine", "--hidden", "8", "--n-couplings", "2", "--batch-size", "16"]


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
    for key in ("observables", "tau_int", "acceptance", "n_samples", "n_used", "n_discarded", "reliable",
                "thermalized", "divergences", "seconds_per_step", "grad_evals_per_step"):
        assert key in res
    assert res["n_samples"] == 800 and res["grad_evals_per_step"] == 10
    assert res["n_used"] == 4 * (200 - res["n_discarded_per_chain"]) and 0 <= res["n_discarded_per_chain"] <= 50
    assert res["n_discarded"] == 4 * res["n_discarded_per_chain"] == res["n_samples"] - res["n_used"]
    assert set(res["reliable"]) == set(res["observables"]) == set(res["tau_int"])
    assert all(len(v) == 2 for v in res["tau_int"].values())
    data = np.load(out)
    assert data["series_abs_m"].shape == (4, 200) and data["fields"].shape == (4 * 20, 1, 4, 4)  # --save-every 10
    assert str(data["action"]) == "free" and json.loads(str(data["params"])) == {"m2": 1.0}
    assert out.with_suffix(".png").is_file()


@pytest.mark.parametrize("sampler", ["hmc", "local", "cluster", "cluster-hmc", "imh", "latent-hmc", "latent-local"])
def test_saved_ensemble_is_the_chain_every_kth_state(run, sampler, tmp_path):
    """The kept configurations are exactly the recorded chain states 0, k, 2k, ... of each chain."""
    out = tmp_path / "chain.npz"
    source = [str(run)] if sampler in ("imh", "latent-hmc", "latent-local") else ["--action", "free", "--m2", "1",
                                                                                 "--L", "4"]
    assert main(["mcmc", *source, "--sampler", sampler, "--n", "60", "--chains", "3", "--save-every", "7",
                 "--out", str(out), "--json"]) == 0
    ens = load_ensemble(out)
    assert ens.fields.shape == (3 * 9, 1, 4, 4) and ens.source == f"mcmc:{sampler}" and ens.log_w is None
    assert ens.action.name == "free" and ens.action.params == {"m2": 1.0} and ens.L == 4
    series = np.load(out)["series_e_link"][:, ::7].reshape(-1)
    np.testing.assert_allclose(primaries(ens.fields)["e_link"], series, rtol=1e-5, atol=1e-6)


def test_flow_samples_load_with_weights(run, tmp_path):
    out = tmp_path / "s.npz"
    assert main(["sample", str(run), "-n", "50", "--out", str(out)]) == 0
    ens = load_ensemble(out)
    assert ens.fields.shape == (50, 1, 4, 4) and ens.source == "flow" and ens.log_w.shape == (50,)
    np.testing.assert_allclose(ens.log_w.numpy(), -ens.action(ens.fields.double()).numpy() - np.load(out)["log_q"],
                               rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("content, problem", [(b"", "not a readable .npz"), (b"PK\x03\x04junk", "not a readable .npz")])
def test_corrupt_ensemble_is_refused(tmp_path, content, problem):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=problem):
        load_ensemble(bad)


def test_ensemble_without_fields_is_refused(tmp_path):
    bad = tmp_path / "other.npz"
    np.savez(bad, x=np.zeros(3))
    with pytest.raises(ValueError, match="lacks L, action, fields, params"):
        load_ensemble(bad)


@pytest.mark.parametrize("sampler", ["imh", "latent-hmc", "latent-local", "local"])
def test_samplers_on_a_trained_run(run, sampler, capsys):
    assert main(["mcmc", str(run), "--sampler", sampler, "--n", "100", "--chains", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["sampler"] == sampler and 0 < res["acceptance"] <= 1


def test_human_table(capsys):
    assert main(["mcmc", "--action", "phi4", "--L", "4", "--sampler", "local", "--n", "100", "--chains", "2"]) == 0
    out = capsys.readouterr().out
    assert "tau_int" in out and "abs_m" in out


def test_mcmc_sampler_options_and_short_chain_warning(capsys):
    """--leapfrog, --step-size, --device and --discard reach the sampler; a chain far shorter than
    50 tau_int is reported as unreliable, in the JSON and in the table."""
    args = ["mcmc", "--action", "phi4", "--L", "8", "--sampler", "hmc", "--n", "40", "--chains", "2", "--warmup", "0",
            "--leapfrog", "3", "--step-size", "0.01", "--device", "cpu", "--discard", "0"]
    assert main([*args, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["grad_evals_per_step"] == 3 and res["step_size"] == pytest.approx(0.01)
    assert res["n_discarded"] == 0 and res["n_used"] == res["n_samples"] == 80
    assert not all(res["reliable"].values())  # tiny steps: tau_int far beyond 40 / 50
    assert main(args) == 0
    assert "unreliable: chains shorter than 50 tau_int" in capsys.readouterr().out


@pytest.mark.parametrize("flag,value,match", [("--discard", "x", "--discard must be"), ("--leapfrog", "0", "--leapfrog"),
                                              ("--step-size", "-1", "--step-size"), ("--device", "tpu", "--device")])
def test_mcmc_bad_sampler_options(flag, value, match, capsys):
    code = main(["mcmc", "--action", "free", "--L", "4", "--sampler", "hmc", "--n", "10", flag, value])
    err = capsys.readouterr().err
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1
