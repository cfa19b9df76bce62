"""One set of defaults and one name per concept: the Python API, the config and the CLI agree."""
import json

import pytest
import torch

from rgflow.cli import main
from rgflow.config import TrainConfig
from rgflow.flows import build_flow, make_block
from rgflow.layout import Layout
from rgflow.train import build_model, load_checkpoint, train


def _shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("block", [None, "spline"])
@pytest.mark.parametrize("action,spline", [("phi4", {"prior": "normal-wall"}), ("ising", {"num_bins": 12, "tail_bound": 10.0})])
def test_build_flow_defaults_equal_the_training_config(action, spline, block):
    """The README's Python snippet builds the flow `rgflow train` trains (same blocks, width, prior, spline range;
    phi4 gets the walled prior),
    by default (conv levels of width 16, fixed level scales) and with per-cell spline blocks (width 32, learned
    level scales); for the Ising model `rgflow train` trains its Z2 mixture (--mixture auto)."""
    from rgflow.flows.conv import ConvCouplingStack
    from rgflow.flows.symmetrize import SymmetrizedFlow

    api = build_flow(Layout(8), block=block, **spline)
    cfg = TrainConfig(action=action, L=8, steps=1, **({"block": block} if block else {}))
    cli = build_model(cfg)
    if action == "ising":
        assert isinstance(cli, SymmetrizedFlow) and cli.group == "z2"
        cli = cli.flow
    assert _shapes(api) == _shapes(cli)
    assert api.prior.kind == cli.prior.kind == cfg.prior
    if block is None:
        assert (cfg.block, cfg.hidden, cfg.learn_level_scale) == ("conv", 16, False)
        assert isinstance(api.conv_stack, ConvCouplingStack) and isinstance(cli.conv_stack, ConvCouplingStack)
        couplings = [api.conv_stack.couplings[0], cli.conv_stack.couplings[0]]
        assert {(c.K, c.bound) for c in couplings} == {(cfg.num_bins, cfg.tail_bound)}
        assert not isinstance(getattr(api.prior, "log_scale", None), torch.nn.Parameter)  # fixed level scales
        return
    assert (cfg.hidden, cfg.learn_level_scale) == (32, True)
    assert type(api.sublayers[0].transform._transforms[0]) is type(cli.sublayers[0].transform._transforms[0])
    spl = cli.sublayers[0].transform._transforms[0]
    assert (spl.num_bins, spl.tail_bound) == (cfg.num_bins, cfg.tail_bound)
    assert (api.sublayers[0].transform._transforms[0].tail_bound == spl.tail_bound)
    assert isinstance(api.prior.log_scale, torch.nn.Parameter)  # learned level scales, as in the CLI


@pytest.mark.parametrize("action,params,prior", [
    ("phi4", {}, "normal-wall"), ("phi4", {"m2": 1.0, "lam": 0.0}, "normal"), ("free", {}, "normal"),
    ("ising", {}, "normal"), ("phi4-hopping", {}, "normal"), ("complex-phi4", {}, "normal"),
])
def test_the_default_prior_follows_the_action(action, params, prior):
    """The walled prior for phi^4 with lam > 0 (quartic tails), the normal prior for Gaussian-tailed and
    unmeasured actions; an explicit --prior wins; a saved config keeps its prior."""
    cfg = TrainConfig(action=action, params=params, L=8, steps=1)
    assert cfg.prior == prior
    assert TrainConfig(action=action, params=params, L=8, steps=1, prior="laplace").prior == "laplace"
    assert TrainConfig.from_dict(cfg.to_dict()).prior == prior


def test_the_default_block_follows_the_hierarchy():
    """conv on the MERA; spline where conv does not apply (TEBD, flat, ODE levels), in the config and the API."""
    assert TrainConfig(steps=1, flow="tebd").block == "spline"
    assert TrainConfig(steps=1, flow="flat").hidden == 32
    assert TrainConfig(steps=1, ode_levels="1:").block == "spline"
    assert TrainConfig(steps=1, block="conv", hidden=8).hidden == 8
    # couplings per level: 8 for conv (they beat 4 at equal wall time, docs/scale.md), 4 for the per-cell blocks
    assert [TrainConfig(steps=1, block=b).n_couplings for b in ("conv", "spline", "affine")] == [8, 4, 4]
    assert TrainConfig(steps=1, flow="flat").n_couplings == 4
    assert TrainConfig(steps=1, n_couplings=6).n_couplings == 6
    assert len(build_flow(Layout(8)).conv_stack.couplings) == 8
    assert len(build_flow(Layout(8), block="spline").sublayers[0].transform._transforms) == 4
    assert not hasattr(build_flow(Layout(8, kind="tebd", depth=1)), "conv_stack")
    assert not hasattr(build_flow(Layout(8), ode_levels="2:"), "conv_stack")


def test_block_size_means_the_block_side_everywhere():
    layout = Layout(16, block_size=4)
    assert layout.block_size == 4 and layout.block_sites == 16
    assert TrainConfig(L=16, block_size=4, steps=1).block_size == layout.block_size


def test_the_old_names_are_gone_from_the_api_the_flags_and_toml(tmp_path, capsys):
    """One name per concept: `block=`, `couplings=`, `--couplings`, train's `--schedule` and `--symmetric` /
    `--symmetrize` (now `--equivariant` / `--mixture`) were removed; old run folders still load (their config
    is migrated in one place, rgflow.config.migrate_config)."""
    with pytest.raises(TypeError):
        Layout(16, block=4)
    with pytest.raises(TypeError):
        make_block("affine", 2, couplings=3)
    with pytest.raises(TypeError):
        build_flow(Layout(4), couplings=2)
    for flag in (["--couplings", "3"], ["--schedule", "constant"], ["--symmetric"], ["--symmetrize", "z2"]):
        with pytest.raises(SystemExit) as exc:
            main(["train", *flag, "--steps", "1", "--out", str(tmp_path / "r"), "--dry-run"])
        assert exc.value.code == 2
    old = tmp_path / "old.toml"
    old.write_text('action = "phi4"\ncouplings = 6\nsteps = 3\n')
    capsys.readouterr()
    assert main(["train", "--config", str(old), "--out", str(tmp_path / "r"), "--dry-run"]) == 2
    assert "unknown config key(s) couplings" in capsys.readouterr().err


def test_toml_keys_are_the_flags(tmp_path, capsys):
    """`n_couplings = 6` and flat couplings work in TOML as the flags do."""
    toml = tmp_path / "new.toml"
    toml.write_text('action = "phi4"\nlam = 6.0\nn_couplings = 6\nsteps = 3\n')
    assert main(["train", "--config", str(toml), "--out", str(tmp_path / "r"), "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["n_couplings"] == 6 and cfg["params"] == {"m2": -4.0, "lam": 6.0}
    table = tmp_path / "table.toml"
    table.write_text('action = "phi4"\nsteps = 3\n[params]\nlam = 4.0\n')
    assert main(["train", "--config", str(table), "--out", str(tmp_path / "r"), "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["params"]["lam"] == 4.0


def test_checkpoint_of_an_older_version_loads(tmp_path):
    """A checkpoint whose config predates num_bins / tail_bound / params is compared with the
    defaults those keys now resolve to, and loads."""
    cfg = TrainConfig(L=4, hidden=8, n_couplings=2, batch_size=8, steps=2)
    train(cfg, tmp_path / "run")
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    old = {k: v for k, v in state["config"].items() if k not in ("num_bins", "tail_bound", "params")}
    old["couplings"] = state["config"]["params"]
    torch.save({**state, "config": old}, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt", cfg.to_dict())["step"] == 2


def test_a_run_folder_with_the_old_symmetry_keys_loads(tmp_path, capsys):
    """`symmetric` and `symmetrize`, the first names of `equivariant` and `mixture`, in a saved config.json
    and checkpoint: the folder opens as the same model, its checkpoint loads and `--resume` reads it."""
    from rgflow.config import migrate_config
    from rgflow.flows.symmetrize import SymmetrizedFlow
    from rgflow.runs import open_run

    cfg = TrainConfig(action="ising", L=4, block="affine", equivariant=True, mixture="d4", hidden=8, n_couplings=2,
                      batch_size=8, steps=2)
    run = tmp_path / "run"
    train(cfg, run)

    def old_keys(data):
        data = dict(data)
        data["symmetric"], data["symmetrize"] = data.pop("equivariant"), data.pop("mixture")
        return data

    (run / "config.json").write_text(json.dumps(old_keys(json.loads((run / "config.json").read_text()))))
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    torch.save({**state, "config": old_keys(state["config"])}, run / "checkpoint.pt")
    assert "equivariant" not in json.loads((run / "config.json").read_text())

    opened = open_run(run, "flow")
    assert opened.config.equivariant is True and opened.config.equivariance == "z2" and opened.config.mixture == "d4"
    assert isinstance(opened.model, SymmetrizedFlow) and opened.model.group == "d4"
    assert load_checkpoint(run / "checkpoint.pt", cfg.to_dict())["step"] == 2
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--dry-run"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["equivariant"] is True and resumed["mixture"] == "d4" and "symmetric" not in resumed
    # a folder from before the mixture existed held a plain flow; a new key wins over its old name
    assert migrate_config({"symmetric": False})["mixture"] is None
    assert migrate_config({"symmetrize": "z2", "mixture": None})["mixture"] is None


def test_minutes_is_a_wall_clock_budget_including_evaluations(tmp_path):
    """With an evaluation after every step costing far more than the step, a 0.05-minute budget
    still ends after ~3 s of wall time (evaluations and checkpoints count)."""
    import time

    cfg = TrainConfig(L=8, hidden=8, n_couplings=2, batch_size=8, minutes=0.05, eval_every=1, eval_samples=4096,
                      ckpt_every=1)
    t0 = time.perf_counter()
    summary = train(cfg, tmp_path / "run")
    wall = time.perf_counter() - t0
    assert summary["elapsed"] == pytest.approx(3.0, abs=1.5) and wall < 8.0
