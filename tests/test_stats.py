import math

import numpy as np
import pytest

from rgflow.stats import (
    Estimate,
    effective_sample_size,
    format_value_error,
    jackknife,
    log_mean_exp,
    pareto_khat,
    tau_int,
    gamma_method,
)


@pytest.mark.parametrize(
    "mean,err,text",
    [(0.62291, 0.00456, "0.6229(46)"), (1.2345, 0.0051, "1.2345(51)"), (123.4, 12.0, "123(12)"), (0.1, 0.0996, "0.10(10)")],
)
def test_format(mean, err, text):
    assert format_value_error(mean, err) == text
    assert str(Estimate(mean, err)) == text


def test_jackknife_of_mean_equals_standard_error():
    rng = np.random.default_rng(0)
    x = rng.normal(size=4000)
    est = jackknife({"x": x}, lambda a: a["x"], n_bins=4000)
    assert est.mean == pytest.approx(x.mean())
    assert est.error == pytest.approx(x.std(ddof=1) / math.sqrt(len(x)), rel=1e-6)


def test_jackknife_nonlinear_function_error():
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 1.0, size=20000)
    est = jackknife({"x": x}, lambda a: a["x"] ** 2, n_bins=100)
    # delta method: sd(x^2 of mean) = 2 mu sd(mean)
    assert est.error == pytest.approx(2 * 2.0 / math.sqrt(len(x)), rel=0.2)


def test_ess_and_log_mean_exp():
    assert effective_sample_size(np.zeros(10)) == pytest.approx(1.0)
    assert effective_sample_size(np.array([0.0, -1000.0, -1000.0, -1000.0])) == pytest.approx(0.25)
    assert log_mean_exp(np.array([1000.0, 1000.0])) == pytest.approx(1000.0)


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_tau_int_of_ar1(rho):
    rng = np.random.default_rng(2)
    n = 200_000
    e = rng.normal(size=n)
    x = np.empty(n)
    x[0] = e[0]
    for i in range(1, n):
        x[i] = rho * x[i - 1] + e[i]
    tau, err, _ = tau_int(x)
    exact = (1 + rho) / (2 * (1 - rho))
    assert abs(tau - exact) < 3 * err + 0.02


@pytest.mark.parametrize("xi", [0.5, 0.9, 1.3])
def test_pareto_khat_recovers_tail_shape(xi):
    u = np.random.default_rng(3).random(16384)
    assert pareto_khat(-xi * np.log(u)) == pytest.approx(xi, abs=0.1)  # w = U^-xi has GPD shape xi


def test_pareto_khat_light_tails_are_reliable():
    rng = np.random.default_rng(4)
    assert pareto_khat(rng.normal(0, 0.3, 16384)) < 0.3
    assert pareto_khat(np.zeros(100)) == float("inf")  # degenerate: no tail to fit


# ---------------------------------------------------------------------------------------------
# Gamma-method (Wolff 2004) against pyerrors, short chains, weighted jackknife error, ArviZ k-hat
# ---------------------------------------------------------------------------------------------


def _ar1(rng, chains, n, rho, mean=0.0):
    """Stationary AR(1) chains ``[chains, n]`` with unit innovations: ``tau_int = (1+rho)/(2(1-rho))``."""
    x = np.empty((chains, n))
    x[:, 0] = rng.normal(size=chains) / math.sqrt(1 - rho**2)
    for i in range(1, n):
        x[:, i] = rho * x[:, i - 1] + rng.normal(size=chains)
    return x + mean


def _pyerrors_obs(chains, centre):
    """pyerrors Obs of ``chains`` (one replica each) with deviations taken around ``centre``."""
    import pyerrors as pe

    names = [f"ens|r{i}" for i in range(len(chains))]
    if centre is None:  # pyerrors' default: each replica around its own mean
        return pe.Obs(list(chains), names)
    return pe.Obs(list(chains - centre), names, means=[centre] * len(chains))


def test_gamma_method_equals_pyerrors_for_primary_and_derived_quantities():
    rng = np.random.default_rng(10)
    a = _ar1(rng, 8, 3000, 0.8, mean=2.0)
    b = _ar1(rng, 8, 3000, 0.5, mean=1.0) + 0.3 * a
    ours = gamma_method(a)
    oa = _pyerrors_obs(a, a.mean())  # same convention: pooled around the global mean
    oa.gamma_method(S=2.0)
    assert ours.value == pytest.approx(a.mean(), rel=1e-12)
    assert ours.error == pytest.approx(oa.dvalue, rel=1e-9)
    assert ours.tau_int == pytest.approx(oa.e_tauint["ens"], rel=1e-9)
    assert ours.tau_int_error == pytest.approx(oa.e_dtauint["ens"], rel=1e-9)
    assert ours.window == oa.e_windowsize["ens"]
    # a derived quantity by linearised propagation: ours (finite differences) against pyerrors on
    # the chains projected with the analytic gradient of F = <a>^2 / <b>
    derived = gamma_method({"a": a, "b": b}, lambda m: m["a"] ** 2 / m["b"])
    am, bm = a.mean(), b.mean()
    projected = _pyerrors_obs(2 * am / bm * (a - am) - am**2 / bm**2 * (b - bm), 0.0)
    projected.gamma_method(S=2.0)
    assert derived.value == pytest.approx(am**2 / bm, rel=1e-12)
    assert derived.error == pytest.approx(projected.dvalue, rel=1e-6)
    assert derived.tau_int == pytest.approx(projected.e_tauint["ens"], rel=1e-6)
    # pyerrors' default centres each replica on its own mean and propagates by autograd: the same
    # numbers to O(1/n) on long chains
    default_a, default_b = _pyerrors_obs(a, None), _pyerrors_obs(b, None)
    ratio = default_a**2 / default_b
    for obs, res in ((default_a, ours), (ratio, derived)):
        obs.gamma_method()
        assert res.error == pytest.approx(obs.dvalue, rel=0.05)
        assert res.tau_int == pytest.approx(obs.e_tauint["ens"], rel=0.05)


def test_pooled_tau_int_on_chains_shorter_than_ten_tau():
    """64 chains of 80 steps with tau = 9.5: the pooled estimate is right within its error; the
    per-chain estimates (each around its own mean, then averaged) are biased low."""
    rho, exact = 0.9, 9.5
    rng = np.random.default_rng(11)
    pooled, per_chain = [], []
    for _ in range(8):
        x = _ar1(rng, 64, 80, rho)
        res = gamma_method(x)
        assert not res.reliable  # 80 steps < 50 tau: flagged, not a confident number
        assert res.n == 64 * 80  # every sample entered
        pooled.append((res.tau_int, res.tau_int_error))
        per_chain.append(np.mean([gamma_method(c).tau_int for c in x]))
    taus, errs = np.array(pooled).T
    assert abs(taus.mean() - exact) < 2 * errs.mean() / math.sqrt(len(taus)) + 0.1 * exact
    assert np.mean(per_chain) < 0.7 * exact  # what the old per-chain average reported


def test_long_chains_are_reliable_and_tau_of_ar1_is_exact():
    rng = np.random.default_rng(12)
    res = gamma_method(_ar1(rng, 4, 20000, 0.5))
    assert res.reliable and abs(res.tau_int - 1.5) < 3 * res.tau_int_error


def test_chain_observables_uses_every_sample_and_reports_the_discard():
    from rgflow.physics.observables import chain_observables

    rng = np.random.default_rng(13)
    m = _ar1(rng, 4, 400, 0.5, mean=0.5)
    series = {"m1": m, "abs_m": np.abs(m), "m2": m**2, "m4": m**4, "e_link": m, "g0": m**2 + 2, "gp": m**2 + 1}
    full = chain_observables(series, L=4, discard=0)
    assert full.n_used == full.n_samples == 1600 and full.n_discarded == 0
    assert full.observables["m"].n == 1600 and full.observables["m"].mean == pytest.approx(m.mean())
    auto = chain_observables(series, L=4)
    assert 0 < auto.n_discarded <= 100 and auto.n_used == 4 * (400 - auto.n_discarded)
    assert auto.thermalized
    drift = {k: v + np.linspace(3, 0, 400) for k, v in series.items()}  # a chain that has not thermalised
    assert not chain_observables(drift, L=4, discard=0).thermalized
    with pytest.raises(ValueError, match="discard must be"):
        chain_observables(series, L=4, discard=399)


def test_weighted_jackknife_error_equals_the_delta_method():
    rng = np.random.default_rng(14)
    n = 20000
    a = rng.normal(1.0, 1.0, n)
    log_w = 0.5 * a + rng.normal(0, 0.5, n)  # weights correlated with the observable
    w = np.exp(log_w - log_w.max())
    mean = (w * a).sum() / w.sum()
    direct = math.sqrt(((w * (a - mean)) ** 2).sum()) / w.sum()  # linearised ratio-estimator error
    est = jackknife({"a": a}, lambda m: m["a"], log_w=log_w, n_bins=n)
    assert est.mean == pytest.approx(mean, rel=1e-12)
    assert est.error == pytest.approx(direct, rel=0.01)


@pytest.mark.parametrize("xi", [0.3, 0.6, 0.9, 1.2])
def test_pareto_khat_agrees_with_arviz(xi):
    from arviz_stats.base import array_stats

    log_w = -xi * np.log(np.random.default_rng(15).random(4000)) + 0.1 * np.random.default_rng(16).normal(size=4000)
    _, khat = array_stats.psislw(-log_w)  # ArviZ takes log-likelihoods: weights exp(-ary)
    assert pareto_khat(log_w) == pytest.approx(float(khat), abs=0.03)
