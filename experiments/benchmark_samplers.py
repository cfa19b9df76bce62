"""Sampler benchmark: local Metropolis, HMC, embedded clusters, flow IMH and latent HMC at near-critical phi^4.

Stages (all by default, one after the other):

1. ``kappa``: the critical hopping parameter of the hopping-convention phi^4 at lam = 0.022
   from the crossing of the Binder cumulants U_4(kappa) of L = 16 and L = 32 (checkerboard
   local Metropolis, Gamma-method errors pooled over chains; the crossing's statistical error by
   a parametric bootstrap). Thermalisation: 500 unrecorded sweeps, then the automatic cut
   (10 tau_int, at most a quarter); the same chains analysed with half of every chain discarded
   give a second crossing, and the difference is the warm-up systematic, added in quadrature.
2. ``train``: rgflow's default flow (reverse KL) for each point: hopping phi^4 at kappa_c for
   L = 16, 32 and 64, and the E-line point L = 32 (standard convention, m2 = -4, lam = 4.572).
   The L = 32 and 64 flows start from the trained flow of half their size (``--init-from``, size
   transfer: a plain weight copy for the default conv flow), so their training cost is their own
   budget plus the smaller ones'. Retraining a point with another block kind keeps the previous flow
   samplers' rows under ``earlier_flow`` (with that flow's config), so the JSON shows both.
3. ``sample``: every sampler on every point, ``chains`` chains each; tau_int of |m| and m^2
   (Madras-Sokal window) and the cost per independent sample, ``2 tau_int`` times the cost per
   step in seconds and in action gradients. tau_int is reported for the odd magnetisation m
   next to |m| and m^2 (chi). Flow training time is reported separately (a one-time cost).
   Chains of the physical-space samplers grow as L/16 (their tau_int grows with L). The cluster
   samplers (embedded Swendsen-Wang followed by a local sweep, or by an HMC trajectory) were added
   after the recorded run: rerun ``--stages sample`` to include them. ``--samplers imh,latent-hmc``
   re-measures only those and keeps the other rows.

The growth of the cost per independent |m| sample with L is fitted for each sampler at kappa_c,
``cost = a L^z`` (weighted least squares in log-log, errors from tau_int), and the L where latent
HMC's fit crosses HMC's is extrapolated, in seconds on this CPU and in gradients.

Usage::

    python experiments/benchmark_samplers.py                       # everything (about 60 min)
    python experiments/benchmark_samplers.py --stages sample --points hop-L16
    python experiments/benchmark_samplers.py --stages train,sample --points hop-L16,hop-L32,hop-L64 \
        --samplers imh,latent-hmc --minutes 10      # new flows, the physical-space rows kept
    python experiments/benchmark_samplers.py --report               # figure and table from the JSON
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common import add_output_arguments, machine  # noqa: E402

from rgflow.config import TrainConfig  # noqa: E402
from rgflow.mcmc.run import run_sampler, summarize  # noqa: E402
from rgflow.physics.models import make_action  # noqa: E402
from rgflow.stats import format_value_error  # noqa: E402
from rgflow.train import train  # noqa: E402
from rgflow.runs import open_run  # noqa: E402

LAM = 0.022
KAPPAS = (0.262, 0.265, 0.268, 0.271, 0.274, 0.277, 0.280)
POINTS = ("hop-L16", "hop-L32", "hop-L64", "eline-L32")
#: recorded steps per chain at L = 16; those of local, HMC and the cluster samplers grow as L/16, IMH's see
#: IMH_GROWTH, latent HMC's (tau_int of a few steps, each step costing ~V) shrink as sqrt(16/L), its warm-up
#: is 100 steps
SAMPLERS = {"local": 4000, "hmc": 2000, "cluster": 4000, "cluster-hmc": 2000, "imh": 4000, "latent-hmc": 400}
#: IMH's steps relative to L = 16: a proposal costs ~V and at L = 64 almost none is accepted
IMH_GROWTH = {32: 2.0, 64: 0.5}
#: training minutes relative to ``--minutes`` (the L = 32 and 64 flows are grown from the next smaller one)
TRAIN_SCALE = {"hop-L16": 1.0, "hop-L32": 1.25, "hop-L64": 1.5, "eline-L32": 1.25}


def binder_scan(Ls=(16, 32), kappas=KAPPAS, n: int = 4000, chains: int = 32, seed: int = 0,
                warmup: int = 500) -> dict:
    """U_4(kappa) for each L by local Metropolis.

    Returns ``{"auto": {L: rows}, "half": {L: rows}}``, rows ``[kappa, U, dU, tau_int(|m|), n_discarded,
    thermalized]``: the same chains analysed with the automatic thermalisation cut and with half of
    every chain discarded.
    """
    scan = {"auto": {}, "half": {}}
    for L in Ls:
        rows = {"auto": [], "half": []}
        for k in kappas:
            action = make_action("phi4-hopping", kappa=k, lam=LAM)
            res = run_sampler("local", action, L, n, chains, seed, warmup=warmup)
            for cut, discard in (("auto", "auto"), ("half", n // 2)):
                est = summarize(res, action, L, discard=discard)
                rows[cut].append([k, *est["observables"]["binder"], est["tau_int"]["abs_m"][0], est["n_discarded_per_chain"],
                                  est["thermalized"]])
            a = rows["auto"][-1]
            print(f"L={L} kappa={k}: U4 = {format_value_error(a[1], a[2])} (half cut: "
                  f"{format_value_error(*rows['half'][-1][1:3])}), tau_int(|m|) = {a[3]:.1f}, discarded {a[4]}, "
                  f"thermalized {a[5]}", flush=True)
        for cut in rows:
            scan[cut][str(L)] = rows[cut]
    return scan


def crossing(scan: dict, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Where U_4(L=16) - U_4(L=32) changes sign (linear interpolation), with a bootstrap error."""
    a, b = (np.array(scan[k], dtype=float)[:, :3] for k in sorted(scan, key=int))
    rng = np.random.default_rng(seed)

    def cross(ua, ub):
        d = ua - ub
        i = np.nonzero(np.sign(d[:-1]) != np.sign(d[1:]))[0]
        if not len(i):
            return np.nan
        i = i[0]
        return a[i, 0] + (a[i + 1, 0] - a[i, 0]) * d[i] / (d[i] - d[i + 1])

    k0 = cross(a[:, 1], b[:, 1])
    boots = [cross(a[:, 1] + a[:, 2] * rng.standard_normal(len(a)), b[:, 1] + b[:, 2] * rng.standard_normal(len(b)))
             for _ in range(n_boot)]
    return float(k0), float(np.nanstd(boots))


def point_config(point: str, kappa_c: float, minutes: float, work: Path) -> TrainConfig:
    if point == "eline-L32":
        return TrainConfig(action="phi4", L=32, params={"m2": -4.0, "lam": 4.572}, minutes=minutes)
    L = int(point.split("L")[-1])
    init = {"init_from": str(work / f"hop-L{L // 2}")} if L > 16 else {}
    return TrainConfig(action="phi4-hopping", L=L, params={"kappa": kappa_c, "lam": LAM}, minutes=minutes, **init)


FLOW_SAMPLERS = ("imh", "latent-hmc")


def sample_point(run_dir: Path, chains: int, seed: int, scale: float, samplers=tuple(SAMPLERS)) -> list[dict]:
    run = open_run(run_dir, "flow")
    cfg, flow = run.config, run.model
    action = cfg.make_action()
    rows = []
    for sampler in samplers:
        n = SAMPLERS[sampler]
        grow = {"latent-hmc": (16 / cfg.L) ** 0.5, "imh": IMH_GROWTH.get(cfg.L, 1.0)}.get(sampler, cfg.L / 16)
        res = run_sampler(sampler, action, cfg.L, int(n * scale * grow), chains, seed, flow=flow,
                          warmup=100 if sampler == "latent-hmc" else 200)
        rows.append(summarize(res, action, cfg.L))
        tau = rows[-1]["tau_int"]["abs_m"]
        print(f"{run_dir.name} {sampler}: acceptance {res.acceptance:.3f}, tau_int(|m|) = {format_value_error(*tau)}, "
              f"{rows[-1]['seconds_per_step'] * 1e3:.3f} ms/step", flush=True)
    return rows


def fit_growth(result: dict, samplers=("hmc", "latent-hmc", "imh", "local", "cluster", "cluster-hmc")) -> dict:
    """``cost = a L^z`` per sampler over the kappa_c points (weighted least squares of ln cost on ln L,
    the weight from tau_int's relative error), in seconds and in gradients per independent |m| sample;
    and the L where latent HMC's fitted cost would cross HMC's (an extrapolation, not a measurement)."""
    fits = {}
    for s in samplers:
        rows = [r for p, e in sorted(result["points"].items()) if p.startswith("hop-")
                for r in e.get("samplers", []) if r["sampler"] == s]
        if len(rows) < 2:
            continue
        L = np.array([r["L"] for r in rows], dtype=float)
        rel = np.array([r["tau_int"]["abs_m"][1] / r["tau_int"]["abs_m"][0] for r in rows])
        fits[s] = {"L": L.tolist()}
        for unit in ("seconds", "grad_evals"):
            cost = np.array([r["cost_per_independent_sample"]["abs_m"][unit] for r in rows])
            if not (cost > 0).all():
                continue
            A = np.stack([np.ones_like(L), np.log(L)], 1) / rel[:, None]
            coef, *_ = np.linalg.lstsq(A, np.log(cost) / rel, rcond=None)
            cov = np.linalg.inv(A.T @ A)
            fits[s][unit] = {"ln_a": float(coef[0]), "z": float(coef[1]), "z_err": float(np.sqrt(cov[1, 1])),
                             "cost": cost.tolist()}
    cross = {}
    for unit in ("seconds", "grad_evals"):
        h, lat = fits.get("hmc", {}).get(unit), fits.get("latent-hmc", {}).get(unit)
        if h and lat and h["z"] != lat["z"]:
            cross[unit] = float(np.exp((lat["ln_a"] - h["ln_a"]) / (h["z"] - lat["z"])))
    return {"fits": fits, "crossover_L": cross}


def markdown_table(result: dict) -> str:
    lines = ["| point | sampler | acceptance | τ_int(\\|m\\|) | τ_int(m²) | τ_int(m) | ms / step | grads / step | "
             "s / indep. sample (\\|m\\|) | grads / indep. sample | ⟨\\|m\\|⟩ | χ |", "|---|" + "---|" * 11]

    def tau(r, name):  # an asterisk marks a tau_int from chains shorter than 50 tau_int
        return format_value_error(*r["tau_int"][name]) + ("" if r["reliable"][name] else "*")

    for point in POINTS:
        for r in result["points"].get(point, {}).get("samplers", []):
            c = r["cost_per_independent_sample"]["abs_m"]
            lines.append(
                f"| {point} | {r['sampler']} | {r['acceptance']:.3f} | {tau(r, 'abs_m')} | "
                f"{tau(r, 'chi')} | {tau(r, 'm')} | {r['seconds_per_step'] * 1e3:.3f} | "
                f"{r['grad_evals_per_step']:g} | {c['seconds']:.2e} | {c['grad_evals']:.0f} | "
                f"{format_value_error(*r['observables']['abs_m'])} | {format_value_error(*r['observables']['chi'])} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    fig, ax = plt.subplots(1, 5, figsize=(26, 4.4))
    scan = result.get("binder_scan", {}).get("auto", {})
    for L, rows in scan.items():
        r = np.array(rows, dtype=float)
        ax[0].errorbar(r[:, 0], r[:, 1], r[:, 2], marker="o", capsize=2, label=f"L = {L}")
    if "kappa_c" in result:
        kc, dk = result["kappa_c"][:2]
        ax[0].axvspan(kc - dk, kc + dk, color="k", alpha=0.15, label=f"κ_c = {format_value_error(kc, dk)}")
    ax[0].set(xlabel="κ", ylabel="Binder cumulant $U_4$", title=f"hopping φ⁴, λ = {LAM}")
    ax[0].legend()
    points = [p for p in POINTS if "samplers" in result["points"].get(p, {})]
    samplers = list(SAMPLERS)
    width = 0.8 / len(samplers)
    for k, s in enumerate(samplers):
        rs = [next((r for r in result["points"][p]["samplers"] if r["sampler"] == s), None) for p in points]
        xs = [i + (k - (len(samplers) - 1) / 2) * width for i in range(len(points))]
        tau = [r["tau_int"]["abs_m"][0] if r else np.nan for r in rs]
        err = [r["tau_int"]["abs_m"][1] if r else 0 for r in rs]
        cost = [r["cost_per_independent_sample"]["abs_m"]["seconds"] if r else np.nan for r in rs]
        grads = [r["cost_per_independent_sample"]["abs_m"]["grad_evals"] if r else np.nan for r in rs]
        ax[1].bar(xs, tau, width, yerr=err, capsize=2, label=s)
        ax[2].bar(xs, cost, width, label=s)
        if any(g > 0 for g in grads):  # local and imh use no gradients
            ax[3].bar(xs, grads, width, label=s, color=f"C{k}")
    ax[1].axhline(2, color="k", ls="--", lw=1, label="goal τ_int ≤ 2")
    for a, title in ((ax[1], "τ_int(|m|) [sampler steps]"), (ax[2], "seconds per independent |m| sample"),
                     (ax[3], "gradients per independent |m| sample\n(HMC: of S; latent HMC: of S_eff, through the flow)")):
        a.set_xticks(range(len(points)), points)
        a.set_yscale("log")
        a.set_title(title)
        a.legend(fontsize=8)
    growth = result.get("growth", {}).get("fits", {})
    for k, s in enumerate(samplers):
        f = growth.get(s, {}).get("seconds")
        if not f:
            continue
        L = np.array(growth[s]["L"])
        ax[4].plot(L, f["cost"], "o", color=f"C{k}")
        Ls = np.geomspace(L.min(), 4 * L.max(), 50)
        ax[4].plot(Ls, np.exp(f["ln_a"]) * Ls ** f["z"], "-", color=f"C{k}", lw=1,
                   label=f"{s}: z = {f['z']:.1f} ± {f['z_err']:.1f}")
    ax[4].set(xscale="log", yscale="log", xlabel="L", title="s per independent |m| at κ_c vs L (fit a·L^z)")
    ax[4].set_xscale("log", base=2)
    ax[4].legend(fontsize=8)
    fig.suptitle(f"samplers at near-critical φ⁴ on {result['machine']['cpus']} CPU cores "
                 f"({result['machine']['torch_threads']} torch thread(s) per run)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stages", default="kappa,train,sample", help="comma-separated subset of kappa, train, sample")
    p.add_argument("--points", default=",".join(POINTS), help=f"comma-separated subset of {', '.join(POINTS)}")
    p.add_argument("--minutes", type=float, default=8.0,
                   help="flow training budget at L = 16 (x1.25 at L = 32, x1.5 at L = 64 on top of L = 32)")
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--scale", type=float, default=1.0, help="multiply every sampler's chain length")
    p.add_argument("--samplers", default=",".join(SAMPLERS),
                   help=f"comma-separated subset of {', '.join(SAMPLERS)}; the other rows of a point are kept")
    add_output_arguments(p, "samplers")
    args = p.parse_args()
    stages, points, samplers = args.stages.split(","), args.points.split(","), args.samplers.split(",")
    if set(points) - set(POINTS) or set(stages) - {"kappa", "train", "sample"} or set(samplers) - set(SAMPLERS):
        p.error(f"allowed points: {', '.join(POINTS)}; allowed stages: kappa, train, sample; "
                f"allowed samplers: {', '.join(SAMPLERS)}")
    out, work = Path(args.out), Path(args.work)
    result = json.loads(out.read_text()) if out.exists() else {"points": {}}

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")

    if not args.report:
        result["machine"] = machine()
        if "kappa" in stages:
            result["binder_scan"] = scan = binder_scan(seed=args.seed)
            k_auto, stat = crossing(scan["auto"])
            k_half, _ = crossing(scan["half"])
            syst = abs(k_auto - k_half)
            # [value, total error, statistical, warm-up systematic]
            result["kappa_c"] = [k_auto, float(np.hypot(stat, syst)), stat, syst]
            print(f"kappa_c = {format_value_error(k_auto, result['kappa_c'][1])} (statistical {stat:.2g}, "
                  f"warm-up systematic {syst:.2g}: half-chain cut gives {k_half:.5f})", flush=True)
            save()
        kappa_c = round(result["kappa_c"][0], 4)
        for point in points:
            run_dir = work / point
            entry = result["points"].setdefault(point, {})
            if "train" in stages:
                cfg = point_config(point, kappa_c, args.minutes * TRAIN_SCALE[point], work)
                cfg.seed, cfg.eval_every = args.seed, 10**9
                if entry.get("config", {}).get("block", cfg.block) != cfg.block:  # rows of the architecture replaced
                    entry["earlier_flow"] = {
                        "config": entry["config"], "train_seconds": entry.get("train_seconds"),
                        "samplers": [r for r in entry.get("samplers", []) if r["sampler"] in FLOW_SAMPLERS]}
                shutil.rmtree(run_dir, ignore_errors=True)
                summary = train(cfg, run_dir)
                entry.update(config=cfg.to_dict(), train_seconds=summary["elapsed"], train_steps=summary["step"])
                save()
            if "sample" in stages:
                new = sample_point(run_dir, args.chains, args.seed, args.scale, samplers)
                kept = [r for r in entry.get("samplers", []) if r["sampler"] not in samplers]
                entry["samplers"] = sorted(kept + new, key=lambda r: list(SAMPLERS).index(r["sampler"]))
                save()
    result["growth"] = fit_growth(result)
    save()
    plot(result, Path(args.figure))
    print(markdown_table(result))
    for s, f in result["growth"]["fits"].items():
        print(s, {u: f"z = {v['z']:.2f} ± {v['z_err']:.2f}" for u, v in f.items() if u != "L"})
    print("latent HMC = HMC at L ≈", result["growth"]["crossover_L"])


if __name__ == "__main__":
    main()
