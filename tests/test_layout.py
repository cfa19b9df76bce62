import pytest
import torch

from rgflow.layout import Layout


@pytest.mark.parametrize(
    "L,block,counts",
    [(8, 2, (48, 12, 3, 1)), (16, 2, (192, 48, 12, 3, 1)), (16, 4, (192, 48, 12, 4)), (12, 2, (108, 27, 9))],
)
def test_level_counts(L, block, counts):
    layout = Layout(L, block_size=block)
    assert layout.n_latents == counts
    assert sum(counts) == L * L


def test_depth_truncation():
    layout = Layout(16, depth=2)
    assert layout.n_latents == (192, 48, 16)
    assert layout.n_levels == 2


@pytest.mark.parametrize("args", [dict(L=8), dict(L=16, block_size=4), dict(L=8, repeats=2), dict(L=8, kind="tebd", depth=3)])
def test_every_sublayer_covers_its_sublattice_once(args):
    layout = Layout(**args)
    for sub in layout.sublayers:
        idx = sub.index.flatten()
        assert len(set(idx.tolist())) == len(idx)
        x, y = idx // layout.L, idx % layout.L
        assert bool(((x % sub.spacing == 0) & (y % sub.spacing == 0)).all())
        assert len(idx) == (layout.L // sub.spacing) ** 2


def test_latents_cover_every_site_once_and_levels_match_sublayers():
    layout = Layout(16, block_size=4)
    all_sites = torch.cat(layout.level_sites)
    assert sorted(all_sites.tolist()) == list(range(256))
    for sub in layout.sublayers:
        # a sublayer only touches sites that are still active at its level
        assert bool((layout.level_of_site.flatten()[sub.index] >= sub.level).all())
    kept = layout.decimator_kept()
    dec = [s for s in layout.sublayers if s.role == "decimator"]
    for d in dec[:-1]:
        moving = d.index[:, kept].flatten()
        assert bool((layout.level_of_site.flatten()[moving] > d.level).all())


def test_disentangler_is_shifted_by_half_a_block():
    layout = Layout(8)
    dis, dec = layout.sublayers[0], layout.sublayers[1]
    assert dis.role == "disentangler" and dec.role == "decimator"
    assert dec.index[0].tolist() == [0, 1, 8, 9]
    assert dis.index[0].tolist() == [9, 10, 17, 18]


def test_split_merge_round_trip_and_coordinates():
    layout = Layout(8)
    z = torch.randn(3, 2, 8, 8)
    parts = layout.split(z)
    assert [p.shape[-1] for p in parts] == [48, 12, 3, 1]
    torch.testing.assert_close(layout.merge(parts), z)
    coords = layout.bulk_coordinates()
    assert coords.shape == (64, 3)
    assert coords[-1].tolist() == [3, 0, 0]
    top = torch.cat(parts, dim=2)[..., -1]
    torch.testing.assert_close(top, z[:, :, 0, 0])


def test_tebd_has_no_decimation():
    layout = Layout(8, kind="tebd", depth=3)
    assert layout.n_latents == (0, 0, 0, 64)
    assert len(layout.sublayers) == 6


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(L=7), "L=7 is not allowed for block_size=2"),
        (dict(L=2, block_size=4), "L=2 is not allowed for block_size=4"),
        (dict(L=0), "L=0"),
        (dict(L=8.0), "L=8.0"),
        (dict(L=8, block_size=3), "block_size=3"),
        (dict(L=8, kind="peps"), "kind='peps'"),
        (dict(L=8, kind="tebd"), "depth is required"),
        (dict(L=8, depth=0), "depth=0"),
    ],
)
def test_bad_sizes_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Layout(**kwargs)


def test_split_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"z must have shape \[B, C, 8, 8\]"):
        Layout(8).split(torch.zeros(1, 1, 4, 4))
