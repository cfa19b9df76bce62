"""The scale-separation demos: exact mixing ends, light cones, inpainting, growing receptive fields."""
import pytest
import torch

from rgflow.flows import build_flow
from rgflow.images import ImageFlow, demos
from rgflow.images.train import ImageConfig, train_images
from rgflow.runs import open_run
from rgflow.layout import Layout


def _random_flow(L=8, channels=1, seed=0, block_size=2, block="spline", n_couplings=2):
    torch.manual_seed(seed)
    flow = build_flow(Layout(L, block_size=block_size), channels=channels, block=block, hidden=8,
                      n_couplings=n_couplings).double()
    for p in flow.parameters():
        p.data += 0.2 * torch.randn_like(p)
    return flow


@pytest.mark.parametrize("image", [False, True])
def test_mixing_at_the_ends_returns_one_input_or_the_other(image):
    flow = _random_flow()
    model = ImageFlow(flow) if image else flow
    g = torch.Generator().manual_seed(1)
    a, b = (torch.rand(3, 1, 8, 8, dtype=torch.float64, generator=g) for _ in range(2))
    top = flow.layout.n_levels
    torch.testing.assert_close(demos.mix(model, a, b, 0), a)
    torch.testing.assert_close(demos.mix(model, a, b, top + 1), b)
    middle = demos.mix(model, a, b, 2)
    assert not torch.allclose(middle, a) and not torch.allclose(middle, b)
    with pytest.raises(ValueError, match=f"level=7 is not allowed: 0 .* {top + 1}"):
        demos.mix(model, a, b, 7)


@pytest.mark.parametrize("block_size,L", [(2, 16), (4, 16)])
def test_latents_outside_the_light_cone_do_not_move_the_masked_sites(block_size, L):
    # affine blocks with 4 couplings: every output of a block depends on every input (the cone is then
    # tight; splines are flat beyond their range and 2 couplings leave some pairs independent)
    flow = _random_flow(L=L, block_size=block_size, block="affine", n_couplings=4)
    mask = torch.zeros(L, L, dtype=torch.bool)
    mask[5:8, 9:11] = True
    cone = flow.layout.light_cone(mask)
    assert bool(cone[mask].all()) and 0 < int(cone.sum()) < L * L
    z = flow.prior.sample(2).double()
    x0 = flow.inverse(z)[0]
    outside = torch.where(cone, torch.zeros_like(z), torch.randn_like(z))
    x1 = flow.inverse(z + outside)[0]
    torch.testing.assert_close(x1[..., mask], x0[..., mask], rtol=0, atol=1e-12)
    inside = torch.where(cone, torch.randn_like(z), torch.zeros_like(z))
    assert (flow.inverse(z + inside)[0][..., mask] - x0[..., mask]).abs().max() > 1e-3
    # and the cone is tight: each cone latent alone moves some masked site (generic weights)
    for site in torch.nonzero(cone.flatten())[:: max(1, int(cone.sum()) // 12)].flatten():
        col = demos._column(flow, z, int(site))
        assert col[..., mask].abs().max() > 0


@pytest.mark.parametrize("method", ["sample", "optimize"])
def test_inpainting_keeps_visible_sites_and_changes_only_cone_latents(method):
    flow = _random_flow(L=8)
    model = ImageFlow(flow)
    truth = torch.rand(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:4, 2:4] = True
    corrupted = torch.where(mask, torch.full_like(truth, 0.5), truth)
    res = demos.inpaint(model, corrupted, mask, method, cone=True, steps=20, candidates=8, truth=truth,
                        generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(res.filled[..., ~mask], truth[..., ~mask], rtol=0, atol=0)
    assert res.n_changed == int(flow.layout.light_cone(mask).sum()) < res.n_latents == 64
    assert res.rms_error.shape == (2,) and bool(torch.isfinite(res.log_prob).all())
    before = model.log_prob(corrupted)
    assert bool((res.log_prob > before).all())  # the refill is more likely than the flat grey patch


def test_effective_radius_of_simple_maps():
    w = torch.zeros(16, 16)
    w[0, 0] = 1
    assert demos.effective_radius(w) == pytest.approx(0.0, abs=1e-9)
    w[0, 15] = 1  # two neighbours across the periodic boundary: radius 1/2
    assert demos.effective_radius(w) == pytest.approx(0.5, abs=1e-6)


def test_receptive_fields_grow_with_level_on_a_trained_toy(tmp_path):
    cfg = ImageConfig(data="photo", size=8, steps=150, hidden=16, n_couplings=2, eval_every=150, log_every=50)
    train_images(cfg, tmp_path / "run", progress=False)
    model = open_run(tmp_path / "run", "images").model
    rf = demos.receptive_fields(model, n=8, generator=torch.Generator().manual_seed(0))
    assert len(rf.radius) == model.layout.n_levels + 1
    bulk = rf.radius[:-1]  # the top latent spans the whole 8x8 lattice like level 2 (saturation at ~3.3)
    assert all(b > a for a, b in zip(bulk, bulk[1:])), rf.radius
    assert rf.radius[0] < 1.5 and rf.radius[-1] > rf.radius[1] + 0.3


def test_temperature_zero_on_every_level_decodes_the_zero_latent():
    flow = _random_flow()
    x = demos.sample_with_temperatures(flow, 3, [0.0] * (flow.layout.n_levels + 1))
    torch.testing.assert_close(x, flow.inverse(torch.zeros(3, 1, 8, 8, dtype=torch.float64))[0])
    rows = demos.progressive(flow, x[:1], n_variants=2, generator=torch.Generator().manual_seed(0))
    assert rows.shape == (flow.layout.n_levels + 2, 2, 1, 8, 8)
    torch.testing.assert_close(rows[-1], x[:1].expand(2, -1, -1, -1))  # everything fixed: the reference
