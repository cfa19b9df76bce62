"""Samplers reproduce exact moments; HMC and IMH satisfy detailed balance on a 1-d toy."""

import numpy as np
import pytest
import torch

from rgflow.flows import build_flow
from rgflow.layout import Layout
from rgflow.mcmc import hmc, independence_metropolis, latent_hmc, latent_local, local_metropolis, run_hmc
from rgflow.physics import ISING_TC, free_field_two_point, make_action
from rgflow.physics.observables import chain_observables


@pytest.mark.parametrize("name,C", [("free", 1), ("phi4", 1), ("phi4-hopping", 1), ("complex-phi4", 2)])
def test_local_form_matches_action_difference(name, C):
    action = make_action(name)
    a, b, c = action.local_form()
    gen = torch.Generator().manual_seed(0)
    phi = torch.randn(1, C, 4, 4, dtype=torch.float64, generator=gen)
    new = phi.clone()
    new[0, :, 1, 2] += torch.randn(C, dtype=torch.float64, generator=gen)
    h = sum(torch.roll(phi, s, d) for s in (1, -1) for d in (-2, -1))[0, :, 1, 2]

    def e(v):
        return a * (v**2).sum() + b * (v**2).sum() ** 2 - c * (v * h).sum()

    assert float(action(new) - action(phi)) == pytest.approx(float(e(new[0, :, 1, 2]) - e(phi[0, :, 1, 2])), rel=1e-10)


def _check_free_field(res, L, m2):
    est = chain_observables(res.series, L).observables
    exact = {"chi": 1 / m2, "e_link": float(free_field_two_point(L, m2)[1, 0])}
    for k, v in exact.items():
        assert abs(est[k].mean - v) < 3 * est[k].error, (res.sampler, k, est[k], v)


@pytest.mark.parametrize("sampler", ["local", "hmc"])
def test_samplers_reproduce_free_field_moments(sampler):
    action, L = make_action("free", m2=0.5), 8
    run = local_metropolis if sampler == "local" else hmc
    res = run(action, L, n=1500, chains=8, seed=1)
    assert 0.3 < res.acceptance < 0.95 and res.seconds > 0
    _check_free_field(res, L, 0.5)


def test_latent_hmc_targets_the_exact_boundary_distribution():
    torch.manual_seed(0)
    flow = build_flow(Layout(4), block="affine", hidden=8, n_couplings=2).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))  # an arbitrary bijection: the target must not care
    res = latent_hmc(flow, make_action("free", m2=1.0), n=800, chains=16, seed=2, warmup=100, n_leapfrog=4)
    assert res.sampler == "latent-hmc" and res.grad_evals_per_step == 4
    _check_free_field(res, 4, 1.0)
    assert all(p.requires_grad for p in flow.parameters())


def test_latent_hmc_restores_each_parameters_own_requires_grad():
    flow = build_flow(Layout(4), block="affine", hidden=8, n_couplings=2).double()
    frozen = list(flow.parameters())[::2]
    for p in frozen:
        p.requires_grad_(False)
    latent_hmc(flow, make_action("free", m2=1.0), n=5, chains=2, warmup=0, n_leapfrog=2)
    assert [p.requires_grad for p in flow.parameters()] == [not any(p is f for f in frozen) for p in flow.parameters()]


class _SignFlippedLogdet(torch.nn.Module):
    """A flow whose inverse reports ``-ln|det|``: what a sign error in S_eff would sample."""

    def __init__(self, flow):
        super().__init__()
        self.flow, self.prior = flow, flow.prior

    def inverse(self, z):
        x, logdet = self.flow.inverse(z)
        return x, -logdet


def test_latent_hmc_on_ising_with_a_non_volume_preserving_flow_is_exact_and_sign_sensitive():
    """Non-Gaussian target with an exact answer (L = 4 Ising by enumeration): latent HMC through a
    random, non-volume-preserving flow reproduces it; the same flow with the log-det's sign flipped
    does not, so this test fails on a sign error in S_eff = S(G(z)) - ln|det dG/dz|."""
    L, T = 4, 3.0
    V = L * L
    s = (((np.arange(2**V)[:, None] >> np.arange(V)) & 1) * 2 - 1).reshape(-1, L, L).astype(float)
    E = (s * np.roll(s, -1, 1)).sum((1, 2)) + (s * np.roll(s, -1, 2)).sum((1, 2))
    w = np.exp((E - E.max()) / T)
    exact_chi = V * (s.mean((1, 2)) ** 2 * w).sum() / w.sum()
    torch.manual_seed(1)
    flow = build_flow(Layout(L), block="affine", hidden=8, n_couplings=2).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.15 * torch.randn_like(p))
    action = make_action("ising", T=T)
    deviations = []
    for candidate in (flow, _SignFlippedLogdet(flow)):
        res = latent_hmc(candidate, action, n=300, chains=32, seed=7, warmup=200, n_leapfrog=6)
        chi = chain_observables(res.series, L).observables["chi"]
        deviations.append(abs(chi.mean - exact_chi) / chi.error)
    assert deviations[0] < 3.5 and deviations[1] > 6, deviations


@pytest.mark.parametrize("potential_of", ["hmc", "latent-hmc"])
def test_divergent_trajectories_are_rejected_and_counted(potential_of):
    """A step size far too large sends trajectories to infinity: each is a rejected, counted step."""
    action = make_action("phi4", m2=-4.0, lam=8.0)
    if potential_of == "hmc":
        res = hmc(action, 8, n=20, chains=4, seed=0, warmup=0, step_size=2.0, n_leapfrog=10)
    else:
        flow = build_flow(Layout(8), block="affine", hidden=8, n_couplings=2).double()
        res = latent_hmc(flow, action, n=20, chains=4, seed=0, warmup=0, step_size=5.0, n_leapfrog=10)
    assert res.divergences > 0 and res.acceptance < 0.5
    assert all(np.isfinite(v).all() for v in res.series.values())


def test_latent_local_targets_the_exact_boundary_distribution():
    torch.manual_seed(0)
    flow = build_flow(Layout(4), block="affine", hidden=8, n_couplings=2).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
    res = latent_local(flow, make_action("free", m2=1.0), n=2000, chains=8, seed=6)
    assert 0.2 < res.acceptance < 0.7
    _check_free_field(res, 4, 1.0)


def test_hmc_on_ising_relaxation_reproduces_exact_moments():
    L, T = 4, ISING_TC
    V = L * L
    n = np.arange(2**V)
    s = (((n[:, None] >> np.arange(V)) & 1) * 2 - 1).reshape(-1, L, L).astype(float)
    E = (s * np.roll(s, -1, 1)).sum((1, 2)) + (s * np.roll(s, -1, 2)).sum((1, 2))
    w = np.exp((E - E.max()) / T)
    m2 = (s.mean((1, 2)) ** 2 * w).sum() / w.sum()
    res = hmc(make_action("ising", T=T), L, n=2000, chains=8, seed=3)
    est = chain_observables(res.series, L).observables
    assert abs(est["chi"].mean - V * m2) < 3 * est["chi"].error


def _symmetric_transitions(chains, edges):
    """z-scores of N(i -> j) - N(j -> i) over binned consecutive states (0 under detailed balance)."""
    counts = np.zeros((len(edges) + 1,) * 2)
    for chain in np.atleast_2d(chains):
        idx = np.digitize(chain, edges)
        np.add.at(counts, (idx[:-1], idx[1:]), 1)
    i, j = np.triu_indices_from(counts, 1)
    total = counts[i, j] + counts[j, i]
    ok = total > 20
    z = (counts[i, j] - counts[j, i])[ok] / np.sqrt(total[ok])
    return z


def _double_well(q):
    return (q**4 - 2 * q**2).flatten(1).sum(1)


def test_hmc_detailed_balance_on_double_well():
    gen = torch.Generator().manual_seed(4)
    res = run_hmc(_double_well, torch.zeros(16, 1, 1, 1, dtype=torch.float64), 5000,
                  measure=lambda q: q.expand(-1, 1, 2, 2), n_leapfrog=3, step_size=0.3, generator=gen)
    chain = res.series["m1"].reshape(-1)
    z = _symmetric_transitions(res.series["m1"], np.linspace(-1.5, 1.5, 7))
    assert np.abs(z).max() < 4.5 and (z**2).mean() < 2.0
    grid = np.linspace(-3, 3, 20001)
    p = np.exp(-(grid**4 - 2 * grid**2))
    exact_q2 = (grid**2 * p).sum() / p.sum()
    assert (chain**2).mean() == pytest.approx(exact_q2, abs=0.03)


def test_imh_detailed_balance_on_double_well():
    rng = np.random.default_rng(5)
    sigma = 1.3
    x = rng.normal(0, sigma, 200000)
    log_q = -0.5 * (x / sigma) ** 2
    log_w = -(x**4 - 2 * x**2) - log_q
    chain_idx, acc = independence_metropolis(log_w, seed=5)
    chain = x[chain_idx]
    assert 0.2 < acc < 0.9
    z = _symmetric_transitions(chain, np.linspace(-1.5, 1.5, 7))
    assert np.abs(z).max() < 4.5 and (z**2).mean() < 2.0
    grid = np.linspace(-3, 3, 20001)
    p = np.exp(-(grid**4 - 2 * grid**2))
    assert (chain**2).mean() == pytest.approx((grid**2 * p).sum() / p.sum(), abs=0.02)


def test_local_rejects_nonlocal_action():
    with pytest.raises(ValueError, match="sampler 'local' needs a nearest-neighbour action"):
        local_metropolis(make_action("ising"), 4, 10)
