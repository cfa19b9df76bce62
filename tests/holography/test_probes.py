"""Holographic probes: exact Gaussian free-field correlators, the H^3 metric, the geometry fits, the CLI."""
import json
import math

import numpy as np
import pytest
import torch

from rgflow.cli import main
from rgflow.flows import haar_flow
from rgflow.holography import bulk_correlators, fit_geometry, flat_distance, hyperbolic_distance, pair_keys
from rgflow.layout import Layout
from tests.diffusion.test_gaussian import _field_covariance


def test_bulk_correlators_of_the_free_field_equal_the_exact_ones():
    """Haar latents of exact free-field samples: group-averaged C_ij and Gaussian MI equal the
    group averages of the dense exact covariance R K^-1 R^T within errors."""
    L, m2 = 8, 0.5
    layout = Layout(L)
    R_flow = haar_flow(layout).double()
    K_inv = _field_covariance(L, m2)
    eye = torch.eye(L * L, dtype=torch.float64).reshape(-1, 1, L, L)
    R = torch.cat(layout.split(R_flow(eye)[0]), dim=2).reshape(L * L, L * L).T  # z (split order) = R x
    cov = R @ K_inv @ R.T
    x = (torch.linalg.cholesky(K_inv) @ torch.randn(L * L, 20000, dtype=torch.float64,
                                                      generator=torch.Generator().manual_seed(0))).T
    z = (x @ R.T)[:, None, :]
    coords = layout.bulk_coordinates()
    res = bulk_correlators(z, coords, L, n_blocks=40)
    keys, index = pair_keys(coords, L)
    rho = cov / torch.sqrt(cov.diagonal()[:, None] * cov.diagonal()[None, :])
    mi = -0.5 * torch.log1p(-rho**2)
    ok = index >= 0
    sizes = torch.bincount(index[ok], minlength=len(keys)).double()
    exact_c = torch.zeros(len(keys), dtype=torch.float64).index_add_(0, index[ok], cov[ok]) / sizes
    exact_mi = torch.zeros(len(keys), dtype=torch.float64).index_add_(0, index[ok], mi[ok]) / sizes
    zc = (torch.tensor(res["C"]) - exact_c) / torch.tensor(res["C_err"])
    assert zc.abs().max() < 5 and (zc**2).mean() < 2.0
    zmi = (torch.tensor(res["mi"]) - exact_mi) / torch.tensor(res["mi_err"])
    assert zmi.abs().max() < 5 and (zmi**2).mean() < 2.0  # bias-corrected: no O(1/N) floor left
    total, err = res["total_mi"]
    assert abs(total - float(mi[ok].sum())) < 4 * err


@pytest.mark.parametrize("channels", [1, 2])
def test_the_bulk_mi_of_independent_latents_is_zero_within_errors(channels):
    """Independent latents have no mutual information, but their sample correlations do not vanish:
    the plain estimate sums a floor of 1/(2N) nats per pair (E rho^2 = 1/(CN) with C channels summed);
    the bias-corrected one is zero within errors."""
    L, S = 8, 4000
    coords = Layout(L).bulk_coordinates()
    z = torch.randn(S, channels, L * L, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    res = bulk_correlators(z, coords, L, n_blocks=40)
    pairs = L * L * (L * L - 1) / 2
    assert res["total_mi_plain"] == pytest.approx(pairs / (2 * S), rel=0.1)  # the floor, 0.25 nats for any C
    total, err = res["total_mi"]
    assert abs(total) < 4 * err and err < 0.1 * res["total_mi_plain"]
    assert abs(np.mean(np.array(res["mi"]) / np.array(res["mi_err"]))) < 0.5


def test_hyperbolic_distance_is_a_metric_with_known_values():
    rng = np.random.default_rng(0)
    L = 16
    pts = np.stack([rng.integers(0, 4, 300), rng.integers(0, L, 300), rng.integers(0, L, 300)], 1)
    a, b, c = pts[:100], pts[100:200], pts[200:]
    for h0 in (0.5, 1.0, 3.0):
        dab, dba = hyperbolic_distance(a, b, L, h0), hyperbolic_distance(b, a, L, h0)
        assert np.allclose(dab, dba) and np.allclose(hyperbolic_distance(a, a, L, h0), 0)
        assert np.all(dab <= hyperbolic_distance(a, c, L, h0) + hyperbolic_distance(c, b, L, h0) + 1e-9)
    # straight up one level: ln(h2/h1) = ln 2; at equal height h: cosh d = 1 + dx^2 / (2 h^2)
    assert hyperbolic_distance(np.array([0, 3, 3]), np.array([1, 3, 3]), L, 1.7) == pytest.approx(math.log(2))
    assert hyperbolic_distance(np.array([0, 0, 0]), np.array([0, 2, 0]), L, 1.0) == pytest.approx(math.acosh(3.0))
    assert hyperbolic_distance(np.array([0, 0, 0]), np.array([0, 15, 0]), L, 1.0) == pytest.approx(math.acosh(1.5))


@pytest.mark.parametrize("truth", ["hyperbolic", "flat"])
def test_geometry_fit_recovers_synthetic_parameters_and_prefers_the_true_geometry(truth):
    rng = np.random.default_rng(1)
    L, n = 32, 400
    p = np.stack([rng.integers(0, 4, n), np.zeros(n), np.zeros(n)], 1)
    q = np.stack([p[:, 0] + rng.integers(0, 2, n), rng.integers(0, 12, n), rng.integers(0, 12, n)], 1)
    shape, a, xi = (1.3, 0.5, 0.8) if truth == "hyperbolic" else (2.0, 0.5, 3.0)
    dist = hyperbolic_distance if truth == "hyperbolic" else flat_distance
    err = np.full(n, 0.05)
    y = a - dist(p, q, L, shape) / xi + err * rng.normal(size=n)
    fits = {g: fit_geometry(p, q, y, err, L, g) for g in ("hyperbolic", "flat")}
    best = fits[truth]
    assert best.shape == pytest.approx(shape, abs=4 * best.shape_error + 1e-3)
    assert best.xi == pytest.approx(xi, abs=4 * best.xi_error + 1e-3)
    assert best.a == pytest.approx(a, abs=4 * best.a_error + 1e-3)
    assert best.chi2 / best.dof == pytest.approx(1.0, abs=0.25)
    other = "flat" if truth == "hyperbolic" else "hyperbolic"
    assert best.aic < fits[other].aic - 10


@pytest.fixture(scope="module")
def complex_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("probe") / "run"
    assert main(["train", "--action", "complex-phi4", "--L", "8", "--hidden", "8", "--n-couplings", "2",
                 "--batch-size", "16", "--steps", "20", "--out", str(run)]) == 0
    return run


def test_probe_cli_end_to_end(complex_run, tmp_path, capsys):
    out = tmp_path / "probe"
    assert main(["probe", str(complex_run), "--n", "40", "--chains", "4", "--json", "--out", str(out)]) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("geometry", "bulk_correlators", "boundary_correlator", "n_samples", "sampler"):
        assert key in res
    # auto: the pilot's ESS/N decides, and the result says so
    choice = res["sampler_choice"]
    assert res["sampler"] == ("imh" if choice["pilot_ess"] >= choice["imh_from_ess"] else "latent-hmc")
    assert res["n_samples"] <= 160
    assert [row[0] for row in res["boundary_correlator"]] == list(range(5))
    assert all(len(row) == 3 for row in res["boundary_correlator"])
    assert all({"levels", "separation", "value"} <= set(b) for b in res["bulk_correlators"])
    for name in ("bulk_correlation.png", "mutual_information.png", "boundary_correlator.png", "result.json"):
        assert (out / name).is_file()
    assert main(["probe", str(complex_run), "--n", "40", "--chains", "4", "--coords", "haar", "--sampler", "latent-hmc",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "haar coordinates" in printed and "(latent-hmc, acceptance" in printed


def test_auto_sampler_takes_imh_when_the_flow_matches_the_target_and_latent_hmc_otherwise():
    """The pilot ESS/N rule: a flow at its identity initialisation is exactly the unit Gaussian (ESS 1);
    against a Gaussian of a quarter of the variance its ESS is far below the threshold."""
    from rgflow.flows import build_flow
    from rgflow.holography.probe import AUTO_IMH_ESS, choose_sampler

    flow = build_flow(Layout(8)).double()
    choice, record = choose_sampler(flow, lambda x: 0.5 * (x**2).sum((1, 2, 3)))
    assert choice == "imh" and record["pilot_ess"] == pytest.approx(1.0, abs=1e-6)
    choice, record = choose_sampler(flow, lambda x: 2.0 * (x**2).sum((1, 2, 3)))
    assert choice == "latent-hmc" and record["pilot_ess"] < AUTO_IMH_ESS


def test_probe_of_a_trained_free_field_flow_gives_the_exact_boundary_correlator(tmp_path, capsys):
    """The user's path: `rgflow train` on the free field, then `rgflow probe` with its defaults (auto picks
    IMH for a good flow): G(r) within 4 sigma + 2 % of the exact propagator for r = 0 .. L/2."""
    from rgflow.physics.exact import free_field_two_point

    run = tmp_path / "free"
    assert main(["train", "--action", "free", "--m2", "0.5", "--L", "8", "--steps", "300", "--eval-every", "1000",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["probe", str(run), "--n", "400", "--chains", "8", "--json", "--out", str(tmp_path / "p")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["sampler"] == "imh" and res["sampler_choice"]["pilot_ess"] > 0.5
    exact = free_field_two_point(8, 0.5)
    for r, value, error in res["boundary_correlator"]:
        assert abs(value - float(exact[r, 0])) < 4 * error + 0.02 * float(exact[0, 0]), (r, value, float(exact[r, 0]))


def test_probe_bad_input(complex_run, tmp_path, capsys):
    flat = tmp_path / "flat"
    assert main(["train", "--flow", "flat", "--L", "4", "--n-couplings", "2", "--steps", "2", "--out", str(flat)]) == 0
    capsys.readouterr()
    for args, needle in ((["probe", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "is not a run folder"),
                         (["probe", str(flat), "--out", str(tmp_path / "o")], "probes need a hierarchical MERA flow"),
                         (["probe", str(complex_run), "--n", "1", "--out", str(tmp_path / "o")], "--n must be >= 8")):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1


def test_ksg_mutual_information_of_correlated_gaussians_with_repeated_states():
    """KSG against the exact Gaussian MI -1/2 ln(1 - rho^2), on a 'chain' whose states repeat."""
    from rgflow.holography import ksg_mutual_information

    rho = 0.8
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(1000, dtype=torch.float64, generator=gen)
    b = rho * a + math.sqrt(1 - rho**2) * torch.randn(1000, dtype=torch.float64, generator=gen)
    z = torch.stack([a, b], dim=1)[:, None, :].repeat_interleave(2, dim=0)  # every state twice
    (value, error), = ksg_mutual_information(z, [(0, 1)])
    assert math.isfinite(value) and abs(value - (-0.5 * math.log(1 - rho**2))) < 0.1
