"""``rgflow`` command line: builds a config and calls plain functions; nothing else.

Subcommands: ``train``, ``eval`` (every kind of run), ``sample``, ``mcmc``, ``diffuse``
(:mod:`rgflow.cli.diffuse`), ``probe`` (:mod:`rgflow.cli.probe`), ``images`` (:mod:`rgflow.cli.images`),
``demo``. Each is also a Python function
(:func:`rgflow.train.train`, :func:`rgflow.evaluation.evaluate_run`, :func:`rgflow.sampling.sample_run`,
:func:`rgflow.sampling.run_chains`, :func:`rgflow.report.run_demo`). User errors print one line ``rgflow <cmd>: error: ...`` to
stderr and exit with code 2; an interrupted training exits with 130 (SIGINT) or 143 (SIGTERM).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rgflow.denormals import flush_denormals
from rgflow.cli.common import Parser, add_eval_arguments, run_eval, run_train
from rgflow.config import (COUPLING_NAMES, TrainConfig, add_config_arguments, add_run_arguments, load_toml,
                           normalize_keys)

__all__ = ["main", "build_parser", "config_from_args"]

log = logging.getLogger("rgflow")


def _physics_arguments(p: argparse.ArgumentParser) -> dict:
    """``--action``, ``--L`` (from :class:`~rgflow.config.TrainConfig`) and one flag per coupling."""
    groups = add_config_arguments(p, TrainConfig, only=("action", "L"))
    phys = groups["physics (names as in the action formulas)"]
    for name in COUPLING_NAMES:
        phys.add_argument(f"--{name}", type=float, default=argparse.SUPPRESS, help=f"coupling {name}")
    return groups


def _train_arguments(p: argparse.ArgumentParser) -> None:
    groups = _physics_arguments(p)
    add_config_arguments(p, TrainConfig, exclude=("action", "L"), groups=groups)
    p.add_argument("--config", help="TOML file with the same keys (flags override it)")
    add_run_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rgflow", description="The renormalization group as a learned bijection.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _train_arguments(sub.add_parser("train", help="train a flow by reverse KL from an action"))
    add_eval_arguments(sub.add_parser("eval", help="evaluate a run of any kind: ESS, ln Z, F_var, IMH acceptance and "
                                                   "observables (flow, diffusion), held-out bits/dim (images)"))
    sa = sub.add_parser("sample", help="draw samples from a trained run into an .npz file")
    sa.add_argument("run")
    sa.add_argument("-n", type=int, required=True, help="number of samples")
    sa.add_argument("--out", required=True, help="output .npz file")
    sa.add_argument("--seed", type=int, default=0)
    from rgflow.mcmc.run import SAMPLERS

    mc = sub.add_parser("mcmc",
                        help="Markov chains (physical, cluster, flow-IMH, latent HMC) with tau_int and costs")
    mc.add_argument("run", nargs="?", help="trained run folder (needed for imh and latent-hmc)")
    mc.add_argument("--sampler", choices=list(SAMPLERS), required=True)
    mc.add_argument("--n", type=int, default=2000, help="recorded steps per chain")
    mc.add_argument("--chains", type=int, default=16)
    mc.add_argument("--warmup", type=int, default=200, help="unrecorded steps that tune the step size")
    mc.add_argument("--discard", default="auto",
                    help="recorded steps per chain dropped as thermalisation: an integer, or auto "
                         "(10 tau_int, at most a quarter of the chain); reported as n_discarded_per_chain "
                         "(n_discarded: all chains)")
    mc.add_argument("--leapfrog", type=int, default=10,
                    help="leapfrog steps per HMC trajectory (hmc, cluster-hmc, latent-hmc)")
    mc.add_argument("--step-size", dest="step_size", type=float, default=None,
                    help="initial HMC step size / Metropolis proposal width (tuned during warm-up)")
    mc.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    mc.add_argument("--nfe", type=int, default=16, help="diffusion run: network evaluations per stage of each IMH proposal")
    mc.add_argument("--weights", choices=["ema", "raw"], default="ema",
                    help="diffusion run: the moving average of the weights (ema) or the last trained ones (raw)")
    mc.add_argument("--seed", type=int, default=0)
    mc.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    mc.add_argument("--out", help="write the chain to this .npz (and its autocorrelation figure beside it)")
    mc.add_argument("--save-every", type=int, default=10,
                    help="with --out, keep every K-th configuration of every chain in the .npz (0: none)")
    _physics_arguments(mc)
    from rgflow.cli.diffuse import add_parser as add_diffuse_parser

    add_diffuse_parser(sub, Parser)
    from rgflow.cli.probe import add_parser as add_probe_parser

    add_probe_parser(sub)
    from rgflow.cli.images import add_parser as add_images_parser

    add_images_parser(sub, Parser)
    de = sub.add_parser("demo", help="the main job: train phi^4 8x8 and write a report with a figure")
    de.add_argument("--out", default=None, help="run folder (default: next free runs/demo-N)")
    de.add_argument("--minutes", type=float, default=4.0, help="training budget")
    de.add_argument("--seed", type=int, default=0)
    return parser


_NOT_CONFIG = {"config", "out", "resume", "dry_run", "command"}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults <- run folder (with --resume) <- TOML file <- command-line flags."""
    data: dict = {}
    if args.resume:
        from rgflow.runs import read_config

        cfg_path = Path(args.out) / "config.json"
        if not cfg_path.is_file():
            raise ValueError(f"cannot resume: {args.out} is not a run folder (no config.json)")
        data.update(read_config(args.out))
        kind = data.pop("kind")
        if kind != "flow":
            tool = "diffuse" if kind == "diffusion" else kind
            raise ValueError(f"cannot resume: {args.out} is a {kind} run; use `rgflow {tool} train --resume`")
    if args.config:
        data.update(load_toml(args.config))
    data = normalize_keys(data)
    flags = normalize_keys({k: v for k, v in vars(args).items() if k not in _NOT_CONFIG})
    params = {**data.pop("params"), **flags.pop("params")}
    data.update(flags)
    if data.get("mixture") == "none":  # TOML files and flags spell "no group" as "none"
        data["mixture"] = None
    if "steps" not in data and "minutes" not in data:
        data["minutes"] = 5.0
    if data.get("data") and not args.resume:
        params = _physics_of_ensemble(data, params, flags)
    return TrainConfig.from_dict({**data, "params": params})


def _physics_of_ensemble(data: dict, params: dict, flags: dict) -> dict:
    """``--data``: the action, couplings and L come from the ensemble (conflicting flags are an error)."""
    from rgflow.ensemble import load_ensemble

    ens = load_ensemble(data["data"])
    given = {"action": flags.get("action"), "L": flags.get("L")}
    if (given["action"] not in (None, ens.action.name)) or (given["L"] not in (None, ens.L)) or \
            any(ens.action.params.get(k) != v for k, v in params.items()):
        raise ValueError(f"--data {data['data']} holds {ens.action.name} {dict(ens.action.params)} L={ens.L}; "
                         "do not give other physics flags with it")
    data["action"], data["L"] = ens.action.name, ens.L
    for key in ("num_bins", "tail_bound"):  # resolved for the ensemble's action unless set
        if key not in flags:
            data.pop(key, None)
    return dict(ens.action.params)


def _mcmc(args: argparse.Namespace) -> int:
    from rgflow.sampling import run_chains
    from rgflow.stats import format_value_error as fmt

    physics = {k: v for k, v in vars(args).items() if k == "action" or k == "L" or k in COUPLING_NAMES}
    summary = run_chains(args.sampler, args.run, physics, args.n, args.chains, args.seed, args.warmup, args.discard,
                         args.leapfrog, args.step_size, args.device, args.nfe, args.weights, args.out, args.save_every)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{summary['sampler']} on {summary['action']} {summary['params']} L={summary['L']}: {summary['chains']} "
          f"chains x {args.n} steps, acceptance {summary['acceptance']:.3f}, {summary['seconds_per_step'] * 1e3:.3f} ms "
          f"and {summary['grad_evals_per_step']:g} gradients per step"
          + (f", {summary['divergences']} divergent trajectories rejected" if summary["divergences"] else ""))
    print(f"  {summary['n_used']} of {summary['n_samples']} samples used ({summary['n_discarded_per_chain']} per chain "
          "discarded as thermalisation)" + ("" if summary["thermalized"] else
                                            f"; WARNING: not thermalised (early vs late parts differ by "
                                            f"{summary['thermalization_z']:.1f} sigma): run longer or raise --warmup"))
    print(f"  {'observable':<10} {'value':>16} {'tau_int':>12} {'s / indep. sample':>18}")
    for name, (v, e) in summary["observables"].items():
        tau = summary["tau_int"][name]
        cost = summary["cost_per_independent_sample"][name]["seconds"]
        flag = "" if summary["reliable"][name] else "  unreliable: chains shorter than 50 tau_int"
        print(f"  {name:<10} {fmt(v, e):>16} {fmt(*tau):>12} {cost:>18.2e}{flag}")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "train":
        from rgflow.train import train

        return run_train(args, config_from_args(args), train)
    if args.command == "eval":
        return run_eval(args)
    if args.command == "sample":
        from rgflow.sampling import sample_run

        path = sample_run(args.run, args.n, args.out, args.seed)
        log.info("wrote %d samples to %s", args.n, path)
        return 0
    if args.command == "mcmc":
        return _mcmc(args)
    if args.command == "probe":
        from rgflow.cli.probe import run as run_probe

        return run_probe(args)
    if args.command == "diffuse":
        from rgflow.cli.diffuse import run as run_diffuse

        return run_diffuse(args)
    if args.command == "images":
        from rgflow.cli.images import run as run_images

        return run_images(args)
    if args.command == "demo":
        from rgflow.report import run_demo

        if args.minutes <= 0:
            raise ValueError(f"--minutes must be > 0, got {args.minutes}")
        run_dir = run_demo(args.out, minutes=args.minutes, seed=args.seed)
        print(f"report: {run_dir / 'report.md'}")
        return 0
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rgflow`` console script."""
    from rgflow.train import CheckpointError, TrainingInterrupted

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        with flush_denormals():
            return _run(args)
    except TrainingInterrupted as exc:
        print(f"rgflow {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except (ValueError, CheckpointError, FloatingPointError, OSError) as exc:
        msg = str(exc).replace("\n", " ")
        print(f"rgflow {args.command}: error: {msg}", file=sys.stderr)
        return 2
