"""Speed of the flow's hot path, before and after a change, in one run on one thread.

For each source tree (``--baseline REV``, extracted with ``git archive``, and the working tree)
a fresh worker process measures, for rgflow's default flow on phi^4 (m2 = -4, lam = 4.572):

* the gradient of ``S_eff(z) = S(G(z)) - ln|det dG/dz|`` with respect to ``z`` (what latent HMC
  needs per step) at L = 16, 32, 64 and batch 16 and 256, against the gradient of ``S`` alone;
* reverse-KL training steps per second (sample, loss, backward, Adam) at L = 32, batch 64;
* a profile of one S_eff gradient at L = 32, batch 256: aten ops dispatched and the top ops.

Weights are perturbed from the identity initialisation with a fixed seed, so both trees compute the
same function on the same inputs. Run pinned to one core::

    OMP_NUM_THREADS=1 taskset -c 1 python experiments/benchmark_speed.py
    python experiments/benchmark_speed.py --report      # figure and table from the JSON
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, add_output_arguments, machine

SIZES = (16, 32, 64)
BATCHES = (16, 256)
M2, LAM = -4.0, 4.572


def _timed(fn, min_seconds: float = 1.0, min_reps: int = 2) -> float:
    """Mean seconds per call after one warm-up call, at least ``min_reps`` calls."""
    fn()
    reps, t0 = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - t0 < min_seconds:
        fn()
        reps += 1
    return (time.perf_counter() - t0) / reps


def worker() -> dict:
    """Measurements of the rgflow importable in this process (one torch thread)."""
    import torch

    from rgflow.flows import build_flow
    from rgflow.layout import Layout
    from rgflow.physics.actions import phi4_action
    from rgflow.train.loss import ReverseKL

    import rgflow

    torch.set_num_threads(1)
    print(f"  rgflow from {rgflow.__file__}", file=sys.stderr, flush=True)

    def flow_for(L):
        torch.manual_seed(0)
        flow = build_flow(Layout(L))
        with torch.no_grad():
            for p in flow.parameters():
                p.add_(0.05 * torch.randn_like(p))
        return flow

    def action(x):
        return phi4_action(x, M2, LAM)

    out: dict = {"gradients": [], "train": {}, "profile": {}}
    for L in SIZES:
        flow = flow_for(L)
        for B in BATCHES:
            z0 = flow.prior.sample(B, generator=torch.Generator().manual_seed(1))

            def seff():
                z = z0.clone().requires_grad_(True)
                x, logdet = flow.inverse(z)
                return torch.autograd.grad((action(x) - logdet).sum(), z)[0]

            def sgrad():
                x = z0.clone().requires_grad_(True)
                return torch.autograd.grad(action(x).sum(), x)[0]

            t_flow, t_action = _timed(seff), _timed(sgrad)
            out["gradients"].append({"L": L, "batch": B, "seff_s": t_flow, "action_s": t_action,
                                     "ratio": t_flow / t_action})
            print(f"  L={L} B={B}: S_eff grad {t_flow * 1e3:.1f} ms, action grad {t_action * 1e3:.3f} ms, "
                  f"ratio {t_flow / t_action:.0f}", file=sys.stderr, flush=True)

    flow = flow_for(32)
    loss = ReverseKL(flow, action, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        loss(64).backward()
        opt.step()

    t_step = _timed(step, min_seconds=5.0, min_reps=5)
    out["train"] = {"L": 32, "batch": 64, "step_s": t_step, "steps_per_s": 1 / t_step}
    print(f"  train L=32 batch 64: {1 / t_step:.2f} steps/s", file=sys.stderr, flush=True)

    from torch.profiler import profile

    z0 = flow.prior.sample(256, generator=torch.Generator().manual_seed(1))

    def seff():
        z = z0.clone().requires_grad_(True)
        x, logdet = flow.inverse(z)
        return torch.autograd.grad((action(x) - logdet).sum(), z)[0]

    seff()
    with profile() as prof:
        seff()
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in rows)
    out["profile"] = {"L": 32, "batch": 256, "aten_ops": sum(e.count for e in rows if e.key.startswith("aten::")),
                      "self_cpu_s": total / 1e6,
                      "top": [{"op": e.key, "calls": e.count, "self_s": e.self_cpu_time_total / 1e6,
                               "share": e.self_cpu_time_total / total} for e in rows[:10]]}
    return out


def extract(repo: str, rev: str, dest: Path) -> Path:
    """The ``rgflow`` package of commit ``rev`` of the git repository ``repo`` under ``dest`` (``git archive``)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", repo, "archive", rev, "rgflow"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def run_tree(name: str, path: Path) -> dict:
    print(f"{name}: {path}", file=sys.stderr, flush=True)
    env = {**os.environ, "PYTHONPATH": str(path), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, __file__, "--worker"], env=env, check=True, stdout=subprocess.PIPE,
                         cwd=str(path))
    return json.loads(res.stdout)


def report(data: dict, figure: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trees = list(data["trees"])
    print("| tree | L | batch | S_eff gradient | action gradient | ratio |")
    print("|---|---|---|---|---|---|")
    for t in trees:
        for g in data["trees"][t]["gradients"]:
            print(f"| {t} | {g['L']} | {g['batch']} | {g['seff_s'] * 1e3:.1f} ms | {g['action_s'] * 1e3:.3f} ms | {g['ratio']:.0f} |")
    for t in trees:
        tr, pr = data["trees"][t]["train"], data["trees"][t]["profile"]
        print(f"{t}: train L=32 batch 64 {tr['steps_per_s']:.2f} steps/s; profile L=32 B=256 {pr['aten_ops']} aten ops, "
              f"top: " + ", ".join(f"{r['op']} {100 * r['share']:.0f}%" for r in pr["top"][:5]))
    if len(trees) == 2:
        a, b = (data["trees"][t] for t in trees)
        for ga, gb in zip(a["gradients"], b["gradients"]):
            print(f"speed-up L={ga['L']} B={ga['batch']}: {ga['seff_s'] / gb['seff_s']:.2f}x")
        print(f"training speed-up: {b['train']['steps_per_s'] / a['train']['steps_per_s']:.2f}x")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for t, style in zip(trees, ("o--", "s-")):
        for B in BATCHES:
            rows = [g for g in data["trees"][t]["gradients"] if g["batch"] == B]
            Ls = [g["L"] for g in rows]
            axes[0].loglog(Ls, [g["seff_s"] for g in rows], style, label=f"{t}, S_eff, batch {B}")
            axes[1].semilogx(Ls, [g["ratio"] for g in rows], style, label=f"{t}, batch {B}")
    for B in BATCHES:
        rows = [g for g in data["trees"][trees[-1]]["gradients"] if g["batch"] == B]
        axes[0].loglog([g["L"] for g in rows], [g["action_s"] for g in rows], ":", color="gray",
                       label=f"action only, batch {B}")
    axes[0].set(xlabel="L", ylabel="seconds per gradient", title="gradient of S_eff through the flow (1 thread)")
    axes[1].set(xlabel="L", ylabel="S_eff gradient / action gradient", title="cost relative to the action")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(SIZES, [str(s) for s in SIZES])
        ax.minorticks_off()
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(figure, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_output_arguments(p, "speed")
    p.add_argument("--baseline", default="84323dc", help="commit to compare against (git revision)")
    p.add_argument("--repo", default=str(ROOT.parent), help="git repository holding --baseline")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker()))
        return
    if args.report:
        report(json.loads(Path(args.out).read_text()), args.figure)
        return
    with tempfile.TemporaryDirectory() as tmp:
        trees = {f"before ({args.baseline})": extract(args.repo, args.baseline, Path(tmp) / "before"), "after": ROOT.parent}
        data = {"machine": machine(), "baseline": args.baseline,
                "trees": {name: run_tree(name, path) for name, path in trees.items()}}
    Path(args.out).write_text(json.dumps(data, indent=1))
    report(data, args.figure)


if __name__ == "__main__":
    main()
