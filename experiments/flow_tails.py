"""Where a trained flow's tail of ``ln q + S`` comes from: its most outlying samples, re-scored in float64.

Draws ``--n`` samples of a flow run folder exactly as ``rgflow eval`` / :func:`rgflow.train.evaluate` does
(``--seed`` is the evaluation's sample seed: ``benchmark_flows.py --seed s`` evaluates with ``s + 1``), then
reports the quantiles of ``d = ln q + S``, the largest log-weights, and for the ``--top`` samples with the
largest ``d``: ``d`` above the median, ``S``, ``ln q`` as sampled and recomputed in float64 (rounding or
the model?), ``max |phi|`` and ``max |z|`` (the prior latent that produced it). One torch thread::

    OMP_NUM_THREADS=1 taskset -c 0 python experiments/flow_tails.py RUN --seed 2 --case NAME
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from common import add_output_arguments, machine

from rgflow.denormals import flush_denormals
from rgflow.runs import open_run
from rgflow.train.diagnostics import draw


@flush_denormals()
def tails(run: str, n: int, seed: int, top: int) -> dict:
    r = open_run(run, "flow")
    flow, action = r.model.eval(), r.config.make_action()
    x, log_q, S = draw(flow, action, n, generator=torch.Generator().manual_seed(seed))
    d = (log_q + S).numpy()
    med = float(np.median(d))
    worst = torch.from_numpy(np.argsort(d)[::-1][:top].copy())
    xs = x[worst].double()
    with torch.no_grad():
        f64 = flow.double()
        log_q64 = f64.log_prob(xs)
        z, _ = f64.forward(xs)
    return {"run": run, "n": n, "seed": seed, "median": med, "std": float(d.std(ddof=1)),
            "quantiles_above_median": {q: float(np.quantile(d, float(q)) - med) for q in ("0.9", "0.99", "0.999")},
            "largest_log_w_above_median": [float(-v + med) for v in np.sort(d)[:5]],
            "worst": [{"above_median": float(d[i] - med), "S": float(S[i]), "log_q": float(log_q[i]),
                       "log_q_float64": float(log_q64[k]), "max_abs_phi": float(xs[k].abs().max()),
                       "max_abs_z": float(z[k].abs().max())} for k, i in enumerate(worst.tolist())],
            "typical_max_abs_phi": float(x[:256].abs().amax(dim=(1, 2, 3)).median()),
            "machine": machine()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_output_arguments(p, "flow_tails")
    p.add_argument("run", help="a flow run folder")
    p.add_argument("--case", required=True, help="the key the result is stored under")
    p.add_argument("--n", type=int, default=16384)
    p.add_argument("--top", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.exists() else {}
    data[args.case] = tails(args.run, args.n, args.seed, args.top)
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps(data[args.case], indent=1))


if __name__ == "__main__":
    main()
