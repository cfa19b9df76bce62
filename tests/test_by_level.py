"""The KL and Var(ln w) split by RG level (rgflow.by_level): exact where the answer is known, additive, via the CLI."""
import json

import pytest
import torch

from rgflow.by_level import kl_by_level
from rgflow.cli.main import main
from rgflow.flows import build_flow, haar_flow
from rgflow.layout import Layout
from rgflow.physics.models import make_action


class TiltedAction:
    """``S(x) = -ln q(x) - a sum(z_level(x))``: the target is the flow tilted along one level's latents, so
    ``ln w = a sum z_level + const`` depends on that level alone; with a standard normal prior the exact split
    is ``KL = n a^2 / 2`` and ``Var ln w = n a^2`` on that level and zero on every other."""

    def __init__(self, flow, level: int, a: float):
        self.flow, self.a = flow, a
        self.sites = flow.layout.level_sites[level]

    def evaluate(self, x):
        z, _ = self.flow(x)
        return -self.flow.log_prob(x) - self.a * z.flatten(1)[:, self.sites].sum(1)


@pytest.mark.parametrize("level", [1, 3])
def test_tilt_on_one_level_is_found_there(level):
    torch.manual_seed(0)
    flow = build_flow(Layout(8), block="affine", hidden=8, n_couplings=2, learn_level_scale=False).double()
    with torch.no_grad():  # a non-trivial bijection (not the identity)
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    a = 0.25
    res = kl_by_level(flow, TiltedAction(flow, level, a), n_outer=1024, n_inner=32, seed=1)
    n = flow.layout.n_latents[level]
    for row in res["levels"]:
        k = flow.layout.n_levels if row["level"] == "top" else row["level"]
        kl, var = (n * a**2 / 2, n * a**2) if k == level else (0.0, 0.0)
        assert abs(row["kl"] - kl) < 4 * row["kl_err"] + 0.02, row
        assert abs(row["var_lnw"] - var) < 4 * row["var_lnw_err"] + 0.02, row
    assert sum(r["kl"] for r in res["levels"]) == pytest.approx(res["kl_total"], abs=1e-9)
    assert sum(r["var_lnw"] for r in res["levels"]) == pytest.approx(res["var_lnw_total"], rel=1e-9)


def test_split_adds_up_for_a_real_action_and_rejects_flat_models():
    flow = haar_flow(Layout(8)).double()
    action = make_action("phi4", m2=-4.0, lam=8.0)
    res = kl_by_level(flow, action, n_outer=64, n_inner=4)
    assert [r["level"] for r in res["levels"]] == [0, 1, 2, "top"]
    assert sum(r["kl"] for r in res["levels"]) == pytest.approx(res["kl_total"], rel=1e-9)
    assert sum(r["var_lnw"] for r in res["levels"]) == pytest.approx(res["var_lnw_total"], rel=1e-9)
    assert res["levels"][0]["inner_ess"] == 1.0
    with pytest.raises(ValueError, match="n_inner"):
        kl_by_level(flow, action, n_outer=64, n_inner=1)


def test_eval_by_level_cli(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--action", "phi4", "--L", "4", "--steps", "3", "--hidden", "8", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--samples", "64", "--by-level", "--by-level-samples", "32",
                 "--by-level-inner", "4", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    split = res["by_level"]
    assert len(split["levels"]) == 3 and split["n_inner"] == 4
    assert sum(r["kl"] for r in split["levels"]) == pytest.approx(split["kl_total"], rel=1e-9)
    assert main(["eval", str(run), "--samples", "64", "--by-level", "--by-level-inner", "1"]) == 2
    assert "--by-level-inner must be an integer >= 2" in capsys.readouterr().err
    flat = tmp_path / "flat"
    assert main(["train", "--action", "phi4", "--L", "4", "--steps", "2", "--flow", "flat", "--out", str(flat)]) == 0
    capsys.readouterr()
    assert main(["eval", str(flat), "--by-level"]) == 2
    assert "needs a hierarchical flow run" in capsys.readouterr().err
