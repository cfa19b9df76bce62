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
