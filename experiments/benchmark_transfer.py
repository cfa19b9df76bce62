"""Size transfer: phi^4 at L = 32 (m2 = -4, lam = 4.572) trained from scratch against grown from small lattices.

Arms, each with the same total budget of training wall time (``--total`` minutes, default 30):

* ``scratch``: rgflow's default flow trained on L = 32 for the whole budget;
* ``transfer``: the same flow trained on L = 8, then ``--init-from`` on L = 16, then on L = 32
  (``--init-finest copy``), with the budget split ``--split`` (default 1/6, 1/4, the rest); the small
  stages count against the budget.

Each final L = 32 flow is evaluated on ``--n-eval`` fresh samples (ESS/N, IMH acceptance, F_var);
ESS after every stage is recorded too. One torch thread per arm; run each arm pinned to its own core::

    OMP_NUM_THREADS=1 taskset -c 0 python experiments/benchmark_transfer.py --arms scratch &
    OMP_NUM_THREADS=1 taskset -c 1 python experiments/benchmark_transfer.py --arms transfer
    python experiments/benchmark_transfer.py --report
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from common import add_output_arguments, machine

from rgflow.config import TrainConfig
from rgflow.runs import open_run
from rgflow.train import evaluate, train

PHYSICS = {"action": "phi4", "params": {"m2": -4.0, "lam": 4.572}}
ARMS = ("scratch", "transfer")


def stages(arm: str, total: float, split: tuple[float, float]) -> list[tuple[int, float]]:
    """``[(L, minutes), ...]`` of an arm."""
    if arm == "scratch":
        return [(32, total)]
    a, b = split
    return [(8, a * total), (16, b * total), (32, (1 - a - b) * total)]


def run_arm(arm: str, total: float, split, n_eval: int, work: Path, seed: int) -> dict:
    previous, rows = None, []
    for L, minutes in stages(arm, total, split):
        run_dir = work / f"{arm}-L{L}"
        shutil.rmtree(run_dir, ignore_errors=True)
        extra = {"init_from": str(previous)} if previous else {}
        cfg = TrainConfig(**PHYSICS, L=L, minutes=minutes, seed=seed, eval_every=10**9, **extra)
        summary = train(cfg, run_dir)
        flow = open_run(run_dir, "flow").model
        ev = evaluate(flow, cfg.make_action(), n_eval if L == 32 else 4096, seed=seed + 1)
        rows.append({"L": L, "minutes": summary["elapsed"] / 60, "steps": summary["step"], "ess": ev["ess"],
                     "imh_acceptance": ev["imh_acceptance"], "f_variational": ev["f_variational"],
                     "f_variational_err": ev["f_variational_err"], "n_eval": ev["n_samples"]})
        print(json.dumps({"arm": arm, **rows[-1]}), flush=True)
        previous = run_dir
    return {"stages": rows, "total_minutes": sum(r["minutes"] for r in rows), "ess": rows[-1]["ess"]}


def report(data: dict, figure: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    print("| arm | stage L | minutes | steps | ESS/N | IMH acc. | F_var |")
    print("|---|---|---|---|---|---|---|")
    for arm, res in data["arms"].items():
        for r in res["stages"]:
            print(f"| {arm} | {r['L']} | {r['minutes']:.1f} | {r['steps']} | {r['ess']:.4f} | {r['imh_acceptance']:.3f} | "
                  f"{r['f_variational']:.2f} ± {r['f_variational_err']:.2f} |")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for arm, res in data["arms"].items():
        t = 0.0
        xs, ys = [], []
        for r in res["stages"]:
            t += r["minutes"]
            xs.append(t)
            ys.append(r["ess"])
        ax.semilogy(xs, ys, "o-", label=arm)
        for x, y, r in zip(xs, ys, res["stages"]):
            ax.annotate(f"L={r['L']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(0.1, color="k", ls="--", lw=1, label="goal at L = 32")
    ax.set(xlabel="cumulative training minutes (1 thread)", ylabel="ESS / N",
           title="phi^4 L=32 (m2=-4, lam=4.572): scratch vs size transfer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(figure, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_output_arguments(p, "transfer")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {', '.join(ARMS)}")
    p.add_argument("--total", type=float, default=30.0, help="training minutes per arm, small stages included")
    p.add_argument("--split", default="0.1667,0.25", help="fractions of --total for the L=8 and L=16 stages")
    p.add_argument("--n-eval", type=int, default=16384)
    args = p.parse_args()
    out = Path(args.out)
    if args.report:
        report(json.loads(out.read_text()), args.figure)
        return
    split = tuple(float(s) for s in args.split.split(","))
    for arm in args.arms.split(","):
        if arm not in ARMS:
            p.error(f"unknown arm {arm!r}; allowed: {', '.join(ARMS)}")
        res = run_arm(arm, args.total, split, args.n_eval, Path(args.work), args.seed)
        data = json.loads(out.read_text()) if out.exists() else {"arms": {}}  # the other arm may have written
        data["arms"][arm] = {**res, "machine": machine(), "total": args.total, "split": split}
        out.write_text(json.dumps(data, indent=1) + "\n")
    report(json.loads(out.read_text()), args.figure)


if __name__ == "__main__":
    main()
