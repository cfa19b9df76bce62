"""Reverse-KL benchmark: rgflow's default MERA flow vs the flat tutorial flow at equal wall time.

Cases (all trained on this machine, one after the other, same wall-clock budget per flow):

* ``phi4-L8``:  phi^4 standard convention, m2 = -4, lam = 8 (tutorial point), L = 8;
* ``ising-L8``, ``ising-L16``: Ising HS relaxation at T_c (F_var - F_exact in nats);
* ``ising-L8-T2.5``: the same above T_c (T = 2.5), where a flow that misses a Z2 sector is off by ln 2;
* ``phi4-L32``: m2 = -4, lam = 4.572 (xi ~ 8), L = 32, longer budget.

Flows: ``rgflow`` = :class:`rgflow.config.TrainConfig` defaults; ``rgflow-z2`` = the same MERA
with exactly Z2-odd affine blocks (``--block affine --equivariant``); ``rgflow-sym`` = the default flow's
exact Z2 mixture ``q_G(x) = (q(x) + q(-x)) / 2`` (``--mixture z2``); ``flat`` = 16 checkerboard
affine couplings with 3x3 circular CNNs 1 -> 8 -> 8 -> 2 (LeakyReLU, final Tanh), Adam lr 1e-3,
batch 64, constant learning rate (Albergo et al. 2021 tutorial).

Each trained flow is evaluated on N = 16384 fresh samples: ESS/N, IMH acceptance, ln Z with
its error, F_var (and KL = F_var + ln Z_exact where exact), sampling throughput, parameters.

Usage::

    python experiments/benchmark_reverse_kl.py                      # everything (about 60 min)
    python experiments/benchmark_reverse_kl.py --cases phi4-L8 --minutes 1
    python experiments/benchmark_reverse_kl.py --eval-only          # re-evaluate saved runs
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from common import add_output_arguments, machine  # noqa: E402

from rgflow.config import TrainConfig  # noqa: E402
from rgflow.physics import ISING_TC  # noqa: E402
from rgflow.train import evaluate, train  # noqa: E402
from rgflow.runs import open_run  # noqa: E402

CASES = {
    "phi4-L8": {"action": "phi4", "L": 8, "params": {"m2": -4.0, "lam": 8.0}},
    "ising-L8": {"action": "ising", "L": 8, "params": {"T": ISING_TC}},
    "ising-L8-T2.5": {"action": "ising", "L": 8, "params": {"T": 2.5}},
    "ising-L16": {"action": "ising", "L": 16, "params": {"T": ISING_TC}},
    "phi4-L32": {"action": "phi4", "L": 32, "params": {"m2": -4.0, "lam": 4.572}},
}
FLOWS = {
    "rgflow": {},
    "rgflow-z2": {"block": "affine", "equivariant": True},
    "rgflow-sym": {"mixture": "z2"},
    "flat": {"flow": "flat", "n_couplings": 16, "hidden": 8, "layers": 2, "lr": 1e-3, "batch_size": 64,
             "lr_schedule": "constant", "learn_level_scale": False},
}


def throughput(flow, action, n: int = 4096, batch: int = 1024, max_seconds: float = 30.0) -> float:
    """Samples per second of ``flow.sample`` + action in batches of ``batch``, no gradients.

    Stops after ``n`` samples or, for slow flows, after the first batch past ``max_seconds``.
    """
    with torch.no_grad():
        flow.sample(min(64, batch))
        t0, done = time.perf_counter(), 0
        while done < n and time.perf_counter() - t0 < max_seconds:
            x, _ = flow.sample(batch)
            action(x)
            done += batch
    return done / (time.perf_counter() - t0)


def run_case(case: str, flow_name: str, minutes: float, n_eval: int, work: Path, seed: int) -> dict:
    """Train one flow on one case for ``minutes`` and evaluate it."""
    cfg = TrainConfig(**CASES[case], **FLOWS[flow_name], minutes=minutes, seed=seed, eval_every=10**9)
    run_dir = work / f"{case}-{flow_name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    summary = train(cfg, run_dir)
    rec = {"case": case, "flow": flow_name, "train_seconds": summary["elapsed"], "steps": summary["step"]}
    return evaluate_case(rec, run_dir, n_eval, seed)


def evaluate_case(rec: dict, run_dir: Path, n_eval: int, seed: int, batch: int = 1024) -> dict:
    """Evaluate the trained run in ``run_dir`` (deterministic given ``seed``) into ``rec``."""
    run = open_run(run_dir, "flow")
    cfg, flow = run.config, run.model
    action = cfg.make_action()
    ev = evaluate(flow, action, n_eval, seed=seed + 1)
    rec = {
        **rec,
        "config": cfg.to_dict(),
        "n_params": sum(p.numel() for p in flow.parameters()),
        "samples_per_second": throughput(flow, action, batch=batch),
        **{k: ev[k] for k in ("n_samples", "ess", "imh_acceptance", "lnZ", "lnZ_err", "pareto_k", "lnZ_reliable",
                              "f_variational", "f_variational_err", "lnZ_warnings")},
        "sector_balance": ev.get("sector_balance"),
        "observables": ev["observables"],
    }
    if "lnZ_exact" in ev:
        rec["lnZ_exact"], rec["kl"] = ev["lnZ_exact"], ev["kl"]
    return rec


def markdown_table(results: list[dict]) -> str:
    """The README's table: one row per (case, flow)."""
    rows = ["| case | flow | params | train time | steps | ESS/N | IMH acc. | ln Z (Pareto k) | F_var − F_exact |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        k = r.get("pareto_k")
        lnz = f"{r['lnZ']:.4f} ± {r['lnZ_err']:.4f}" + (f" ({k:.2f})" if k is not None else "")
        if "lnZ_exact" in r:
            lnz += f", exact {r['lnZ_exact']:.4f}"
        kl = f"{r['kl']:.3f}" if "kl" in r else "–"
        rows.append(f"| {r['case']} | {r['flow']} | {r['n_params']} | {r['train_seconds'] / 60:.1f} min | {r['steps']} | "
                    f"{r['ess']:.3f} | {r['imh_acceptance']:.3f} | {lnz} | {kl} |")
    return "\n".join(rows)


def plot(results: list[dict], path: Path, threads: int) -> None:
    cases = list(dict.fromkeys(r["case"] for r in results))
    flows = [f for f in FLOWS if any(r["flow"] == f for r in results)]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    width = 0.8 / len(flows)
    for k, flow in enumerate(flows):
        rs = {r["case"]: r for r in results if r["flow"] == flow}
        offset = (k - (len(flows) - 1) / 2) * width
        xs = [i + offset for i, c in enumerate(cases) if c in rs]
        ax[0].bar(xs, [rs[c]["ess"] for c in cases if c in rs], width, label=flow)
        ax[1].bar(xs, [rs[c]["imh_acceptance"] for c in cases if c in rs], width, label=flow)
        ising = [c for c in cases if c in rs and "kl" in rs[c]]
        ax[2].bar([cases.index(c) + offset for c in ising], [rs[c]["kl"] for c in ising], width, label=flow)
    for a, title in zip(ax, ("ESS / N (N = 16384)", "IMH acceptance", r"$F_{var} - F_{exact}$ [nats]")):
        a.set_xticks(range(len(cases)), cases)
        a.set_title(title)
        a.legend()
    ax[0].set_yscale("log")
    ax[2].axhline(0.5, color="k", ls="--", lw=1, label="target (Ising L=8)")
    ax[2].legend()
    budgets = ", ".join(f"{r['case']}: {r['train_seconds'] / 60:.0f} min" for r in results if r["flow"] == "rgflow")
    fig.suptitle(f"{' vs '.join(flows)} at equal wall time, {threads} torch thread(s) per run ({budgets})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    p.add_argument("--flows", default=",".join(FLOWS), help=f"comma-separated subset of {', '.join(FLOWS)}")
    p.add_argument("--minutes", type=float, default=5.0, help="training budget per flow (L <= 16)")
    p.add_argument("--minutes-l32", type=float, default=30.0, help="training budget per flow at L = 32")
    p.add_argument("--n-eval", type=int, default=16384)
    add_output_arguments(p, "reverse_kl")
    p.add_argument("--eval-only", action="store_true", help="re-evaluate the run folders in --work, no training")
    args = p.parse_args()
    cases = args.cases.split(",")
    unknown = set(cases) - set(CASES)
    if unknown:
        p.error(f"unknown case(s) {', '.join(sorted(unknown))}; allowed: {', '.join(CASES)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text())["results"] if out.exists() else []
    threads = json.loads(out.read_text())["machine"]["torch_threads"] if out.exists() else torch.get_num_threads()
    if args.report:
        plot(results, Path(args.figure), threads)
        print(markdown_table(results))
        return
    for case in cases:
        minutes = args.minutes_l32 if case == "phi4-L32" else args.minutes
        for flow in args.flows.split(","):
            if flow not in FLOWS:
                p.error(f"unknown flow {flow!r}; allowed: {', '.join(FLOWS)}")
            if args.eval_only:
                old = next(r for r in results if (r["case"], r["flow"]) == (case, flow))
                kept = {k: old[k] for k in ("case", "flow", "train_seconds", "steps")}
                rec = evaluate_case(kept, Path(args.work) / f"{case}-{flow}", args.n_eval, args.seed)
            else:
                rec = run_case(case, flow, minutes, args.n_eval, Path(args.work), args.seed)
            results = [r for r in results if (r["case"], r["flow"]) != (case, flow)] + [rec]
            print(json.dumps({k: rec[k] for k in ("case", "flow", "steps", "ess", "imh_acceptance", "lnZ", "lnZ_err")}
                             | ({"kl": rec["kl"]} if "kl" in rec else {})), flush=True)
            machine_record = machine()
            order = {c: i for i, c in enumerate(CASES)}
            results.sort(key=lambda r: (order[r["case"]], r["flow"]))
            out.write_text(json.dumps({"machine": machine_record, "results": results}, indent=2) + "\n")
    plot(results, Path(args.figure), torch.get_num_threads())
    print(markdown_table(results))


if __name__ == "__main__":
    main()
