"""One contract over every model family: a normalised density with exact ln q for its own samples.

Families: the hierarchical flow, the flat flow, the Z2-symmetrised mixture, the image flow, the
diffusion models (rg and standard schedules) and the flow-diffusion hybrid. Each, in float64 and
with generic (perturbed or untrained) weights:

* is a :class:`rgflow.density.Density` with its channels, L and layout;
* ``log_prob`` of its own samples equals the ``ln q`` returned with them;
* ``ln q`` is normalised: on a 2 x 2 lattice, ``int q = E_r[q / r] = 1`` by importance sampling from a
  broad Gaussian ``r`` (for the image flow: the uniform density on (0, 1)^4), through ``log_prob``;
* the evaluator and independence Metropolis run on it unchanged.
"""
import math

import pytest
import torch

from rgflow.density import Density
from rgflow.flows import build_flow
from rgflow.flows.flat import build_flat_flow
from rgflow.flows.symmetrize import SymmetrizedFlow
from rgflow.layout import Layout
from rgflow.mcmc.run import run_sampler
from rgflow.physics import make_action
from rgflow.stats import effective_sample_size, log_mean_exp
from rgflow.train.diagnostics import evaluate

M2 = 1.0


def _perturb(model, scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, dtype=p.dtype, generator=g))
    return model


def _free_spectrum(L, m2):
    from rgflow.physics.exact import lattice_momenta_sq

    return (1 / (m2 + lattice_momenta_sq(L)))[None]


def _diffusion(schedule, L):
    from rgflow.diffusion import DiffusionModel

    model = DiffusionModel.build(_free_spectrum(L, 1.3 * M2), Layout(L), schedule, "local", width=4, depth=2, nfe=3)
    return _perturb(model.double(), 0.05)


def _hybrid(L):
    from rgflow.diffusion import DiffusionModel
    from rgflow.diffusion.latent import LatentPyramid
    from rgflow.diffusion.model import build_stages

    coords = LatentPyramid(_perturb(build_flow(Layout(L)).double(), 0.02), 1)
    model = DiffusionModel(coords, build_stages(coords, "rg", "local", 8, 2, False), nfe=3)
    return _perturb(model.double(), 0.05, seed=1)


def _image_flow(L):
    from rgflow.images.model import ImageFlow

    return ImageFlow(_perturb(build_flow(Layout(L)).double(), 0.02), alpha=0.05)


FAMILIES = {
    "flow": lambda L: _perturb(build_flow(Layout(L)).double(), 0.02),
    "flat-flow": lambda L: _perturb(build_flat_flow(L).double(), 0.02),
    "symmetrized-flow": lambda L: SymmetrizedFlow(_perturb(build_flow(Layout(L)).double(), 0.02), "z2"),
    "image-flow": _image_flow,
    "diffusion-rg": lambda L: _diffusion("rg", L),
    "diffusion-standard": lambda L: _diffusion("standard", L),
    "hybrid": _hybrid,
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_is_a_normalised_density_with_exact_ln_q(family):
    torch.manual_seed(0)
    L = 4
    model = FAMILIES[family](L)
    assert isinstance(model, Density) and model.channels == 1 and model.L == L
    assert (model.layout is None) == (family in ("flat-flow", "diffusion-standard"))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        x, log_q = model.sample(8, generator=gen)
    assert x.shape == (8, 1, L, L) and log_q.shape == (8,) and bool(torch.isfinite(log_q).all())
    torch.testing.assert_close(model.log_prob(x).detach(), log_q.detach(), rtol=0, atol=1e-8)

    # int q = 1 on a 2 x 2 lattice: E_r[q / r] with r = N(0, s^2), s 1.5 times the model's own spread
    # (uniform on (0, 1)^4 for images)
    small, n = FAMILIES[family](2), 4000
    with torch.no_grad():
        s = 1.5 * float(small.sample(256, generator=gen)[0].std())
    if family == "image-flow":
        u = torch.rand(n, 1, 2, 2, dtype=torch.float64, generator=gen).clamp(1e-6, 1 - 1e-6)
        log_r = torch.zeros(n, dtype=torch.float64)
    else:
        u = s * torch.randn(n, 1, 2, 2, dtype=torch.float64, generator=gen)
        log_r = torch.distributions.Normal(0.0, s).log_prob(u).flatten(1).sum(1)
    with torch.no_grad():
        log_w = (small.log_prob(u).double() - log_r).numpy()
    ess = effective_sample_size(log_w)
    err = math.sqrt(max(1 / ess - 1, 0) / n)
    assert ess > 0.1, (family, ess)
    assert abs(log_mean_exp(log_w)) < 4 * err + 1e-3, (family, log_mean_exp(log_w), err)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "image-flow"])
def test_the_evaluator_and_imh_run_on_every_family_unchanged(family):
    model = FAMILIES[family](4)
    action = make_action("free", m2=M2)
    res = evaluate(model, action, 64, seed=2)
    assert {"ess", "lnZ", "lnZ_err", "pareto_k", "f_variational", "imh_acceptance", "observables"} <= set(res)
    assert res["lnZ_exact"] == pytest.approx(action.lnZ_exact(4))
    chain = run_sampler("imh", action, 4, 16, chains=2, seed=3, flow=model)
    assert chain.series["abs_m"].shape == (2, 16) and 0 <= chain.acceptance <= 1
