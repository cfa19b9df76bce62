"""``rgflow images ...`` end to end on tiny runs: an image run and a lattice run, and bad input."""
import json

import pytest

from rgflow.cli import main


def _json(args, capsys) -> dict:
    capsys.readouterr()
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("images") / "photo8"
    assert main(["images", "train", "--data", "photo", "--size", "8", "--steps", "30", "--hidden", "8",
                 "--n-couplings", "2", "--eval-every", "15", "--out", str(run)]) == 0
    return run


def test_train_writes_a_resumable_run_with_heldout_bits_per_dim(image_run, capsys):
    cfg = json.loads((image_run / "config.json").read_text())
    assert cfg["kind"] == "images" and cfg["data"] == "photo" and cfg["size"] == 8 and cfg["flow"] == "mera"
    evals = [json.loads(x)["eval"] for x in (image_run / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert len(evals) == 2 and {"heldout_bits_per_dim", "heldout_bits_per_dim_err", "n_test", "epoch"} <= set(evals[0])
    assert 3 < evals[-1]["heldout_bits_per_dim"] < 8
    res = _json(["images", "eval", str(image_run), "--json"], capsys)
    assert res == {**_json(["eval", str(image_run), "--json"], capsys), "seconds": res["seconds"],
                   "seconds_per_sample": res["seconds_per_sample"]}  # `images eval` is `rgflow eval`
    assert {"bits_per_dim", "bits_per_dim_err", "n_test", "n_params", "seconds", "kind", "run"} <= set(res)
    assert res["kind"] == "images" and res["n_test"] == evals[-1]["n_test"] and res["n_params"] > 1000
    assert res["bits_per_dim"] == pytest.approx(evals[-1]["heldout_bits_per_dim"], abs=5 * res["bits_per_dim_err"])
    assert main(["images", "train", "--out", str(image_run), "--resume", "--steps", "40"]) == 0
    assert json.loads((image_run / "config.json").read_text())["steps"] == 40


@pytest.mark.parametrize("command,keys", [
    (["sample", "-n", "2", "--temperatures", "1,0"], {"temperatures", "coarse_levels_from"}),
    (["mix", "--pairs", "2"], set()),
    (["rf", "-n", "2"], {"radius", "levels"}),
    (["progressive", "--variants", "2"], set()),
    (["inpaint", "--images", "2", "--steps", "3", "--mask-size", "2"], {"cone", "all", "n_latents"}),
])
def test_every_demo_writes_its_figure(image_run, tmp_path, capsys, command, keys):
    res = _json(["images", command[0], str(image_run), *command[1:], "--out", str(tmp_path), "--json"], capsys)
    assert keys <= set(res) and (tmp_path / res["figure"].rsplit("/", 1)[-1]).is_file()
    if command[0] == "inpaint":
        assert res["cone"]["n_changed"] < res["all"]["n_changed"] == res["n_latents"] == 64


def test_demos_and_eval_work_on_a_lattice_run(tmp_path, capsys):
    run = tmp_path / "phi4"
    assert main(["train", "--L", "8", "--steps", "20", "--hidden", "8", "--out", str(run)]) == 0
    for demo in (["mix", "--pairs", "2"], ["rf", "-n", "2"], ["inpaint", "--images", "2", "--steps", "2"]):
        res = _json(["images", demo[0], str(run), *demo[1:], "--json"], capsys)
        assert res["kind"] == "lattice" and (run / "figures").is_dir()
    res = _json(["images", "eval", str(run), "--samples", "256", "--json"], capsys)
    assert res["kind"] == "flow" and {"ess", "lnZ", "lnZ_err", "pareto_k", "n_params"} <= set(res)


def test_flat_baseline_has_matched_parameters_and_no_demos(tmp_path, capsys):
    mera = _json(["images", "train", "--data", "photo", "--size", "8", "--steps", "1", "--dry-run",
                  "--out", str(tmp_path / "m")], capsys)
    flat = _json(["images", "train", "--data", "photo", "--size", "8", "--flow", "flat", "--steps", "2",
                  "--out", str(tmp_path / "f"), "--dry-run"], capsys)
    assert mera["flat_width"] is None and flat["flat_width"] > 0
    assert main(["images", "train", "--data", "photo", "--size", "8", "--flow", "flat", "--steps", "2",
                 "--out", str(tmp_path / "f")]) == 0
    res = _json(["images", "eval", str(tmp_path / "f"), "--json"], capsys)
    from rgflow.images.train import ImageConfig, build_image_model, count_parameters

    rg = count_parameters(build_image_model(ImageConfig(data="photo", size=8, steps=1)))
    assert abs(res["n_params"] - rg) < 0.1 * rg
    capsys.readouterr()
    assert main(["images", "mix", str(tmp_path / "f")]) == 2
    assert "the demos need the hierarchical (mera) flow" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["images", "train", "--data", "cifar", "--steps", "1", "--out", "x"], "invalid choice: 'cifar'"),
    (["images", "train", "--data", "photo", "--size", "12", "--steps", "1", "--out", "x"],
     "size=12 is not allowed for data='photo'; allowed: 8, 16, 32"),
    (["images", "train", "--block-size", "3", "--steps", "1", "--out", "x"], "block_size=3 is not allowed"),
    (["images", "train", "--alpha", "0.7", "--steps", "1", "--out", "x"], "alpha=0.7 is not allowed"),
    (["images", "eval", "no-such-run"], "is not a run folder"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_demo_flags_are_checked(image_run, capsys):
    capsys.readouterr()
    assert main(["images", "sample", str(image_run), "--temperatures", "1,x"]) == 2
    assert "--temperatures must be comma-separated numbers" in capsys.readouterr().err
    assert main(["images", "inpaint", str(image_run), "--mask-size", "8"]) == 2
    assert "--mask-size must be between 1 and 7" in capsys.readouterr().err
