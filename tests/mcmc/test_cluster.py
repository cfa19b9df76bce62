"""Embedded cluster sampler: the exact Ising model at L = 4 (enumeration, tied to the exact ln Z), exact
Gaussian moments for one and two components, agreement with HMC at the phi^4 critical point, the CLI."""

import json

import numpy as np
import pytest
import torch

from rgflow.cli import main
from rgflow.ensemble import load_ensemble
from rgflow.mcmc import cluster, hmc, local_metropolis
from rgflow.mcmc.cluster import swendsen_wang_flips
from rgflow.physics import free_field_two_point, ising_lnZ_exact, ising_spins, make_action, primaries
from rgflow.physics.observables import chain_observables
from rgflow.stats import gamma_method

L4 = 4


def _ising_enumeration(T: float) -> dict:
    """Exact L = 4 moments over all 2^16 states: energy per site ``E/V``, ``E^2``, ``V <m^2>``, ``ln Z``
    (``E = -sum_x sum_mu s(x) s(x + mu)``)."""
    V = L4 * L4
    s = (((np.arange(2**V)[:, None] >> np.arange(V)) & 1) * 2 - 1).reshape(-1, L4, L4).astype(float)
    E = -((s * np.roll(s, -1, 1)).sum((1, 2)) + (s * np.roll(s, -1, 2)).sum((1, 2)))
    log_w = -E / T
    lnZ = np.logaddexp.reduce(log_w)
    p = np.exp(log_w - lnZ)
    return {"E": (p * E).sum() / V, "var_E": (p * E**2).sum() - (p * E).sum() ** 2,
            "chi": V * (p * s.mean((1, 2)) ** 2).sum(), "lnZ": lnZ}


@pytest.mark.parametrize("T", [2.269, 3.0])
def test_enumeration_matches_the_exact_lnZ_and_its_beta_derivatives(T):
    """The enumeration the chain is tested against is rgflow's exact ln Z: <E> = -d ln Z / d beta and
    Var E = d^2 ln Z / d beta^2 (central differences in beta = 1/T)."""
    exact, beta, h = _ising_enumeration(T), 1.0 / T, 1e-4
    lnZ = [ising_lnZ_exact(L4, 1.0 / (beta + k * h)) for k in (-1, 0, 1)]
    assert exact["lnZ"] == pytest.approx(lnZ[1], rel=1e-12)
    assert exact["E"] * L4**2 == pytest.approx(-(lnZ[2] - lnZ[0]) / (2 * h), rel=1e-6)
    assert exact["var_E"] == pytest.approx((lnZ[2] - 2 * lnZ[1] + lnZ[0]) / h**2, rel=1e-4)


@pytest.mark.parametrize("T", [2.269, 3.0])
def test_cluster_samples_the_exact_ising_model(T):
    """Energy per site, its variance (specific heat) and chi of the spin chain agree with the enumeration
    within 4 Gamma-method errors; Swendsen-Wang decorrelates them in a few steps."""
    exact, V = _ising_enumeration(T), L4 * L4
    res = cluster(make_action("ising", T=T), L4, n=1500, chains=8, seed=1, warmup=50)
    assert res.sampler == "cluster" and res.acceptance == 1.0 and res.step_size is None
    E = -2 * V * res.series["e_link"]  # e_link = <s(x) s(x + mu)>, averaged over x and mu
    for name, est, value in [
        ("E", gamma_method(E / V), exact["E"]),
        ("var_E", gamma_method({"E": E, "E2": E**2}, lambda a: a["E2"] - a["E"] ** 2), exact["var_E"]),
        ("chi", gamma_method(res.series["m2"] * V), exact["chi"]),
    ]:
        assert abs(est.value - value) < 4 * est.error, (name, est.value, est.error, value)
        assert est.tau_int < 5, (name, est.tau_int)


def test_kept_ising_configurations_are_relaxation_fields():
    """Kept configurations are x ~ P(x | s), so they are distributed as exp(-S_relax): they satisfy
    equipartition, <x . grad S_relax(x)> = V (integration by parts), and spins drawn afresh from
    them reproduce the exact chi."""
    T, V = 2.269, L4 * L4
    action = make_action("ising", T=T)
    res = cluster(action, L4, n=600, chains=8, seed=2, warmup=50, keep_every=1)
    assert res.configs.shape == (8, 600, 1, L4, L4)
    x = res.configs.reshape(-1, 1, L4, L4).double().requires_grad_(True)
    (grad,) = torch.autograd.grad(action(x).sum(), x)
    virial = gamma_method((x * grad).sum((1, 2, 3)).detach().numpy().reshape(8, 600))
    assert abs(virial.value - V) < 4 * virial.error and virial.error < 0.02 * V
    fresh = primaries(ising_spins(x.detach(), torch.Generator().manual_seed(3)))["m2"].reshape(8, 600)
    chi = gamma_method(fresh * V)
    assert abs(chi.value - _ising_enumeration(T)["chi"]) < 4 * chi.error


@pytest.mark.parametrize("name,params,channels", [("free", {"m2": 0.3}, 1),
                                                  ("complex-phi4", {"t": 1.0, "mu": 4.3, "lam": 0.0}, 2)])
@pytest.mark.parametrize("magnitudes", ["local", "hmc"])
def test_cluster_reproduces_exact_gaussian_moments(name, params, channels, magnitudes):
    """Gaussian targets with exact chi and e_link, for the sign embedding (one component) and the O(2)
    reflection along a random direction (two). complex-phi4 at lam = 0 with t = 1 is C free fields
    of m2 = mu - 4 in phi' = sqrt(2) phi."""
    L, m2 = 8, params.get("m2", params.get("mu", 0) - 4.0)
    scale = 1.0 if name == "free" else 0.5  # <phi phi> = <phi' phi'> / (2 t)
    res = cluster(make_action(name, **params), L, n=600, chains=8, seed=4, warmup=100, magnitudes=magnitudes,
                  n_leapfrog=5)
    est = chain_observables(res.series, L, channels=channels).observables
    exact = {"chi": channels * scale / m2, "e_link": channels * scale * float(free_field_two_point(L, m2)[1, 0])}
    for k, v in exact.items():
        assert abs(est[k].mean - v) < 4 * est[k].error, (k, est[k], v)


@pytest.mark.parametrize("name", ["free", "phi4", "phi4-hopping", "complex-phi4"])
def test_reflecting_a_set_of_sites_costs_the_bond_rule_boundary_energy(name):
    """The bond probabilities 1 - exp(-2 J p_x p_y) use J = c of local_form: reflecting any set C of
    sites along r changes S by 2 J sum over the links leaving C of p_x p_y (p = phi . r)."""
    action = make_action(name)
    J = action.local_form()[2]
    gen = torch.Generator().manual_seed(0)
    phi = torch.randn(3, action.channels, 6, 6, dtype=torch.float64, generator=gen)
    r = torch.randn(3, action.channels, dtype=torch.float64, generator=gen)
    r = (r / r.norm(dim=1, keepdim=True))[..., None, None]
    p = (phi * r).sum(1)
    flipped = torch.rand(3, 6, 6, generator=gen) < 0.4
    new = phi - 2 * (flipped * p)[:, None] * r
    boundary = sum((2 * J * p * torch.roll(p, -1, d) * (flipped ^ torch.roll(flipped, -1, d))).sum((1, 2))
                   for d in (-2, -1))
    torch.testing.assert_close(action(new) - action(phi), boundary, rtol=1e-10, atol=1e-10)


def test_swendsen_wang_clusters_wrap_around_and_stay_in_their_chain():
    """All links of equal-sign sites bond at J -> inf: the whole torus is one cluster per chain (across
    the periodic boundary), each chain flips as a whole and independently; at J = 0 nothing bonds."""
    gen = torch.Generator().manual_seed(5)
    p = torch.ones(64, 6, 6, dtype=torch.float64)
    p[::2] *= -1
    flips = swendsen_wang_flips(p, 1e9, gen)
    per_chain = flips.flatten(1)
    assert (per_chain.all(1) | ~per_chain.any(1)).all() and 10 < int(per_chain.all(1).sum()) < 54
    alone = swendsen_wang_flips(torch.ones(4, 6, 6, dtype=torch.float64), 0.0, gen)
    assert 0.3 < float(alone.double().mean()) < 0.7 and not (alone.flatten(1).all(1) | ~alone.flatten(1).any(1)).all()


@pytest.fixture(scope="module")
def critical_chains():
    """Hopping phi^4 at the benchmark's kappa_c (lam = 0.022), L = 8: cluster, HMC and local chains."""
    action, L = make_action("phi4-hopping", kappa=0.2708, lam=0.022), 8
    runs = {"cluster": cluster(action, L, n=1200, chains=8, seed=6, warmup=100),
            "hmc": hmc(action, L, n=500, chains=8, seed=7, warmup=100),
            "local": local_metropolis(action, L, n=1200, chains=8, seed=8, warmup=100)}
    return {k: chain_observables(v.series, L).observables for k, v in runs.items()}


def test_cluster_agrees_with_hmc_at_the_critical_point(critical_chains):
    c, h = critical_chains["cluster"], critical_chains["hmc"]
    for k in ("abs_m", "chi", "e_link", "binder"):
        assert abs(c[k].mean - h[k].mean) < 4 * np.hypot(c[k].error, h[k].error), (k, c[k], h[k])


def test_cluster_decorrelates_the_sign_of_m(critical_chains):
    """tau_int(m) of local Metropolis is hundreds of sweeps here (underestimated by these short
    chains); the cluster update flips the sign of m in about one step."""
    tau_cluster, tau_local = critical_chains["cluster"]["m"].tau_int, critical_chains["local"]["m"].tau_int
    assert tau_cluster < 3 and tau_local > 20 * tau_cluster, (tau_cluster, tau_local)


@pytest.mark.parametrize("sampler,physics", [("cluster", ["--action", "phi4", "--L", "4"]),
                                             ("cluster-hmc", ["--action", "phi4", "--L", "4"]),
                                             ("cluster", ["--action", "ising", "--L", "4"])])
def test_cli_cluster_writes_its_json_and_chain(sampler, physics, tmp_path, capsys):
    out = tmp_path / "chain.npz"
    code = main(["mcmc", *physics, "--sampler", sampler, "--n", "60", "--chains", "3", "--save-every", "7",
                 "--out", str(out), "--json"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0 and res["sampler"] == sampler and res["n_samples"] == 180 and 0 < res["acceptance"] <= 1
    assert set(res["observables"]) == set(res["tau_int"]) == set(res["cost_per_independent_sample"])
    assert res["grad_evals_per_step"] == (11 if sampler == "cluster-hmc" else 0)
    ens = load_ensemble(out)
    assert ens.fields.shape == (3 * 9, 1, 4, 4) and ens.source == f"mcmc:{sampler}"
    assert out.with_suffix(".png").is_file()
    if physics[1] == "phi4":  # a field chain keeps the states it measured
        series = np.load(out)["series_e_link"][:, ::7].reshape(-1)
        np.testing.assert_allclose(primaries(ens.fields)["e_link"], series, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("args,match", [
    (["--action", "complex-phi4", "--t", "-1", "--sampler", "cluster"], "needs a ferromagnetic coupling"),
    (["--action", "ising", "--sampler", "cluster-hmc"], "Ising spins have none"),
])
def test_cli_cluster_refuses_bad_combinations_in_one_line(args, match, capsys):
    code = main(["mcmc", *args, "--L", "4", "--n", "10"])
    err = capsys.readouterr().err
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1
