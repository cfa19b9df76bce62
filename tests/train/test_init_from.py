"""Size transfer (--init-from): an L = 2^k L0 flow starts from a trained L0 flow. The block-by-block transfer
(``grow_flow``) is that of the per-cell blocks (``--block spline``); conv flows copy their weights
(tests/flows/test_conv.py)."""
import pytest
import torch

from rgflow.cli import main
from rgflow.flows import build_flow
from rgflow.flows.symmetrize import SymmetrizedFlow
from rgflow.flows.transfer import grow_flow
from rgflow.layout import Layout
from rgflow.runs import open_run


def _trained_like(L, seed=0, **kw):
    torch.manual_seed(seed)
    flow = build_flow(Layout(L), block="spline", hidden=8, n_couplings=2, **kw)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return flow


def _levels(flow):
    out = {}
    for sub in flow.sublayers:
        out.setdefault(sub.level, []).append(sub.transform)
    return out


@pytest.mark.parametrize("L0,L,k", [(4, 8, 1), (4, 16, 2), (8, 8, 0)])
def test_coarse_levels_are_the_small_flow_and_fine_levels_copy_its_finest(L0, L, k):
    small, big = _trained_like(L0), build_flow(Layout(L), block="spline", hidden=8, n_couplings=2)
    info = grow_flow(small, big)
    assert info["offset"] == k and big.layout.n_levels == small.layout.n_levels + k
    src, dst = _levels(small), _levels(big)
    for level in range(big.layout.n_levels):
        source = max(level - k, 0)
        for a, b in zip(dst[level], src[source]):
            for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
                assert na == nb and torch.equal(pa, pb)
    for level in range(big.layout.n_levels + 1):
        assert torch.equal(big.prior.log_scale[:, level], small.prior.log_scale[:, max(level - k, 0)])


def test_identity_fine_levels_and_the_same_function_on_the_coarse_field():
    small, big = _trained_like(4), build_flow(Layout(8), block="spline", hidden=8, n_couplings=2)
    grow_flow(small, big, finest="identity")
    # level 0 of the big flow is the identity, so generating from latents that vanish off the coarse
    # sublattice reproduces the small flow's field on the even sites
    z_small = small.prior.sample(5)
    z_big = torch.zeros(5, 1, 8, 8)
    z_big[:, :, ::2, ::2] = z_small
    with torch.no_grad():
        x_small, _ = small.inverse(z_small)
        x_big, _ = big.inverse(z_big)
    torch.testing.assert_close(x_big[:, :, ::2, ::2], x_small, rtol=1e-5, atol=1e-5)
    assert float(big.prior.log_scale.detach()[:, 0].abs().max()) == 0.0


def test_refusals_name_what_differs():
    with pytest.raises(ValueError, match="L=12 is not allowed for a size transfer from L=4"):
        grow_flow(_trained_like(4), build_flow(Layout(12), block="spline", hidden=8, n_couplings=2))
    with pytest.raises(ValueError, match="same block architecture"):
        grow_flow(_trained_like(4), build_flow(Layout(8), block="spline", hidden=16, n_couplings=2))
    with pytest.raises(ValueError, match="finest='zero' is not allowed; allowed: copy, identity"):
        grow_flow(_trained_like(4), build_flow(Layout(8), block="spline", hidden=8, n_couplings=2), finest="zero")
    sym = SymmetrizedFlow(build_flow(Layout(8), block="spline", hidden=8, n_couplings=2))
    grow_flow(_trained_like(4), sym)  # mixtures are unwrapped


def test_cli_init_from_trains_and_refuses_an_incompatible_run_in_one_line(tmp_path, capsys):
    small = tmp_path / "small"
    base = ["train", "--action", "phi4", "--block", "spline", "--hidden", "8", "--n-couplings", "2", "--eval-every", "1000"]
    assert main(base + ["--L", "4", "--steps", "3", "--out", str(small)]) == 0
    big = tmp_path / "big"
    assert main(base + ["--L", "8", "--steps", "2", "--init-from", str(small), "--out", str(big)]) == 0
    cfg = open_run(big, "flow").config
    assert cfg.init_from == str(small) and cfg.L == 8
    capsys.readouterr()
    bad = tmp_path / "bad"
    code = main(["train", "--action", "phi4", "--block", "spline", "--hidden", "16", "--n-couplings", "2", "--L", "8", "--steps", "1",
                 "--init-from", str(small), "--out", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "hidden=8 there, 16 here" in err[0]
    assert not bad.exists()
    code = main(base + ["--L", "12", "--steps", "1", "--init-from", str(small), "--out", str(bad)])
    assert code == 2 and "L=12 is not allowed" in capsys.readouterr().err
