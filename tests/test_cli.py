"""The command line end to end: train -> eval --json -> sample -> resume, TOML configs, demo, bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from rgflow.cli import main

TINY = ["--L", "4", "--hidden", "8", "--n-couplings", "2", "--batch-size", "16", "--eval-every", "5", "--ckpt-every", "5"]


def _run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_train_eval_sample_resume(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = _run(["train", "--action", "phi4", "--m2", "-4", "--lam", "8", *TINY, "--steps", "10", "--out", str(run)], capsys)
    assert code == 0, err
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt"):
        assert (run / name).is_file()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["params"] == {"m2": -4.0, "lam": 8.0} and cfg["steps"] == 10

    code, out, err = _run(["eval", str(run), "--samples", "256", "--json"], capsys)
    assert code == 0, err
    res = json.loads(out)  # exactly one JSON object on stdout
    for key in ("ess", "n_samples", "lnZ", "lnZ_err", "f_variational", "imh_acceptance", "observables"):
        assert key in res
    assert res["n_samples"] == 256 and 0 < res["ess"] <= 1
    assert set(res["observables"]) >= {"m", "abs_m", "chi", "chi_c", "binder", "e_link"}
    assert all(len(v) == 2 for v in res["observables"].values())

    code, out, _ = _run(["eval", str(run), "--samples", "256"], capsys)
    assert code == 0 and "ESS/N" in out and "abs_m" in out

    npz = tmp_path / "s.npz"
    code, _, err = _run(["sample", str(run), "-n", "7", "--out", str(npz)], capsys)
    assert code == 0, err
    data = np.load(npz)
    assert data["fields"].shape == (7, 1, 4, 4) and data["log_q"].shape == (7,) and data["S"].shape == (7,)
    assert str(data["action"]) == "phi4" and json.loads(str(data["params"])) == {"m2": -4.0, "lam": 8.0}

    code, _, err = _run(["train", "--out", str(run), "--resume", "--steps", "25"], capsys)
    assert code == 0, err
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["step"] == 25
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 25 and steps == sorted(steps)


def test_free_field_eval_reports_exact_lnZ(tmp_path, capsys):
    run = tmp_path / "free"
    assert main(["train", "--action", "free", "--m2", "1", *TINY, "--steps", "3", "--out", str(run)]) == 0
    capsys.readouterr()
    code, out, _ = _run(["eval", str(run), "--samples", "128", "--json"], capsys)
    res = json.loads(out)
    assert res["lnZ_exact"] == pytest.approx(2.687045629857508)
    assert res["f_variational"] + res["lnZ_exact"] == pytest.approx(res["kl"])


def test_toml_config_and_flag_override(tmp_path, capsys):
    toml = tmp_path / "c.toml"
    toml.write_text('action = "ising"\nT = 3.0\nL = 4\nhidden = 8\nsteps = 4\nbatch_size = 8\n')
    code, out, err = _run(["train", "--config", str(toml), "--T", "2.5", "--out", str(tmp_path / "r"), "--dry-run"], capsys)
    assert code == 0, err
    cfg = json.loads(out)
    assert cfg["action"] == "ising" and cfg["params"]["T"] == 2.5 and cfg["hidden"] == 8 and cfg["steps"] == 4
    assert not (tmp_path / "r").exists()


def test_malformed_toml_and_existing_run(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("L = = 4\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "2", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["train", *TINY, "--steps", "2", "--out", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_console_script_subprocess(tmp_path):
    """The installed entry point (python -m rgflow): a bad lattice size is one line on stderr, exit 2."""
    proc = subprocess.run([sys.executable, "-m", "rgflow", "train", "--L", "6", "--block-size", "4", "--steps", "1",
                           "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "L=6 is not allowed for block_size=4" in proc.stderr


def test_demo_writes_report(tmp_path, capsys):
    code, out, err = _run(["demo", "--minutes", "0.05", "--out", str(tmp_path / "demo")], capsys)
    assert code == 0, err
    for name in ("report.md", "report.json", "demo.png", "config.json", "checkpoint.pt"):
        assert (tmp_path / "demo" / name).is_file()
    rep = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert rep["evaluation"]["n_samples"] == 16384 and "observables" in rep["reference"]
