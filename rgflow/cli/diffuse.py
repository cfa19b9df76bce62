"""``rgflow diffuse {train,eval,sample}``: builds a config, calls plain functions (``eval`` is ``rgflow eval``)."""
from __future__ import annotations

import json
import time

from rgflow.cli.common import add_family_parser, family_config, run_eval, run_train
from rgflow.diffusion.sampler import cost_of, steps_for_nfe

__all__ = ["add_parser", "run"]


def add_parser(sub, parser_class) -> None:
    """Add ``diffuse`` with its ``train``, ``eval`` and ``sample`` subcommands to the ``rgflow`` parser."""
    from rgflow.diffusion.sampler import SAMPLER_KINDS
    from rgflow.diffusion.train import WEIGHTS, DiffusionConfig

    dsub = add_family_parser(sub, "diffuse", "diffusion models on the RG hierarchy (train, eval, sample)", parser_class,
                             DiffusionConfig, "score matching on an ensemble .npz")
    weights_help = "ema (default): the moving average of the weights; raw: the last trained weights"
    sa = dsub.add_parser("sample", help="draw fields with a fixed number of network evaluations")
    sa.add_argument("run")
    sa.add_argument("--nfe", type=int, required=True, help="network evaluations per stage (the one knob)")
    sa.add_argument("-n", type=int, required=True, help="number of samples")
    sa.add_argument("--sampler", choices=list(SAMPLER_KINDS), default="ode",
                    help="ode: Heun on the probability-flow ODE; sde: the reverse SDE")
    sa.add_argument("--weights", choices=list(WEIGHTS), default="ema", help=weights_help)
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--batch-size", type=int, default=1024)
    sa.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    sa.add_argument("--out", help="write the samples to this .npz (the ensemble format of `rgflow sample`)")


_NOT_CONFIG = {"command", "diffuse_command", "out", "resume", "dry_run"}


def _train(args) -> int:
    from rgflow.diffusion.train import config_for_ensemble, train_diffusion

    def new(options: dict):
        if "data" not in options:
            raise ValueError("--data is required: an ensemble .npz from `rgflow mcmc ... --out` or `rgflow sample`")
        return config_for_ensemble(options.pop("data"), **options)

    return run_train(args, family_config(args, "diffusion", new, _NOT_CONFIG), train_diffusion)


def _sample(args) -> int:
    import torch

    from rgflow.diffusion.sampler import sample_fields
    from rgflow.ensemble import check_npz_path, save_samples
    from rgflow.runs import open_run
    from rgflow.physics.observables import estimate_observables
    from rgflow.stats import format_value_error as fmt

    steps_for_nfe(args.nfe, args.sampler)  # validates --nfe and --sampler before any work
    if args.n < 2:
        raise ValueError(f"-n must be >= 2 (errors need two samples), got {args.n}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {args.batch_size}")
    out = check_npz_path(args.out) if args.out else None
    run = open_run(args.run, "diffusion", weights=args.weights)
    cfg, model, action = run.config, run.model, run.action
    gen = torch.Generator(device=cfg.device).manual_seed(args.seed)
    t0 = time.perf_counter()
    x, nfe = sample_fields(model, args.n, args.nfe, args.sampler, gen, args.batch_size)
    seconds = time.perf_counter() - t0
    cost = cost_of(model, args.nfe, args.sampler)
    field = action.measurement_field(x.double(), torch.Generator(device=cfg.device).manual_seed(args.seed + 1))
    est = estimate_observables(field)
    res = {"run": str(args.run), "action": action.name, "params": dict(action.params), "L": cfg.L,
           "schedule": cfg.noise_schedule, "sampler": args.sampler, **cost, "weights": args.weights,
           "n_samples": args.n, "seconds": seconds, "observables": {k: v.to_list() for k, v in est.items()}}
    if out is not None:
        save_samples(out, x, action, cfg.L, f"diffusion:{args.sampler}", nfe=nfe, step=0)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{action.name} {dict(action.params)} L={cfg.L}: {args.n} samples, {args.sampler} sampler, {nfe} network "
          f"evaluations per stage ({cost['network_calls']} calls, {cost['lattice_nfe']:.2f} on the whole lattice; "
          f"{cfg.noise_schedule} schedule, {args.weights} weights), {seconds:.2f} s")
    for name, (v, e) in res["observables"].items():
        print(f"  {name:<10} {fmt(v, e):>16}")
    return 0


def run(args) -> int:
    """Dispatch ``rgflow diffuse ...``."""
    if args.diffuse_command == "train":
        return _train(args)
    if args.diffuse_command == "eval":
        return run_eval(args)
    return _sample(args)

