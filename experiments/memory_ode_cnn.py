"""Peak memory and time of one reverse-KL training step of an all-ODE-CNN flow on phi^4 (width 16, RK4 with
4 steps), in a fresh process (peak resident memory is per process)::

    python experiments/memory_ode_cnn.py --L 32 --batch 64
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def step(L: int, batch: int) -> dict:
    import torch

    from rgflow.flows import build_flow
    from rgflow.layout import Layout
    from rgflow.physics import make_action
    from rgflow.train.loss import ReverseKL

    torch.set_num_threads(1)
    torch.manual_seed(0)
    flow = build_flow(Layout(L), block="ode-cnn", hidden=16, layers=2, ode_steps=4)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    ReverseKL(flow, make_action("phi4", m2=-4.0, lam=4.572))(batch).backward()
    return {"L": L, "batch": batch, "seconds": time.perf_counter() - t0,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "rss_before_gib": before / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--L", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(step(args.L, args.batch)))
        return
    out = subprocess.run([sys.executable, __file__, "--L", str(args.L), "--batch", str(args.batch), "--child"],
                         capture_output=True, text=True)
    print(out.stdout.strip() or f"failed ({out.returncode}) {out.stderr.strip().splitlines()[-1:]}", flush=True)


if __name__ == "__main__":
    main()
