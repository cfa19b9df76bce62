"""What the command groups share: one-line argparse errors and the one evaluation's flags."""
from __future__ import annotations

import argparse
import json

__all__ = ["Parser", "add_eval_arguments", "add_family_parser", "run_eval", "run_train", "family_config"]


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
    ev.add_argument("--by-level", action="store_true",
                    help="flow run: split the KL and the variance of ln w by RG level (conditional redraws of the "
                         "finer latents)")
    ev.add_argument("--by-level-samples", type=int, default=512, help="--by-level: outer draws")
    ev.add_argument("--by-level-inner", type=int, default=32, help="--by-level: redraws of the finer latents per "
                                                                   "outer draw and level")
    ev.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the run's own device)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")


def run_eval(args: argparse.Namespace) -> int:
    """``rgflow eval`` (and its aliases): one evaluation for every kind of run."""
    from rgflow.diffusion.sampler import steps_for_nfe
    from rgflow.evaluation import evaluate_run, format_eval

    steps_for_nfe(args.nfe, "ode")  # validates --nfe before any work
    res = evaluate_run(args.run, args.samples, args.seed, args.nfe, args.weights, args.draws,
                       by_level=args.by_level, by_level_samples=args.by_level_samples,
                       by_level_inner=args.by_level_inner, device=args.device)
    print(json.dumps(res) if args.json else format_eval(res))
    return 0


def family_config(args: argparse.Namespace, kind: str, new, exclude: set[str]):
    """The config of a ``rgflow diffuse/images train`` call: the run's own (updated by the flags given)
    with ``--resume``, else ``new(options)`` with a 5-minute budget unless one is given."""
    from rgflow.runs import resume_config

    options = {k: v for k, v in vars(args).items() if k not in exclude}
    if args.resume:
        return resume_config(args.out, kind, options)
    if "steps" not in options and "minutes" not in options:
        options["minutes"] = 5.0
    return new(options)


def run_train(args: argparse.Namespace, cfg, train) -> int:
    """Print the resolved config (``--dry-run``) or train it into ``--out`` (``train(cfg, out, resume=...)``)."""
    import logging

    if args.dry_run:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    summary = train(cfg, args.out, resume=args.resume)
    logging.getLogger("rgflow").info("trained %d steps in %.1f s -> %s", summary["step"], summary["elapsed"], args.out)
    return 0


def add_family_parser(sub, name: str, help: str, parser_class, config_cls, train_help: str):
    """``rgflow NAME`` with its ``train`` (flags from ``config_cls``) and ``eval`` (the alias of ``rgflow
    eval``) subcommands; returns the subparsers for the family's other commands."""
    from rgflow.config import add_config_arguments, add_run_arguments

    group = sub.add_parser(name, help=help)
    family_sub = group.add_subparsers(dest=f"{name}_command", required=True, parser_class=parser_class)
    tr = family_sub.add_parser("train", help=train_help)
    add_config_arguments(tr, config_cls)
    add_run_arguments(tr)
    add_eval_arguments(family_sub.add_parser("eval", help="alias of `rgflow eval RUN` (kept for scripts); the same "
                                                          "flags"))
    return family_sub
