"""Symmetrised flows q_G(x) = |G|^-1 sum_g q(g x): normalised, invariant, consistent, usable by IMH and training."""
import math

import numpy as np
import pytest
import torch
from nflows.transforms.base import Transform

from rgflow.config import TrainConfig
from rgflow.flows import build_flow
from rgflow.flows.priors import Prior
from rgflow.flows.rgflow import FieldFlow
from rgflow.flows.symmetrize import SymmetrizedFlow, check_invariance, group_elements
from rgflow.layout import Layout
from rgflow.mcmc.imh import independence_metropolis
from rgflow.physics import make_action
from rgflow.train import build_model


class _Shift(Transform):
    """``z = (x - a) / s`` on a one-site field: a flow whose density sits off-centre (not Z2-invariant)."""

    def __init__(self, a, s):
        super().__init__()
        self.a, self.s = a, s

    def forward(self, x, context=None):
        return (x - self.a) / self.s, torch.full((x.shape[0],), -math.log(self.s), dtype=x.dtype)

    def inverse(self, z, context=None):
        return z * self.s + self.a, torch.full((z.shape[0],), math.log(self.s), dtype=z.dtype)


def _toy(a=1.3, s=0.6):
    return SymmetrizedFlow(FieldFlow([_Shift(a, s)], Prior(1)), "z2")


def test_one_site_mixture_is_normalised_and_even(float64):
    model = _toy()
    x = torch.linspace(-12, 12, 24001).view(-1, 1, 1, 1)
    q = model.log_prob(x).exp()
    assert float(torch.trapezoid(q, x.flatten())) == pytest.approx(1.0, abs=1e-10)
    torch.testing.assert_close(q, q.flip(0), rtol=1e-12, atol=1e-14)
    # the mixture of N(1.3, 0.6^2) and its mirror image, in closed form
    g = lambda m: torch.exp(-0.5 * ((x.flatten() - m) / 0.6) ** 2) / (0.6 * math.sqrt(2 * math.pi))  # noqa: E731
    torch.testing.assert_close(q, 0.5 * (g(1.3) + g(-1.3)), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("group,size", [("z2", 2), ("d4", 8), ("z2xd4", 16)])
def test_invariant_under_every_element_and_sample_density_is_log_prob(float64, group, size):
    torch.manual_seed(0)
    flow = build_flow(Layout(4), block="spline", hidden=8, n_couplings=2)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model = SymmetrizedFlow(flow, group)
    elements = group_elements(group)
    assert len(elements) == size
    x, log_q = model.sample(64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(log_q, model.log_prob(x), rtol=0, atol=1e-10)
    for g in elements:
        torch.testing.assert_close(model.log_prob(g(x)), log_q, rtol=0, atol=1e-10)
    # the group elements are distinct maps
    y = torch.randn(1, 1, 4, 4)
    assert len({tuple(g(y).flatten().tolist()) for g in elements}) == size
    # between the best single element and that minus ln|G| (up to the inverse vs forward rounding)
    each = torch.stack([flow.log_prob(g(x)) for g in elements])
    assert bool((log_q <= each.max(0).values + 1e-9).all()) and bool((log_q >= each.max(0).values - math.log(size) - 1e-9).all())


def test_sample_draws_every_element_uniformly(float64):
    model = _toy()
    x, _ = model.sample(20000, generator=torch.Generator().manual_seed(0))
    assert float((x > 0).double().mean()) == pytest.approx(0.5, abs=0.015)


def test_imh_with_symmetrised_proposal_samples_a_double_well(float64):
    """Flow IMH with q_G as proposal reproduces p(x) ~ exp(-(x^2 - 1.69)^2) (a chi-square-free check on
    the histogram), while the unsymmetrised proposal, which never proposes x < -1, cannot."""
    target = lambda x: -((x**2 - 1.69) ** 2) / 0.5  # noqa: E731  (log p up to a constant)
    model = _toy(1.3, 0.35)
    x, log_q = model.sample(60000, generator=torch.Generator().manual_seed(2))
    x = x.flatten()
    chain, acc = independence_metropolis((target(x) - log_q).numpy(), seed=3)
    assert acc > 0.5
    states = x[chain].numpy()
    grid = np.linspace(-2.6, 2.6, 5201)
    p = np.exp(target(torch.tensor(grid)).numpy())
    p /= np.trapezoid(p, grid)
    for lo, hi in ((-3, -1.3), (-1.3, 0), (0, 1.3), (1.3, 3)):
        inside = (grid >= lo) & (grid < hi)
        assert np.mean((states >= lo) & (states < hi)) == pytest.approx(np.trapezoid(p[inside], grid[inside]), abs=0.02)


def test_invariance_check_refuses_a_group_the_action_lacks():
    class Tilted:
        name = "tilted"

        def __call__(self, x):
            return (x**2).sum((1, 2, 3)) + x[:, :, 0, 0].sum(1)  # a field at one site breaks Z2 and D4

    with pytest.raises(ValueError, match="mixture='z2'.*not invariant"):
        check_invariance(Tilted(), "z2", 4, 1)
    for group in ("z2", "d4", "z2xd4"):
        check_invariance(make_action("ising", T=2.269), group, 8, 1)
        check_invariance(make_action("phi4", m2=-4.0, lam=8.0), group, 8, 1)


def test_config_builds_the_mixture_and_refuses_bad_values():
    model = build_model(TrainConfig(action="ising", L=8, steps=1, mixture="z2"))
    assert isinstance(model, SymmetrizedFlow) and model.group == "z2"
    with pytest.raises(ValueError, match="mixture='c3' is not allowed; allowed: auto, none, z2, d4, z2xd4"):
        TrainConfig(steps=1, mixture="c3")
    with pytest.raises(ValueError, match="mixture='z2' with equivariant=true"):
        TrainConfig(steps=1, mixture="z2", equivariant=True)
