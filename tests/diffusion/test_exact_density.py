"""Exact densities of the discretised PF-ODE sampler: Gaussian free field, hybrid by parts, IMH."""
import math

import numpy as np
import pytest
import torch

from rgflow.diffusion import GaussianDenoiser, RGCoordinates, RGSchedule
from rgflow.diffusion.exact import _steps, exact_log_prob, exact_sample
from rgflow.diffusion.network import Denoiser
from rgflow.diffusion.train import DiffusionModel
from rgflow.flows import build_flow
from rgflow.layout import Layout
from rgflow.physics import make_action
from rgflow.train.diagnostics import evaluate
from tests.diffusion.test_exact import _field_covariance, gff_coords

L, M2 = 4, 0.5


def _gff_model(delta: float, scaling: str, nfe: int) -> tuple[DiffusionModel, torch.Tensor]:
    """The analytic-score diffusion model of the free field in Haar coordinates, and the field covariance."""
    coords, cov, K_inv = gff_coords(L, scaling)
    schedule = RGSchedule(coords.n_levels, delta)
    return DiffusionModel(coords, schedule, GaussianDenoiser(cov, coords), nfe), K_inv


def _linear_sampler_matrix(model) -> torch.Tensor:
    """With a linear denoiser the whole sampler is ``x = M w_1``: push the unit vectors through it."""
    from rgflow.diffusion.exact import _start

    D = math.prod(model.coords.shape)
    v = torch.eye(D, dtype=torch.float64).reshape(D, *model.coords.shape) / _start(model, model.nfe)
    for step in _steps(model, model.nfe):
        v = step(v)
    return model.coords.decode(v)[0].reshape(D, -1).T


@pytest.mark.parametrize("delta,scaling", [(0.0, "global"), (4.0, "level")])
@pytest.mark.parametrize("nfe", [5, 31])
def test_log_q_is_the_exact_density_of_the_discretised_sampler(delta, scaling, nfe):
    """At any NFE the sampler is x = M w_1, so q = N(0, M M^T) exactly; ln q from the step Jacobians
    must equal it to rounding, and log_prob (Newton inversion) must give the same numbers."""
    model, _ = _gff_model(delta, scaling, nfe)
    x, log_q = exact_sample(model, 32, nfe, torch.Generator().manual_seed(1))
    M = _linear_sampler_matrix(model)
    exact = torch.distributions.MultivariateNormal(torch.zeros(L * L, dtype=torch.float64), M @ M.T)
    torch.testing.assert_close(log_q, exact.log_prob(x.reshape(32, -1)), rtol=0, atol=1e-8)
    torch.testing.assert_close(exact_log_prob(model, x, nfe), log_q, rtol=0, atol=1e-8)
    # the samples follow it: their covariance is M M^T (within sampling error)
    xs = exact_sample(model, 4000, nfe, torch.Generator().manual_seed(2))[0].reshape(4000, -1)
    cov = xs.T @ xs / len(xs)
    assert (cov - M @ M.T).abs().max() < 6 * math.sqrt(2 / len(xs)) * float((M @ M.T).diagonal().max())


def test_analytic_score_converges_to_the_free_field_and_reweighting_is_unbiased_at_any_nfe():
    """At high NFE the sampler is the free field (IMH accepts almost everything); at low NFE it is a
    different Gaussian, but its exact ln q keeps ln Z unbiased: only the ESS drops."""
    true = torch.distributions.MultivariateNormal(torch.zeros(L * L, dtype=torch.float64), _field_covariance(L, M2))
    for nfe in (15, 255):
        model, _ = _gff_model(4.0, "level", nfe)
        res = evaluate(model, make_action("free", m2=M2), 2048, seed=0)
        assert abs(res["lnZ"] - res["lnZ_exact"]) < 4 * res["lnZ_err"] + 1e-4, (nfe, res["lnZ"], res["lnZ_err"])
        if nfe == 255:
            x, log_q = exact_sample(model, 256, nfe, torch.Generator().manual_seed(3))
            assert float((log_q - true.log_prob(x.reshape(256, -1))).abs().max()) < 0.05
            assert res["imh_acceptance"] > 0.98 and res["ess"] > 0.99
        else:
            assert res["ess"] < 0.95  # a visibly different distribution, still exact weights


def test_hybrid_log_q_equals_its_parts():
    """Coarse latents (levels >= 1) by a linear diffusion, finer ones from the flow's prior:
    ln q(x) = ln N(w; 0, A A^T) + ln p_prior(u_fine) + ln|det du/dx| - sum_coarse ln s."""
    torch.manual_seed(0)
    flow = build_flow(Layout(8), hidden=8, n_couplings=2).double()
    for p in flow.parameters():
        p.data += 0.1 * torch.randn_like(p)
    coords = RGCoordinates(flow, "level", levels=1).double()
    coords.scale.copy_(torch.rand(coords.scale.shape, dtype=torch.float64) + 0.5)
    D = math.prod(coords.shape)
    assert coords.shape == (1, 16) and coords.n_levels == 3
    B = torch.randn(D, D, dtype=torch.float64)
    cov = B @ B.T / D + 0.5 * torch.eye(D, dtype=torch.float64)
    model = DiffusionModel(coords, RGSchedule(coords.n_levels, 2.0), GaussianDenoiser(cov, coords), 9)
    x, log_q = exact_sample(model, 16, 9, torch.Generator().manual_seed(1))
    from rgflow.diffusion.exact import _start

    v = torch.eye(D, dtype=torch.float64).reshape(D, *coords.shape) / _start(model, 9)
    for step in _steps(model, 9):
        v = step(v)
    A = v.reshape(D, D).T
    u, logdet = flow(x)
    s = coords._scale_map()
    w = (u / s).flatten(2)[:, :, coords.diffused_index].reshape(16, D)
    fine = (flow.prior.site_log_prob(u) * coords.fine_mask).sum(dim=(1, 2, 3))
    coarse_scale = torch.log(s).flatten()[coords.diffused_index].sum()
    by_parts = (torch.distributions.MultivariateNormal(torch.zeros(D, dtype=torch.float64), A @ A.T).log_prob(w)
                + fine + logdet - coarse_scale)
    torch.testing.assert_close(log_q, by_parts, rtol=0, atol=1e-8)
    torch.testing.assert_close(exact_log_prob(model, x, 9), log_q, rtol=0, atol=1e-8)


def test_nonlinear_one_variable_diffusion_density_matches_its_samples_and_imh_is_exact():
    """One diffused variable (the top latent of an L=2 hybrid) with an untrained, randomised MLP
    denoiser: the histogram of the sampled w follows exp(ln p_w), and independence Metropolis with
    these proposals samples a double well exp(-4 (w^2 - 1)^2) (detailed balance)."""
    from rgflow.mcmc.imh import independence_metropolis

    torch.manual_seed(0)
    flow = build_flow(Layout(2), hidden=4, n_couplings=2).double()
    coords = RGCoordinates(flow, "level", levels=1).double()
    denoiser = Denoiser(coords, width=4, depth=2).double()
    for p in denoiser.parameters():
        p.data += 0.3 * torch.randn_like(p)
    model = DiffusionModel(coords, RGSchedule(coords.n_levels, 0.0), denoiser, 15)
    x, log_q = exact_sample(model, 20000, 15, torch.Generator().manual_seed(1))
    w, rest = coords.encode(x)
    w, log_pw = w.reshape(-1).detach(), (log_q - rest).detach()
    edges = torch.linspace(-3, 3, 31, dtype=torch.float64)
    counts = torch.histc(w, bins=30, min=-3, max=3)
    grid = torch.linspace(-3, 3, 3001, dtype=torch.float64)
    order = torch.argsort(w)
    density = torch.from_numpy(np.interp(grid.numpy(), w[order].numpy(), log_pw[order].exp().numpy()))
    expected = torch.stack([torch.trapezoid(density[(grid >= a) & (grid <= b)], grid[(grid >= a) & (grid <= b)])
                            for a, b in zip(edges[:-1], edges[1:])]) * len(w)
    ok = expected > 20
    chi2 = float((((counts - expected) ** 2) / expected)[ok].sum())
    assert chi2 < int(ok.sum()) + 5 * math.sqrt(2 * int(ok.sum())), chi2
    log_target = -4 * (w**2 - 1) ** 2
    chain, acc = independence_metropolis((log_target - log_pw).numpy(), seed=0)
    assert 0.05 < acc < 1
    states = w[torch.from_numpy(chain)]
    mean_sq = float((states**2).mean())
    grid_p = torch.exp(-4 * (grid**2 - 1) ** 2)
    exact = float(torch.trapezoid(grid**2 * grid_p, grid) / torch.trapezoid(grid_p, grid))
    from rgflow.stats import gamma_method

    err = gamma_method((states**2).numpy()[None]).error
    assert abs(mean_sq - exact) < 4 * err and err < 0.02, (mean_sq, exact, err)


def test_exact_density_records_no_graph_to_the_weights_and_leaves_them_trainable():
    """The step Jacobians run under enable_grad; with trainable weights they used to record a graph
    back to every weight for each of the D vector-Jacobian products and keep it alive with ln q
    (10 GiB per step at L = 32). ln q must come back without a graph, the same numbers as with
    frozen weights, and the weights must still require gradients afterwards."""
    from rgflow.flows.haar import haar_flow

    torch.manual_seed(0)
    coords = RGCoordinates(haar_flow(Layout(4), 1), "level").double()
    denoiser = Denoiser(coords, width=4, depth=1).double()
    for p in denoiser.parameters():
        p.data += 0.02 * torch.randn_like(p)
    model = DiffusionModel(coords, RGSchedule(coords.n_levels, 2.0), denoiser, 15)
    x, log_q = exact_sample(model, 3, 15, torch.Generator().manual_seed(1))
    assert not log_q.requires_grad and log_q.grad_fn is None
    assert all(p.requires_grad for p in denoiser.parameters())
    for p in denoiser.parameters():
        p.requires_grad_(False)
    torch.testing.assert_close(exact_sample(model, 3, 15, torch.Generator().manual_seed(1))[1], log_q,
                               rtol=0, atol=1e-12)
    for p in denoiser.parameters():
        p.requires_grad_(True)
    log_p = exact_log_prob(model, x, 15)
    assert log_p.grad_fn is None and all(p.requires_grad for p in denoiser.parameters())
    torch.testing.assert_close(log_p, log_q, rtol=0, atol=1e-8)
