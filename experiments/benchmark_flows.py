"""Flows at scale (issue #25): block kinds at equal wall time on phi^4 and Ising, with the KL by level.

Each case trains one flow (reverse KL, rgflow's training loop, one torch thread) for ``--minutes``, then
measures on ``--n-eval`` fresh samples the ESS/N, IMH acceptance, F_var and, for the Ising model,
F_var - F_exact (``kl_exact``; :func:`rgflow.train.evaluate`)
and splits the KL and Var(ln w) by RG level (:func:`rgflow.by_level.kl_by_level`, hierarchical flows).
Cases are ``ARCH-L<L>`` with ARCH one of :data:`ARCHS` (``conv-L32-from16`` starts from ``conv-L16``:
a plain weight copy; ``conv-L32-b16-from16`` trains with batch 16 instead of ``--batch-size``;
``conv-L64-b16-from32b16`` starts from that one). Results go to ``results/flows.json`` under ``cases``; one case per process, each
pinned to its own core::

    OMP_NUM_THREADS=1 taskset -c 1 python experiments/benchmark_flows.py --cases spline-L16,conv-L16 --minutes 10
    python experiments/benchmark_flows.py --report
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from pathlib import Path

from common import add_output_arguments, machine

from rgflow.by_level import kl_by_level
from rgflow.config import TrainConfig
from rgflow.report import read_metrics
from rgflow.runs import open_run
from rgflow.train.checkpoint import latest_checkpoint, load_checkpoint
from rgflow.train import evaluate, train

#: models: phi^4 at xi ~ 8 (L = 32), and the Ising model at T_c (HS relaxation; cases named ``ising-...``)
PHYSICS = {"phi4": {"action": "phi4", "params": {"m2": -4.0, "lam": 4.572}}, "ising": {"action": "ising"}}
#: architectures: the per-cell spline blocks (the default before conv), the convolutional levels (conv-h16: the
#: default since, with 8 couplings since conv-h16-c8, with the walled prior since conv-h16-c8-wall), the ODE-CNN
#: levels, the flat baseline; every width, number of couplings and prior explicit (the prior through
#: :func:`arch_config`), so that a case means what it did
ARCHS = {
    "spline": {"block": "spline", "hidden": 32},
    "conv": {"block": "conv", "n_couplings": 4, "hidden": 32},
    "conv-h16": {"block": "conv", "n_couplings": 4, "hidden": 16},
    "conv-z2": {"block": "conv", "n_couplings": 4, "hidden": 32, "equivariant": True},
    "conv-h16-z2": {"block": "conv", "n_couplings": 4, "hidden": 16, "equivariant": True},
    "conv-h16-pg": {"block": "conv", "n_couplings": 4, "hidden": 16, "path_gradient": True},
    "conv-h16-own0": {"block": "conv", "n_couplings": 4, "hidden": 16, "conv_finest": True},
    "conv-h16-bins16": {"block": "conv", "n_couplings": 4, "hidden": 16, "num_bins": 16},
    "conv-h16-lr6": {"block": "conv", "n_couplings": 4, "hidden": 16, "lr": 6e-3},
    "conv-h16-c8": {"block": "conv", "hidden": 16, "n_couplings": 8},
    "conv-h16-c16": {"block": "conv", "hidden": 16, "n_couplings": 16},
    "conv-h16-c8-l3": {"block": "conv", "hidden": 16, "n_couplings": 8, "layers": 3},
    "conv-h16-c8-bins24": {"block": "conv", "hidden": 16, "n_couplings": 8, "num_bins": 24},
    "conv-h16-c8-wall": {"block": "conv", "hidden": 16, "n_couplings": 8, "prior": "normal-wall"},
    "conv-h16-sa": {"block": "conv", "n_couplings": 4, "hidden": 16, "conv_coupling": "spline-affine"},
    "ode-cnn": {"block": "ode-cnn", "hidden": 16, "layers": 2, "ode_steps": 4},
    "flat": {"flow": "flat"},
}


def arch_config(arch: str) -> dict:
    """The config overrides of ``arch``: its :data:`ARCHS` entry on the normal prior, the default before the walled one."""
    return {"prior": "normal", **ARCHS[arch]}


def parse_case(name: str) -> tuple[str, str, int, str | None, int | None]:
    """``[ising-]ARCH-L<L>[-b<B>][-from<L0>[b<B0>]]`` -> ``(model, arch, L, source case or None, batch or None)``."""
    model = "ising" if name.startswith("ising-") else "phi4"
    head, _, source = name.removeprefix("ising-").partition("-from")
    head, batch = (head.rsplit("-b", 1) if re.search(r"-b\d+$", head) else (head, None))
    arch, _, size = head.rpartition("-L")
    source_match = re.fullmatch(r"(\d+)(b\d+)?", source)
    if arch not in ARCHS or not size.isdigit() or (source and not source_match):
        raise ValueError(f"case {name!r} is not allowed; allowed: [ising-]ARCH-L<L>[-b<batch>][-from<L0>[b<batch0>]], "
                         f"ARCH in {', '.join(ARCHS)}")
    prefix = "ising-" if model == "ising" else ""
    if source:  # the source case: ARCH-L<L0>, or ARCH-L<L0>-b<batch0> when it trained with its own batch
        source = f"{prefix}{arch}-L{source_match[1]}" + (f"-{source_match[2]}" if source_match[2] else "")
    return model, arch, int(size), source or None, int(batch) if batch else None


def run_case(name: str, minutes: float, n_eval: int, work: Path, seed: int, device: str = "cpu",
             batch_size: int = 64, split: tuple[int, int] = (512, 32), eval_only: bool = False) -> dict:
    model, arch, L, source, case_batch = parse_case(name)
    batch_size = case_batch or batch_size
    run_dir = work / name
    if source:  # the source case's folder, itself possibly grown (conv-h16-L32-from16)
        found = [work / source, *sorted(work.glob(f"{source}-from*"))]
        extra = {"init_from": str(next((d for d in found if (d / "config.json").exists()), work / source))}
    else:
        extra = {}
    cfg = TrainConfig(**PHYSICS[model], L=L, minutes=minutes, seed=seed, eval_every=10**9, device=device,
                      batch_size=batch_size, **arch_config(arch), **extra)
    if eval_only:  # the run folder trained before: its checkpoint's step and time
        state = load_checkpoint(latest_checkpoint(run_dir))
        summary = {"step": state["step"], "elapsed": state["elapsed"]}
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        summary = train(cfg, run_dir)
    flow = open_run(run_dir, "flow").model
    n_params = sum(p.numel() for p in flow.parameters())
    t0 = time.perf_counter()
    ev = evaluate(flow, cfg.make_action(), n_eval, seed=seed + 1)
    eval_seconds = time.perf_counter() - t0
    row = {"arch": arch, "L": L, "batch_size": batch_size, "init_from": source, "config": arch_config(arch), "n_params": n_params,
           "minutes": summary["elapsed"] / 60, "steps": summary["step"], "ess": ev["ess"],
           "imh_acceptance": ev["imh_acceptance"], "f_variational": ev["f_variational"],
           "f_variational_err": ev["f_variational_err"], "lnZ": ev["lnZ"], "lnZ_err": ev["lnZ_err"],
           "pareto_k": ev["pareto_k"], "n_eval": ev["n_samples"], "kl_exact": ev.get("kl"), "model": model, "eval_seconds": eval_seconds,
           "observables": ev["observables"]}
    if cfg.flow != "flat":
        row["by_level"] = kl_by_level(flow, cfg.make_action(), *split, seed=seed + 2)
    row["loss_curve"] = [[r["step"], r["time"], r["loss"]] for r in read_metrics(run_dir)[0]][::4]
    return row


def report(data: dict, figure: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    print("| case | parameters | minutes | steps | ESS/N | IMH acc. | F_var | F_var - F_exact | KL share by level "
          "(fine -> top, %) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in data["cases"].items():
        split = r.get("by_level")
        shares = " / ".join(f"{100 * lv['kl'] / split['kl_total']:.0f}" for lv in split["levels"]) if split else "-"
        print(f"| {name} | {r['n_params']} | {r['minutes']:.1f} | {r['steps']} | {r['ess']:.4g} | "
              f"{r['imh_acceptance']:.3f} | {r['f_variational']:.3f} ± {r['f_variational_err']:.3f} | "
              f"{'-' if r.get('kl_exact') is None else format(r['kl_exact'], '.3f')} | {shares} |")
    fig, axes = plt.subplots(1, 2, figsize=(16, 5.2), gridspec_kw={"width_ratios": [1.3, 1]})
    names = list(data["cases"])
    colours = ["tab:green" if "conv" in n else "tab:grey" if "flat" in n or "ode" in n else "tab:blue" for n in names]
    axes[0].bar(range(len(names)), [data["cases"][n]["ess"] for n in names], color=colours)
    axes[0].set_yscale("log")
    axes[0].set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    axes[0].set(ylabel="ESS / N", title="ESS per case (budgets in the case table; green: conv levels)")
    for n in names:  # the split says nothing where the weights have no variance (Pareto k > 1)
        split = data["cases"][n].get("by_level")
        if split and data["cases"][n]["pareto_k"] < 1:
            kl = [lv["kl"] for lv in split["levels"]]
            axes[1].errorbar(range(len(kl)), kl, [lv["kl_err"] for lv in split["levels"]], marker="o", capsize=2,
                             label=n, ls="-" if "conv" in n else "--")
    axes[1].axhline(0, color="k", lw=0.5)
    axes[1].set(xlabel="RG level (0 = finest; the last point of each line is the top)",
                ylabel="KL of the level given the coarser ones (nats)", title="where the KL goes (rgflow eval --by-level)")
    axes[1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(figure, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_output_arguments(p, "flows")
    p.add_argument("--cases", default="spline-L16,conv-L16", help="comma-separated ARCH-L<L>[-from<L0>]")
    p.add_argument("--minutes", type=float, default=10.0, help="training minutes per case")
    p.add_argument("--n-eval", type=int, default=16384)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (training, evaluation and the split)")
    p.add_argument("--batch-size", type=int, default=64, help="training batch (rgflow's default 64)")
    p.add_argument("--split", default="512,32", help="outer draws and conditional redraws of the KL split by level")
    p.add_argument("--eval-only", action="store_true", help="evaluate the case's trained run folder again, no training")
    args = p.parse_args()
    out = Path(args.out)
    if args.report:
        report(json.loads(out.read_text()), args.figure)
        return
    cases = args.cases.split(",")
    for name in cases:
        try:
            parse_case(name)
        except ValueError as exc:
            p.error(str(exc))
    for name in cases:
        row = run_case(name, args.minutes, args.n_eval, Path(args.work), args.seed, args.device, args.batch_size,
                       tuple(int(v) for v in args.split.split(",")), args.eval_only)
        data = json.loads(out.read_text()) if out.exists() else {"cases": {}}  # another process may have written
        data["cases"][name] = {**row, "device": args.device, "machine": machine()}
        out.write_text(json.dumps(data, indent=1) + "\n")
        print(json.dumps({"case": name, **{k: row[k] for k in ("ess", "f_variational", "steps")}}), flush=True)
    report(json.loads(out.read_text()), args.figure)


if __name__ == "__main__":
    main()
