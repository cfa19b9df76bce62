"""What the command groups share: one-line argparse errors and the one evaluation's flags."""
from __future__ import annotations

import argparse
import json

__all__ = ["Parser", "add_eval_arguments", "run_eval"]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_eval_arguments(ev: argparse.ArgumentParser) -> None:
    """The flags of the one evaluation (:func:`rgflow.evaluation.evaluate_run`), for ``eval`` and its aliases."""
    ev.add_argument("run")
    ev.add_argument("--samples", type=int, default=None,
                    help="samples with exact ln q (default: 16384 for a flow run, 1024 for a diffusion run)")
    ev.add_argument("--nfe", type=int, default=16, help="diffusion run: network evaluations of the finest level")
    ev.add_argument("--weights", choices=["ema", "raw"], default="ema",
                    help="diffusion run: the moving average of the weights (ema) or the last trained ones (raw)")
    ev.add_argument("--draws", type=int, default=1, help="image run: dequantisation draws per held-out image")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")


def run_eval(args: argparse.Namespace) -> int:
    """``rgflow eval`` (and its aliases): one evaluation for every kind of run."""
    from rgflow.diffusion.sampler import steps_for_nfe
    from rgflow.evaluation import evaluate_run, format_eval

    steps_for_nfe(args.nfe, "ode")  # validates --nfe before any work
    res = evaluate_run(args.run, args.samples, args.seed, args.nfe, args.weights, args.draws)
    print(json.dumps(res) if args.json else format_eval(res))
    return 0


