r"""``probe(run)``: the holographic probes of a trained flow, from samples of the exact target.

1. Boundary fields ``x`` under ``exp(-S)``: flow IMH or latent HMC on ``S_eff`` -- never the prior,
   under which bulk correlations vanish by construction. ``sampler="auto"`` (the default) takes IMH,
   whose step is one flow sample (tens of times cheaper than a latent-HMC trajectory), when the flow's
   ESS/N on a pilot of fresh samples is at least ``AUTO_IMH_ESS``, and latent HMC otherwise; the
   result says which one ran and why.
2. Bulk latents ``z = R(x)`` with ``R`` the run's flow, or (``coords="haar"``) the fixed
   orthonormal Haar map on the same Layout and the same samples.
3. Bulk correlators and mutual information by (level, level', separation)
   (:mod:`~rgflow.holography.correlators`), the boundary correlator with power-law and
   exponential fits, and the H^3 vs flat geometry fits (:mod:`~rgflow.holography.geometry`).
4. One JSON-ready dict and three figures in ``out_dir``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from matplotlib.figure import Figure
import numpy as np
import torch

from rgflow.holography.correlators import boundary_correlator, bulk_correlators, ksg_mutual_information
from rgflow.holography.geometry import fit_geometry, hyperbolic_distance

__all__ = ["probe", "target_samples", "choose_sampler", "PROBE_SAMPLERS", "AUTO_IMH_ESS", "fit_boundary"]

PROBE_SAMPLERS = ("auto", "imh", "latent-hmc")
#: the pilot ESS/N from which ``sampler="auto"`` takes flow IMH (its acceptance is then about 0.1 or more)
AUTO_IMH_ESS = 0.05


def choose_sampler(flow, action, seed: int = 0, pilot: int = 1024, batch: int = 256) -> tuple[str, dict]:
    """``("imh" | "latent-hmc", record)``: IMH when the Kish ESS/N of ``w = exp(-S - ln q)`` on ``pilot``
    fresh flow samples is at least :data:`AUTO_IMH_ESS`; ``record`` holds the pilot's ESS/N and the rule."""
    from rgflow.flows.base import device_of
    from rgflow.train.diagnostics import draw, weight_summary

    gen = torch.Generator(device=device_of(flow)).manual_seed(seed + 7919)
    _, log_q, S = draw(flow, action, pilot, batch, generator=gen)
    ess = weight_summary(log_q, S, 0.0)["ess"]
    choice = "imh" if ess >= AUTO_IMH_ESS else "latent-hmc"
    return choice, {"pilot_samples": pilot, "pilot_ess": ess, "imh_from_ess": AUTO_IMH_ESS}


def target_samples(flow, action, sampler: str, n: int, chains: int, seed: int, warmup: int) -> tuple[torch.Tensor, dict]:
    """Chains of boundary fields ``[chains, n_used, C, L, L]`` under the exact target, and their stats."""
    from rgflow.mcmc.run import run_sampler, summarize

    res = run_sampler(sampler, action, flow.layout.L, n, chains, seed, flow=flow, keep_every=1, warmup=warmup)
    summary = summarize(res, action, flow.layout.L)
    return res.configs[:, summary["n_discarded_per_chain"]:], summary


@torch.no_grad()
def _bulk(R, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """``z = R(x)`` in split order: ``[S, C, V]``."""
    params = list(R.parameters())
    dtype = params[0].dtype if params else x.dtype
    out = []
    for i in range(0, len(x), batch):
        z = R(x[i:i + batch].to(dtype))[0]
        out.append(torch.cat(R.layout.split(z), dim=2).double().cpu())
    return torch.cat(out)


def _fit_shape(r, y, err, shape_fn, grid):
    """Fit ``ln y = ln A + ln shape_fn(r, p)`` (``p`` scanned on ``grid``): ``(p, A, chi2, dof)``."""
    ly, w = np.log(y), (y / err) ** 2
    best = None
    for p in grid:
        s = np.log(shape_fn(r, p))
        lnA = float((w * (ly - s)).sum() / w.sum())
        chi2 = float((w * (ly - s - lnA) ** 2).sum())
        if best is None or chi2 < best[2]:
            best = (float(p), math.exp(lnA), chi2)
    return {"param": best[0], "A": best[1], "chi2": best[2], "dof": len(r) - 2, "aic": best[2] + 4}


def fit_boundary(rows: list, L: int) -> dict:
    """Power law ``A (r^-eta + (L-r)^-eta)`` and exponential ``A (e^{-r/xi} + e^{-(L-r)/xi})`` fits of
    ``G(r)`` over ``1 <= r <= L/2`` where ``G > 2 sigma``."""
    data = np.array([row for row in rows if row[0] >= 1 and row[1] > 2 * row[2]])
    if len(data) < 3:
        return {"power_law": None, "exponential": None, "note": "fewer than 3 significant points"}
    r, y, e = data.T
    power = _fit_shape(r, y, e, lambda r, eta: r**-eta + (L - r) ** -eta, np.linspace(0.01, 4.0, 400))
    expo = _fit_shape(r, y, e, lambda r, xi: np.exp(-r / xi) + np.exp(-(L - r) / xi), np.geomspace(0.1, 4 * L, 400))
    power["eta"], expo["xi"] = power.pop("param"), expo.pop("param")
    return {"power_law": power, "exponential": expo,
            "preferred": "power_law" if power["aic"] < expo["aic"] else "exponential"}


def _geometry(bulk: dict, L: int, key: str = "C") -> tuple[dict, np.ndarray]:
    keys = np.array(bulk["keys"], dtype=float)
    val, err = np.abs(np.array(bulk[key])), np.array(bulk[f"{key}_err"])
    sig = (val > 2 * err) & (err > 0)
    if sig.sum() < 4:
        return {"note": f"fewer than 4 significant {key} groups", "n_points": int(sig.sum())}, sig
    p = np.stack([keys[sig, 0], np.zeros(sig.sum()), np.zeros(sig.sum())], 1)
    q = np.stack([keys[sig, 1], keys[sig, 2], keys[sig, 3]], 1)
    ly, lerr = np.log(val[sig]), err[sig] / val[sig]
    fits = {g: fit_geometry(p, q, ly, lerr, L, g) for g in ("hyperbolic", "flat")}
    out = {g: f.to_dict() for g, f in fits.items()}
    out["preferred"] = min(fits, key=lambda g: fits[g].aic)
    out["delta_aic_flat_minus_hyperbolic"] = fits["flat"].aic - fits["hyperbolic"].aic
    out["n_points"] = int(sig.sum())
    return out, sig


def _nearest_pairs(coords: torch.Tensor, L: int) -> list[tuple[int, int]]:
    """For every level pair ``(l, l')`` the latents ``(i, j)`` of one pair with the smallest separation."""
    from rgflow.holography.correlators import pair_keys

    keys, index = pair_keys(coords, L)
    best: dict = {}
    for k, (l1, l2, a, b) in enumerate(keys):
        if (l1, l2) not in best or a * a + b * b < best[(l1, l2)][1]:
            best[(l1, l2)] = (k, a * a + b * b)
    return [tuple((index == k).nonzero()[0].tolist()) for k, _ in best.values()]


def probe(run: str | Path, n: int = 200, chains: int = 16, sampler: str = "auto", coords: str = "flow",
          seed: int = 0, warmup: int = 100, out_dir: str | Path | None = None, samples: tuple | None = None) -> dict:
    """All probes of a trained flow run (module docstring); figures into ``out_dir`` if given.

    ``samples``: the ``(fields, summary)`` of :func:`target_samples` for this run, to probe the same
    samples in other coordinates without sampling again (``sampler`` then names the sampler that drew them)."""
    from rgflow.flows.rgflow import haar_flow
    from rgflow.runs import open_run

    if sampler not in PROBE_SAMPLERS:
        raise ValueError(f"--sampler {sampler!r} is not allowed; allowed: {', '.join(PROBE_SAMPLERS)}")
    if coords not in ("flow", "haar"):
        raise ValueError(f"--coords {coords!r} is not allowed; allowed: flow, haar")
    if n < 8 or chains < 1:
        raise ValueError(f"--n must be >= 8 and --chains >= 1, got n={n}, chains={chains}")
    opened = open_run(run, "flow")
    cfg, flow = opened.config, opened.model
    if flow.layout is None or flow.layout.kind != "mera":
        raise ValueError(f"{run}: probes need a hierarchical MERA flow (a bulk with levels), got flow={cfg.flow!r}")
    action, layout = cfg.make_action(), flow.layout
    choice = None
    if sampler == "auto" and samples is not None:
        raise ValueError("sampler='auto' is not allowed with samples; allowed: the sampler that drew them (imh, latent-hmc)")
    t0 = time.perf_counter()
    if sampler == "auto":
        sampler, choice = choose_sampler(flow, action, seed)
    x, summary = samples if samples is not None else target_samples(flow, action, sampler, n, chains, seed, warmup)
    t1 = time.perf_counter()
    ref = next(flow.parameters())
    R = flow if coords == "flow" else haar_flow(layout, flow.channels).to(dtype=ref.dtype, device=ref.device)
    S = x.shape[0] * x.shape[1]
    z = _bulk(R, x.reshape(S, *x.shape[2:]))
    bc = layout.bulk_coordinates()
    bulk = bulk_correlators(z, bc, layout.L, n_blocks=2 * x.shape[0])
    pairs = _nearest_pairs(bc, layout.L)
    ksg = ksg_mutual_information(z, pairs)
    boundary = boundary_correlator(x)
    geometry, sig = _geometry(bulk, layout.L)
    geometry_mi, _ = _geometry(bulk, layout.L, "mi")
    result = {
        "run": str(run), "action": action.name, "params": dict(action.params), "L": layout.L,
        "coords": coords, "sampler": sampler, "sampler_choice": choice, "n_samples": S, "chains": int(x.shape[0]),
        "sampler_stats": {k: summary[k] for k in ("acceptance", "n_discarded", "n_discarded_per_chain", "thermalized")},
        "tau_int_abs_m": summary["tau_int"]["abs_m"],
        "geometry": geometry, "geometry_mi": geometry_mi,
        "bulk_correlators": [{"levels": [k[0], k[1]], "separation": [k[2], k[3]], "pairs": p, "value": [c, e],
                              "mi_gaussian": [m, me]}
                             for k, p, c, e, m, me in zip(bulk["keys"], bulk["pairs"], bulk["C"], bulk["C_err"],
                                                          bulk["mi"], bulk["mi_err"])],
        "mi_ksg": [{"latents": [i, j], "levels": [int(bc[i, 0]), int(bc[j, 0])], "value": v} for (i, j), v in zip(pairs, ksg)],
        "total_mi_gaussian": bulk["total_mi"],
        "total_mi_gaussian_plain": bulk["total_mi_plain"],
        "boundary_correlator": boundary,
        "boundary_fits": fit_boundary(boundary, layout.L),
        "seconds": {"sampling": t1 - t0, "analysis": time.perf_counter() - t1},
    }
    if out_dir is not None:
        _figures(result, bulk, sig, Path(out_dir))
    return result


def _figures(result: dict, bulk: dict, sig: np.ndarray, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    L = result["L"]
    keys = np.array(bulk["keys"], dtype=float)
    val, err = np.abs(np.array(bulk["C"])), np.array(bulk["C_err"])
    fig = Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    geo = result["geometry"]
    if "hyperbolic" in geo:
        h0 = geo["hyperbolic"]["params"]["h0"][0]
        p = np.stack([keys[:, 0], 0 * keys[:, 0], 0 * keys[:, 0]], 1)
        d = hyperbolic_distance(p, keys[:, [1, 2, 3]], L, h0)
        for l1 in np.unique(keys[sig, 0]):
            m = sig & (keys[:, 0] == l1)
            ax.errorbar(d[m], val[m], err[m], fmt="o", ms=3, label=f"level {int(l1)} with coarser", alpha=0.7)
        a, xi = geo["hyperbolic"]["params"]["a"][0], geo["hyperbolic"]["params"]["xi"][0]
        grid = np.linspace(0, d[sig].max(), 50)
        ax.plot(grid, np.exp(a - grid / xi), "k-", label=f"H³ fit: ξ = {xi:.2f}, h0 = {h0:.2f}")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    ax.set(xlabel="hyperbolic distance d (H³, upper half space)", ylabel="|C_ij| (bulk, connected)",
           title=f"{result['action']} L={L}: bulk correlation ({result['coords']} coordinates)")
    fig.tight_layout()
    fig.savefig(out / "bulk_correlation.png", dpi=110)
    n_lev = int(keys[:, 1].max()) + 1
    seps = sorted({(int(a), int(b)) for a, b in keys[:, 2:]}, key=lambda s: s[0] ** 2 + s[1] ** 2)[:12]
    mi = np.full((n_lev * (n_lev + 1) // 2, len(seps)), np.nan)
    labels = []
    row = 0
    for l1 in range(n_lev):
        for l2 in range(l1, n_lev):
            labels.append(f"({l1},{l2})")
            for k, (l1_, l2_, a, b) in enumerate(bulk["keys"]):
                if (l1_, l2_) == (l1, l2) and (a, b) in seps:
                    mi[row, seps.index((a, b))] = bulk["mi"][k]
            row += 1
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    im = ax.imshow(np.log10(np.maximum(mi, 1e-8)), aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xticks(range(len(seps)), [f"{a},{b}" for a, b in seps], fontsize=7, rotation=45)
    ax.set(xlabel="separation (|dx|, |dy|)", ylabel="levels (l, l')",
           title=f"Gaussian mutual information per pair (log10), total {result['total_mi_gaussian'][0]:.3g} nats")
    fig.colorbar(im)
    fig.tight_layout()
    fig.savefig(out / "mutual_information.png", dpi=110)
    rows = np.array(result["boundary_correlator"])
    fig = Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    ax.errorbar(rows[:, 0], rows[:, 1], rows[:, 2], fmt="o", label="G(r)")
    fits = result["boundary_fits"]
    r = np.linspace(1, L / 2, 100)
    if fits.get("power_law"):
        pl, ex = fits["power_law"], fits["exponential"]
        ax.plot(r, pl["A"] * (r ** -pl["eta"] + (L - r) ** -pl["eta"]), "-", label=f"power law η = {pl['eta']:.2f}")
        ax.plot(r, ex["A"] * (np.exp(-r / ex["xi"]) + np.exp(-(L - r) / ex["xi"])), "--",
                label=f"exponential ξ = {ex['xi']:.2f}")
    ax.set(xscale="log", yscale="log", xlabel="r", ylabel="G(r)", title="boundary correlator")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "boundary_correlator.png", dpi=110)
