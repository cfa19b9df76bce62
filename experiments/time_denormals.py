"""Seconds per reverse-KL training step of a trained flow with subnormal floats kept and flushed.

Loads a flow run folder (``rgflow train``'s), times ``--steps`` steps (``flow.sample(B)``, the reverse-KL
loss, backward, Adam at a tiny learning rate) with ``torch.set_flush_denormal`` off, on, off, and prints
one JSON line. Pin it to an otherwise idle core::

    OMP_NUM_THREADS=1 taskset -c 1 python experiments/time_denormals.py /tmp/rgflow-flows/conv-h16-L16 --batch 64
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from rgflow.runs import open_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="a flow run folder")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    run = open_run(args.run, "flow")
    flow, action = run.model, run.config.make_action()
    opt = torch.optim.Adam(flow.parameters(), 1e-7)

    def step():
        x, log_q = flow.sample(args.batch)
        loss = (log_q + action(x)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    seconds = {}
    for label, flush in (("kept", False), ("flushed", True), ("kept_again", False)):
        torch.set_flush_denormal(flush)
        for _ in range(3):
            step()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        seconds[label] = (time.perf_counter() - t0) / args.steps
    torch.set_flush_denormal(False)
    print(json.dumps({"run": args.run, "batch": args.batch, "seconds_per_step": seconds}))


if __name__ == "__main__":
    main()
