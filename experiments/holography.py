"""Holography experiment: emergent bulk geometry of complex phi^4 on 32x32, learned flow vs Haar map.

Stages (one after the other, one torch thread):

1. ``scan``: complex phi^4 in NeuralRG's O(2) form, ``t = kappa``, ``mu = 1 - 2 lam``, ``lam = 1``:
   HMC at L = 16 and 32 over kappa; the second-moment correlation length xi_2 / L of both sizes.
   In the disordered (massive) phase xi_2/L falls with L; in the quasi-long-range-ordered (BKT)
   phase the curves merge. The *critical* point is the first kappa where
   (xi_2/L)_32 / (xi_2/L)_16 > 0.95, the *massive* one the largest kappa with xi_2(32) < 3.
   ``fss`` (not in the default stages): the embedded cluster update with HMC (``--fss-sampler``) at
   L = 16, 32 and 64 on the critical side, ``--fss-n`` steps per chain; ``eta = 2 - log2(chi_2L / chi_L)``
   between consecutive sizes pins the BKT phase (``eta <= 1/4``). Both stages' eta are in ``eta_fss``.
2. ``train``: the default flow by reverse KL at both points (``--minutes`` each); the flatness of its
   loss is recorded (mean loss of the last tenth of the steps against the tenth before). Retraining a
   point with another block kind keeps the previous flow's rows under ``earlier_flow``.
3. ``probe``: :func:`rgflow.holography.probe` at both points, in the flow's coordinates and in the
   fixed Haar map's, on the same samples of the exact target (flow IMH or latent HMC, chosen as
   ``rgflow probe --sampler auto`` does).

``--phases critical`` and ``--phases massive`` may run as two processes at once (one per core): each
merges its own phase's rows into the JSON when it saves.

Usage::

    python experiments/holography.py               # everything (about 30 min)
    python experiments/holography.py --stages fss   # eta from L = 16, 32, 64 (about 15 min)
    python experiments/holography.py --report      # figures and table from the JSON
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common import ROOT, add_output_arguments, machine  # noqa: E402

from rgflow.config import TrainConfig  # noqa: E402
from rgflow.holography.probe import choose_sampler, probe, target_samples  # noqa: E402
from rgflow.mcmc.run import run_sampler, summarize  # noqa: E402
from rgflow.physics.models import make_action  # noqa: E402
from rgflow.report import read_metrics  # noqa: E402
from rgflow.stats import format_value_error  # noqa: E402
from rgflow.train import train  # noqa: E402
from rgflow.runs import open_run  # noqa: E402

LAM = 1.0
KAPPAS = (0.20, 0.25, 0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70)
FSS_KAPPAS = (0.40, 0.45, 0.50, 0.55, 0.60, 0.70)


def action_at(kappa: float):
    return make_action("complex-phi4", t=kappa, mu=1 - 2 * LAM, lam=LAM)


def loss_curve(rows: list[dict], points: int = 200) -> list[list[float]]:
    """``[[step, seconds, mean loss], ...]``: a run's training loss (its metrics rows), averaged over ``points``
    equal windows."""
    size = max(1, len(rows) // points)
    return [[rows[i + size - 1]["step"], rows[i + size - 1]["time"], float(np.mean([r["loss"] for r in rows[i:i + size]]))]
            for i in range(0, len(rows) - size + 1, size)]


def scan(seed: int, sizes=(16, 32), kappas=KAPPAS, n: int = 1000, sampler: str = "hmc") -> dict:
    """``sampler`` (16 chains, ``n`` steps after 300 of warm-up) at every size and kappa: rows
    ``[kappa, xi2/L, error, chi, error, thermalized]`` per size."""
    rows = {}
    for L in sizes:
        rows[str(L)] = []
        for k in kappas:
            a = action_at(k)
            s = summarize(run_sampler(sampler, a, L, n, 16, seed, warmup=300), a, L)
            xi, dxi = s["observables"]["xi2"]
            rows[str(L)].append([k, xi / L, dxi / L, *s["observables"]["chi"], s["thermalized"]])
            print(f"L={L} kappa={k}: xi2/L = {format_value_error(xi / L, dxi / L)}, "
                  f"chi = {format_value_error(*s['observables']['chi'])}", flush=True)
    return rows


def choose_points(rows: dict) -> dict:
    a, b = np.array(rows["16"], dtype=float), np.array(rows["32"], dtype=float)
    ratio = b[:, 1] / a[:, 1]
    crit = next((k for k, r in zip(a[:, 0], ratio) if r > 0.95), a[-1, 0])
    massive = max((k for k, x in zip(b[:, 0], b[:, 1] * 32) if x < 3.0), default=a[0, 0])
    return {"critical": float(crit), "massive": float(massive), "ratio_32_over_16": ratio.tolist()}


def eta_fss(rows: dict) -> dict:
    """``{"16-32": [[kappa, eta, error], ...], ...}`` for each pair of consecutive sizes, from the finite-size
    scaling ``chi ~ L^(2 - eta)``: ``eta = 2 - log2(chi_2L / chi_L)``, the error propagated from both chi
    errors (independent chains). Throughout a BKT phase ``eta <= 1/4``, with ``eta = 1/4`` at its edge; in the
    massive phase ``eta -> 2``."""
    sizes = sorted(rows, key=int)
    out = {}
    for small, large in zip(sizes, sizes[1:]):
        a, b = np.array(rows[small], dtype=float), np.array(rows[large], dtype=float)
        q = b[:, 3] / a[:, 3]
        err = np.hypot(a[:, 4] / a[:, 3], b[:, 4] / b[:, 3]) / np.log(int(large) / int(small))
        eta = 2 - np.log(q) / np.log(int(large) / int(small))
        out[f"{small}-{large}"] = [[float(k), float(e), float(d)] for k, e, d in zip(a[:, 0], eta, err)]
    return out


def plot_scan(result: dict, path: Path) -> None:
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in (("scan", result["scan"]), ("fss", result.get("fss"))):
        for pair, eta in (eta_fss(rows) if rows else {}).items():
            eta = np.array(eta)
            bx.errorbar(eta[:, 0], eta[:, 1], eta[:, 2], marker="o" if name == "scan" else "s", capsize=2,
                        label=f"L = {pair.replace('-', ' → ')} ({name}: " + ("hmc, 1000" if name == "scan" else
                              f"{result.get('fss_sampler', 'hmc')}, {result['fss_n']}") + " steps)")
    bx.axhline(0.25, color="r", lw=1, ls=":", label="η = 1/4 (BKT edge)")
    bx.set(xlabel="κ", ylabel="η = 2 − log₂(χ(2L) / χ(L))", title="η from finite-size scaling of χ")
    bx.legend(fontsize=8)
    for L, rows in result["scan"].items():
        r = np.array(rows, dtype=float)
        ax.errorbar(r[:, 0], r[:, 1], r[:, 2], marker="o", capsize=2, label=f"L = {L} (scan: hmc)")
    for L, rows in result.get("fss", {}).items():
        r = np.array(rows, dtype=float)
        ax.errorbar(r[:, 0], r[:, 1], r[:, 2], marker="s", ls="--", capsize=2,
                    label=f"L = {L} (fss: {result.get('fss_sampler', 'hmc')})")
    for name, style in (("critical", "-"), ("massive", "--")):
        if name in result.get("points", {}):
            ax.axvline(result["points"][name], color="k", ls=style, lw=1, label=f"{name}: κ = {result['points'][name]}")
    ax.set(xlabel="κ (= t; μ = 1 − 2λ, λ = 1)", ylabel="ξ₂ / L", title="complex φ⁴: phase scan")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_training(result: dict, path: Path) -> None:
    """The training loss per site against CPU-minutes, a panel per phase (the L/2 stage of a curriculum first)."""
    phases = [(phase, tr) for phase, tr in result.get("train", {}).items() if "loss_curve" in tr]
    if not phases:
        return  # runs recorded before the curves were stored
    fig, axes = plt.subplots(1, len(phases), figsize=(5 * len(phases), 4), squeeze=False)
    for ax, (phase, tr) in zip(axes[0], phases):
        L, t0, shown = tr["config"]["L"], 0.0, []
        if "small_loss_curve" in tr:
            c = np.array(tr["small_loss_curve"])
            ax.plot(c[:, 1] / 60, c[:, 2] / tr["small_L"] ** 2, lw=1, ls=":", label=f"L = {tr['small_L']}")
            t0, shown = tr["small_seconds"] / 60, [c[len(c) // 10:, 2] / tr["small_L"] ** 2]
        c = np.array(tr["loss_curve"])
        ax.plot(t0 + c[:, 1] / 60, c[:, 2] / L**2, lw=1, label=f"L = {L}, from the L = {tr.get('small_L', '–')} weights"
                if "small_L" in tr else f"L = {L}")
        y = np.concatenate([*shown, c[:, 2] / L**2])
        ax.set_ylim(y.min() - 0.002, np.percentile(y, 98) + 0.002)
        ax.set(xlabel="CPU-minutes", ylabel="loss per site  (E[ln q + S] / V)",
               title=f"{phase}, κ = {result['points'][phase]}: {tr['steps']} steps at L = {L}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(result: dict) -> str:
    lines = ["| phase | κ | coords | total bulk MI (nats) [plain sum] | H³: ξ, h0, χ²/dof | flat: ξ, c, χ²/dof | AIC flat − H³ | "
             "boundary G(r) fit |", "|---|---|---|---|---|---|---|---|"]
    for key, res in result.get("probes", {}).items():
        phase, coords = key.split("-")
        g = res["geometry"]

        def fit(name, shape):
            if name not in g:
                return "–"
            p = g[name]["params"]
            return f"{format_value_error(*p['xi'])}, {format_value_error(*p[shape])}, {g[name]['chi2_per_dof']:.1f}"

        bf = res["boundary_fits"]
        bstr = (f"{bf['preferred']} (η = {bf['power_law']['eta']:.2f}, ξ = {bf['exponential']['xi']:.2f})"
                if bf.get("preferred") else "–")
        lines.append(f"| {phase} | {result['points'][phase]} | {coords} | {format_value_error(*res['total_mi_gaussian'])}"
                     f"{' [%.0f]' % res['total_mi_gaussian_plain'] if 'total_mi_gaussian_plain' in res else ''} | "
                     f"{fit('hyperbolic', 'h0')} | {fit('flat', 'c')} | "
                     f"{g.get('delta_aic_flat_minus_hyperbolic', float('nan')):.1f} | {bstr} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stages", default="scan,train,probe", help="comma-separated subset of scan, fss, train, probe")
    p.add_argument("--fss-n", type=int, default=2000, help="fss: sampler steps per chain at each size and kappa")
    p.add_argument("--fss-sampler", default="cluster-hmc", choices=("cluster-hmc", "hmc"),
                   help="fss: the chain (plain HMC chains of 3000 trajectories do not equilibrate L = 64 at kappa >= 0.5)")
    p.add_argument("--minutes", type=float, default=10.0, help="flow training budget per point")
    p.add_argument("--small-minutes", type=float, default=0.0, help="train: first this many minutes at L/2, then "
                   "--minutes at L from its weights (the curriculum; 0: none)")
    p.add_argument("--L", type=int, default=32)
    p.add_argument("--n", type=int, default=200, help="recorded sampler steps per chain for the probes")
    p.add_argument("--phases", default="critical,massive", help="comma-separated subset of critical, massive")
    add_output_arguments(p, "holography")
    args = p.parse_args()
    stages = args.stages.split(",")
    if set(stages) - {"scan", "fss", "train", "probe"}:
        p.error("allowed stages: scan, fss, train, probe")
    out, work = Path(args.out), Path(args.work)
    result = json.loads(out.read_text()) if out.exists() else {}

    phases = args.phases.split(",")
    if set(phases) - {"critical", "massive"}:
        p.error("allowed phases: critical, massive")

    def save():  # another process may own the other phase: merge its rows from the file
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            disk = json.loads(out.read_text())
            for key in ("train", "probes", "earlier_flow"):
                mine = {k: v for k, v in result.get(key, {}).items() if k.split("-")[0] in phases}
                merged = {k: v for k, v in disk.get(key, {}).items() if k.split("-")[0] not in phases}
                result[key] = {**merged, **mine}
        out.write_text(json.dumps(result, indent=1) + "\n")

    figures = ROOT.parent / "figures"
    if not args.report:
        result["machine"] = machine()
        if "scan" in stages:
            result["scan"] = scan(args.seed)
            result["points"] = choose_points(result["scan"])
            print("points:", result["points"], flush=True)
            save()
        if "fss" in stages:  # a third size and longer chains on the critical side, for eta
            result["fss"] = scan(args.seed, (16, 32, 64), FSS_KAPPAS, args.fss_n, args.fss_sampler)
            result["fss_n"], result["fss_sampler"] = args.fss_n, args.fss_sampler
            save()
        for phase in phases:
            kappa = result["points"][phase]
            run = work / f"{phase}-L{args.L}"
            if "train" in stages:
                cfg = TrainConfig(action="complex-phi4", L=args.L, params={"t": kappa, "mu": 1 - 2 * LAM, "lam": LAM},
                                  minutes=args.minutes, seed=args.seed, eval_every=10**9)
                old = result.get("train", {}).get(phase)
                if old and old["config"].get("block") != cfg.block:
                    result.setdefault("earlier_flow", {})[phase] = {
                        "train": old, "probes": {c: result.get("probes", {}).pop(f"{phase}-{c}", None)
                                                 for c in ("flow", "haar")}}
                shutil.rmtree(run, ignore_errors=True)
                curriculum = {}
                if args.small_minutes:  # the curriculum L/2 -> L: a plain weight copy (conv flows do not depend on L)
                    small = work / f"{phase}-L{args.L // 2}"
                    shutil.rmtree(small, ignore_errors=True)
                    small_summary = train(replace(cfg, L=args.L // 2, minutes=args.small_minutes), small)
                    cfg = replace(cfg, init_from=str(small))
                    curriculum = {"small_L": args.L // 2, "small_steps": small_summary["step"],
                                  "small_seconds": small_summary["elapsed"],
                                  "small_loss_curve": loss_curve(read_metrics(small)[0])}
                summary = train(cfg, run)
                rows = read_metrics(run)[0]
                losses = [m["loss"] for m in rows]
                tenth = max(1, len(losses) // 10)
                result.setdefault("train", {})[phase] = {
                    "steps": summary["step"], "seconds": summary["elapsed"], "config": cfg.to_dict(),
                    "loss_tenths": [float(np.mean(losses[-2 * tenth:-tenth])), float(np.mean(losses[-tenth:]))],
                    "loss_curve": loss_curve(rows), **curriculum}
                save()
            if "probe" in stages:
                opened = open_run(run, "flow")  # one set of exact-target samples, probed in both coordinates
                cfg, flow = opened.config, opened.model
                t0 = time.perf_counter()
                sampler, choice = choose_sampler(flow, cfg.make_action(), args.seed)
                samples = target_samples(flow, cfg.make_action(), sampler, args.n, 16, args.seed, 100)
                sampling_seconds = time.perf_counter() - t0
                for coords in ("flow", "haar"):
                    res = probe(run, n=args.n, chains=16, sampler=sampler, coords=coords, seed=args.seed,
                                out_dir=work / f"probe-{phase}-{coords}", samples=samples)
                    res["sampler_choice"], res["seconds"]["sampling"] = choice, sampling_seconds
                    result.setdefault("probes", {})[f"{phase}-{coords}"] = res
                    print(f"{phase} {coords}: total MI {format_value_error(*res['total_mi_gaussian'])}, preferred "
                          f"{res['geometry'].get('preferred')}", flush=True)
                    save()
                    if coords == "flow" and phase == "critical":
                        for name in ("bulk_correlation", "mutual_information", "boundary_correlator"):
                            shutil.copy(work / f"probe-{phase}-{coords}" / f"{name}.png", figures / f"holography_{name}.png")
    if "scan" in result:
        result["eta_fss"] = {"scan": eta_fss(result["scan"]), **({"fss": eta_fss(result["fss"])} if "fss" in result else {})}
        save()
    plot_scan(result, figures / "holography_phase_scan.png")
    plot_training(result, figures / "holography_training.png")
    print(table(result))


if __name__ == "__main__":
    main()
