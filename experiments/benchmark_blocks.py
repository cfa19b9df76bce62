"""Block benchmark: coupling vs neural-ODE RG blocks, with and without exact Z2 symmetry.

Same MERA layout, prior and optimiser for every variant; only the block bijection changes.
Each variant is trained for the same wall time on this machine (one after the other) and with
(nearly) the same number of parameters: the ODE velocity width is chosen so that its parameter
count matches the spline flow's (reported per row).

Variants: ``spline`` (rational-quadratic spline couplings, the default), ``spline-z2`` (odd
splines with even conditioners), ``ode`` (neural-ODE blocks, RK4, exact trace) and ``ode-z2``
(odd velocity field), ``ode-cnn`` (a neural-ODE CNN on every level's sublattice, width 16, RK4 with 4
steps, colouring-probe divergence) and ``spline+ode-cnn`` (spline blocks on level 0, ODE-CNN levels >= 1).
Cases (see ``benchmark_reverse_kl.CASES``): ``phi4-L8`` (tutorial point),
``ising-L16`` (HS relaxation at T_c), ``phi4-L32`` (m2 = -4, lam = 4.572).

Usage::

    python experiments/benchmark_blocks.py                     # everything (about 60 min)
    python experiments/benchmark_blocks.py --cases phi4-L8 --minutes 0.2 --out /tmp/b.json
    python experiments/benchmark_blocks.py --report            # redraw figure and table from the JSON
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common import add_output_arguments, machine  # noqa: E402

from benchmark_reverse_kl import CASES, evaluate_case  # noqa: E402
from rgflow.config import TrainConfig  # noqa: E402
from rgflow.train import train  # noqa: E402
from rgflow.train.loop import build_model  # noqa: E402

BLOCK_CASES = ("phi4-L8", "ising-L16", "phi4-L32")
VARIANTS = {
    "spline": {"block": "spline"},
    "spline-z2": {"block": "spline", "equivariant": True},
    "ode": {"block": "ode"},
    "ode-z2": {"block": "ode", "equivariant": True},
    "ode-cnn": {"block": "ode-cnn", "hidden": 16, "ode_steps": 4},
    "spline+ode-cnn": {"block": "spline", "ode_levels": "1:", "ode_steps": 4},
}
#: variants whose width is set, not matched: a level's CNN shares its weights over the whole sublattice, so
#: matching the spline flow's parameter count would take ~250 channels
FIXED_WIDTH = ("ode-cnn", "spline+ode-cnn")


def n_params(cfg: TrainConfig) -> int:
    return sum(p.numel() for p in build_model(cfg).parameters())


def matched_config(case: str, variant: str, **extra) -> TrainConfig:
    """The variant's config, its ``hidden`` width chosen to match the spline flow's parameters (width 32; the
    default flow when this benchmark was recorded)."""
    target = n_params(TrainConfig(**CASES[case], **VARIANTS["spline"], steps=1))
    cfg = TrainConfig(**CASES[case], **VARIANTS[variant], **extra)
    if VARIANTS[variant]["block"] != "spline" and variant not in FIXED_WIDTH:
        cfg.hidden = min(range(8, 257), key=lambda h: abs(n_params(TrainConfig(**{**cfg.to_dict(), "hidden": h}))
                                                         - target))
    return cfg


def run_variant(case: str, variant: str, minutes: float, n_eval: int, work: Path, seed: int, n_eval_ode: int) -> dict:
    cfg = matched_config(case, variant, minutes=minutes, seed=seed, eval_every=10**9)
    run_dir = work / f"{case}-{variant}"
    shutil.rmtree(run_dir, ignore_errors=True)
    summary = train(cfg, run_dir)
    rec = {"case": case, "flow": variant, "train_seconds": summary["elapsed"], "steps": summary["step"]}
    if cfg.block in ("ode", "ode-cnn") or cfg.ode_levels:  # 10-100x slower to sample: fewer samples, smaller batches
        return evaluate_case(rec, run_dir, n_eval_ode, seed, batch=128)
    return evaluate_case(rec, run_dir, n_eval, seed)


def markdown_table(results: list[dict]) -> str:
    rows = ["| case | block | params (hidden) | steps | N eval | ESS/N | IMH acc. | F_var − F_exact | samples/s |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        gap = f"{r['kl']:.3f}" if "kl" in r else "–"
        rows.append(f"| {r['case']} | {r['flow']} | {r['n_params']} ({r['config']['hidden']}) | {r['steps']} | {r['n_samples']} | "
                    f"{r['ess']:.3g} | {r['imh_acceptance']:.3f} | {gap} | {r['samples_per_second']:.0f} |")
    return "\n".join(rows)


def plot(results: list[dict], path: Path, threads: int) -> None:
    cases = [c for c in BLOCK_CASES if any(r["case"] == c for r in results)]
    panels = [("ess", "ESS / N (hatched: at the floor 1/N)", True), ("kl", r"$F_{var} - F_{exact}$ [nats] (Ising)", True),
              ("samples_per_second", "samples / s", True)]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    width = 0.8 / len(VARIANTS)
    for k, variant in enumerate(VARIANTS):
        rs = {r["case"]: r for r in results if r["flow"] == variant}
        offset = (k - (len(VARIANTS) - 1) / 2) * width
        for a, (key, _, _) in zip(ax, panels):
            have = [c for c in cases if c in rs and rs[c].get(key) is not None]
            # an ESS at the estimator's floor 1/N (one sample carries all the weight) is drawn hollow
            floor = [key == "ess" and rs[c][key] * rs[c]["n_samples"] < 1.5 for c in have]
            bars = a.bar([cases.index(c) + offset for c in have], [rs[c][key] for c in have], width, label=variant,
                         color=f"C{k}")
            for bar, at_floor in zip(bars, floor):
                if at_floor:
                    bar.set(fill=False, edgecolor=f"C{k}", hatch="//")
    for a, (_, title, log) in zip(ax, panels):
        a.set_xticks(range(len(cases)), cases)
        a.set_title(title)
        if log:
            a.set_yscale("log")
        a.legend(fontsize=8)
    budgets = ", ".join(f"{c}: {next(r['train_seconds'] for r in results if r['case'] == c) / 60:.0f} min"
                        for c in cases)
    fig.suptitle(f"RG blocks at equal parameters and equal wall time, {threads} CPU thread(s) per run ({budgets}); "
                 "missing bars: not run (ODE at L=32: out of memory)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(BLOCK_CASES), help=f"comma-separated subset of {', '.join(BLOCK_CASES)}")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}")
    p.add_argument("--minutes", type=float, default=3.0, help="training budget per variant at L <= 16")
    p.add_argument("--minutes-l32", type=float, default=4.0, help="training budget per variant at L = 32")
    p.add_argument("--n-eval", type=int, default=16384)
    p.add_argument("--n-eval-ode", type=int, default=2048, help="evaluation samples for the (slow) ODE variants")
    p.add_argument("--redo", action="store_true", help="rerun (case, variant) pairs already in the JSON")
    add_output_arguments(p, "blocks")
    args = p.parse_args()
    cases, variants = args.cases.split(","), args.variants.split(",")
    for name, chosen, allowed in (("case", cases, BLOCK_CASES), ("variant", variants, VARIANTS)):
        if set(chosen) - set(allowed):
            p.error(f"unknown {name}(s) {', '.join(sorted(set(chosen) - set(allowed)))}; allowed: {', '.join(allowed)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(out.read_text()) if out.exists() else {}  # keeps hand-written "notes"
    results = data.get("results", [])
    if not args.report:
        machine_record = machine()
        for case in cases:
            minutes = args.minutes_l32 if case == "phi4-L32" else args.minutes
            for variant in variants:
                if not args.redo and any((r["case"], r["flow"]) == (case, variant) for r in results):
                    continue
                rec = run_variant(case, variant, minutes, args.n_eval, Path(args.work), args.seed, args.n_eval_ode)
                results = [r for r in results if (r["case"], r["flow"]) != (case, variant)] + [rec]
                print(json.dumps({k: rec.get(k) for k in ("case", "flow", "n_params", "steps", "ess", "kl",
                                                          "samples_per_second")}), flush=True)
                order = {c: i for i, c in enumerate(BLOCK_CASES)}
                results.sort(key=lambda r: (order[r["case"]], list(VARIANTS).index(r["flow"])))
                data.update(machine=machine_record, results=results)
                out.write_text(json.dumps(data, indent=2) + "\n")
    plot(results, Path(args.figure), data.get("machine", machine())["torch_threads"])
    print(markdown_table(results))


if __name__ == "__main__":
    main()
