"""Every prior kind: a normalised density, draws that follow it, scales, reproducibility; the wall's tails."""
import math

import pytest
import torch

from rgflow.flows import build_flow
from rgflow.flows.priors import PRIOR_KINDS, WALL, WALL_LOG_NORM, Prior
from rgflow.layout import Layout


def _density(prior: Prior, u: torch.Tensor) -> torch.Tensor:
    """``p(u)`` of one site on a 1-d grid ``u``, through :meth:`Prior.site_log_prob`."""
    return prior.site_log_prob(u.view(1, 1, 1, -1)).exp().flatten()


@pytest.mark.parametrize("kind", PRIOR_KINDS)
def test_density_is_normalised(kind):
    prior = Prior(1, kind=kind).double()
    h = 1e-3
    u = torch.arange(-40000, 40001, dtype=torch.float64) * h
    assert float(_density(prior, u).sum() * h) == pytest.approx(1.0, abs=1e-7)  # Laplace: a kink at 0, error h^2/12


@pytest.mark.parametrize("kind", PRIOR_KINDS)
def test_draws_follow_the_density(kind):
    """The draws' second and fourth moments and the mass beyond |u| = 2.5 agree with quadrature within 5 sigma."""
    prior = Prior(Layout(8), kind=kind).double()
    u = prior.sample(20000, torch.Generator().manual_seed(1)).flatten()  # 1.28e6 draws
    h = 1e-3
    grid = torch.arange(-40000, 40001, dtype=torch.float64) * h
    dens = _density(Prior(1, kind=kind).double(), grid) * h
    for f in (lambda v: v**2, lambda v: v**4, lambda v: (v.abs() > 2.5).double()):
        exact = float((dens * f(grid)).sum())
        sd = math.sqrt(float((dens * f(grid) ** 2).sum()) - exact**2)
        assert abs(float(f(u).mean()) - exact) < 5 * sd / math.sqrt(u.numel())


@pytest.mark.parametrize("kind", PRIOR_KINDS)
def test_level_scales_and_reproducible_draws(kind):
    prior = Prior(Layout(4), kind=kind, learn_level_scale=True).double()
    with torch.no_grad():
        prior.log_scale.copy_(torch.tensor([[0.3, -0.2, 0.1]], dtype=torch.float64))
    z = prior.sample(5, torch.Generator().manual_seed(2))
    assert torch.equal(z, prior.sample(5, torch.Generator().manual_seed(2)))
    scale = prior._log_scale_map().exp()
    unit = Prior(Layout(4), kind=kind).double()
    expected = unit.site_log_prob(z / scale) - scale.log()  # change of variables z = sigma u
    torch.testing.assert_close(prior.site_log_prob(z), expected)


def test_wall_is_the_normal_inside_and_steep_beyond():
    normal, wall = Prior(1).double(), Prior(1, kind="normal-wall").double()
    u = torch.tensor([0.0, 1.0, 2.0, 3.0, 5.0, 5.75], dtype=torch.float64)
    gap = (normal.site_log_prob(u.view(1, 1, 1, -1)) - wall.site_log_prob(u.view(1, 1, 1, -1))).flatten()
    torch.testing.assert_close(gap, (u / WALL) ** 8 + gap[0])  # the same shape up to the normalisation
    assert -2e-3 < gap[0] < 0 and gap[3] < 0.11 and gap[4] > 5.9 and gap[5] > 18


def test_wall_prior_gives_an_exact_flow():
    """A flow on the walled prior: its samples' ln q is its log_prob, and the prior enters ln q with the wall."""
    torch.manual_seed(0)
    flow = build_flow(Layout(4), block="conv", hidden=8, layers=1, n_couplings=2, prior="normal-wall").double()
    x, lnq = flow.sample(6)
    torch.testing.assert_close(flow.log_prob(x), lnq)
    flat = build_flow(Layout(4), block="conv", hidden=8, layers=1, n_couplings=2).double()
    flat.load_state_dict(flow.state_dict())
    z, _ = flow.forward(x)
    wall_term = ((z / WALL) ** 8).sum((1, 2, 3)) + 16 * WALL_LOG_NORM  # 16 latents on the 4 x 4 lattice
    torch.testing.assert_close(flat.log_prob(x) - flow.log_prob(x), wall_term)
