"""``rgflow images {train,eval,sample,mix,rf,progressive,inpaint}``: builds a config or opens a run,
calls the plain functions of :mod:`rgflow.images`, writes figures (into ``RUN/figures/`` unless
``--out DIR``) and, with ``--json``, prints exactly one JSON object. The demos accept image runs
and lattice flow runs alike."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from rgflow.cli.common import add_eval_arguments, run_eval

__all__ = ["add_parser", "run"]

log = logging.getLogger("rgflow")


def add_parser(sub, parser_class) -> None:
    """Add ``images`` and its subcommands to the ``rgflow`` parser."""
    from rgflow.config import add_config_arguments, add_run_arguments
    from rgflow.images.train import ImageConfig

    images = sub.add_parser("images", help="flows on images by maximum likelihood, and the scale-separation demos")
    isub = images.add_subparsers(dest="images_command", required=True, parser_class=parser_class)
    tr = isub.add_parser("train", help="maximum-likelihood training on an image dataset (bits/dim)")
    add_config_arguments(tr, ImageConfig)
    add_run_arguments(tr)

    add_eval_arguments(isub.add_parser("eval", help="alias of `rgflow eval RUN` (kept for scripts); the same flags"))

    demos = {
        "sample": "samples with a temperature per level (coarse and fine)",
        "mix": "feature mixing: coarse latents from one image, fine from another, over all levels",
        "rf": "receptive fields E|dx/dz| and impulse responses per level, with effective radii",
        "progressive": "coarse-to-fine generation: fix coarse latents, resample finer levels",
        "inpaint": "refill a masked square by changing only the latents in its light cone",
    }
    for name, text in demos.items():
        p = isub.add_parser(name, help=text)
        p.add_argument("run")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", help="folder for the figure (default RUN/figures)")
        p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
        if name == "sample":
            p.add_argument("-n", type=int, default=8, help="samples per temperature setting")
            p.add_argument("--temperatures", default="1,0.7,0.3",
                           help="comma-separated temperatures; each row of the figure uses one for coarse levels "
                                "(>= half the hierarchy) against each one for fine levels")
        if name == "mix":
            p.add_argument("--pairs", type=int, default=6, help="pairs shown in the grid")
            p.add_argument("--score-pairs", type=int, default=200,
                           help="labelled data: pairs scored by a nearest-neighbour label check per level")
        if name == "rf":
            p.add_argument("-n", type=int, default=16, help="prior draws averaged in E|dx/dz|")
        if name == "progressive":
            p.add_argument("--variants", type=int, default=6)
            p.add_argument("--temperature", type=float, default=1.0)
        if name == "inpaint":
            p.add_argument("--mask-size", dest="mask_size", type=int, default=None,
                           help="side of the masked square (default L/4)")
            p.add_argument("--images", type=int, default=6, help="held-out examples to corrupt and repair")
            p.add_argument("--method", choices=["optimize", "sample"], default="optimize")
            p.add_argument("--steps", type=int, default=200, help="optimisation steps")


_NOT_CONFIG = {"command", "images_command", "out", "resume", "dry_run"}


def _train(args) -> int:
    from rgflow.images.train import ImageConfig, train_images
    from rgflow.runs import resume_config

    options = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    if args.resume:
        cfg = resume_config(args.out, "images", options)
    else:
        if "steps" not in options and "minutes" not in options:
            options["minutes"] = 5.0
        cfg = ImageConfig.from_dict(options)
    if args.dry_run:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    summary = train_images(cfg, args.out, resume=args.resume)
    log.info("trained %d steps in %.1f s -> %s", summary["step"], summary["elapsed"], args.out)
    return 0


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")


def _out_dir(args) -> Path:
    out = Path(args.out) if args.out else Path(args.run) / "figures"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {out}: cannot create the folder ({exc.strerror})") from None
    return out


def _demo(args) -> tuple[dict, Path]:
    import torch

    from rgflow.images import demos
    from rgflow.images.figures import image_grid, receptive_field_figure
    from rgflow.images.runs import open_demo_run

    run = open_demo_run(args.run, seed=args.seed)
    model, layout = run.model, run.model.layout
    if layout is None or layout.kind != "mera":
        raise ValueError(f"{args.run} is a flat-flow run: the demos need the hierarchical (mera) flow")
    gen = torch.Generator(device=run.held_out.device).manual_seed(args.seed)
    top = layout.n_levels
    out = _out_dir(args)
    res: dict = {"run": str(args.run), "kind": run.kind, "n_levels": top}
    cmd = args.images_command
    if cmd == "sample":
        _positive("-n", args.n)
        try:
            temps = [float(t) for t in args.temperatures.split(",")]
        except ValueError:
            raise ValueError(f"--temperatures must be comma-separated numbers, got {args.temperatures!r}") from None
        if not temps or min(temps) < 0:
            raise ValueError(f"--temperatures must be numbers >= 0, got {args.temperatures!r}")
        coarse_from = (top + 1) // 2
        rows, labels = [], []
        for tc in temps:
            for tf in temps:
                per_level = [tf if lvl < coarse_from else tc for lvl in range(top + 1)]
                rows.append(demos.sample_with_temperatures(model, args.n, per_level,
                                                           torch.Generator(device=gen.device).manual_seed(args.seed)))
                labels.append(f"T_c={tc:g} T_f={tf:g}")
        path = image_grid(torch.stack(rows), out / "samples_temperature.png", run.kind, row_labels=labels,
                          title=f"{run.name}: temperature of coarse (levels >= {coarse_from}) and fine levels")
        res.update(temperatures=temps, coarse_levels_from=coarse_from)
    elif cmd == "mix":
        _positive("--pairs", args.pairs)
        n = len(run.held_out)
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))
        a_idx, b_idx = idx[: args.pairs], idx[args.pairs: 2 * args.pairs] if n >= 2 * args.pairs else idx.roll(1)[: args.pairs]
        a, b = run.held_out[a_idx], run.held_out[b_idx]
        grid = torch.stack([demos.mix(model, a, b, lvl) for lvl in range(top + 2)], dim=1)
        path = image_grid(grid, out / "mixing.png", run.kind,
                          col_labels=[f"l={lvl}" for lvl in range(top + 2)],
                          title="levels >= l from the first (left column), < l from the second (right column)")
        if run.labels is not None and args.score_pairs > 0:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed + 1))
            a_i, b_i = idx[: args.score_pairs], perm[: args.score_pairs]
            differ = torch.as_tensor(run.labels[a_i.numpy()] != run.labels[b_i.numpy()])
            a_i, b_i = a_i[differ], b_i[differ]
            scores = []
            for lvl in range(top + 2):
                m = demos.mix(model, run.held_out[a_i], run.held_out[b_i], lvl)
                coarse, fine = demos.label_agreement(m, run.train, run.train_labels, run.labels[a_i.numpy()],
                                                     run.labels[b_i.numpy()])
                scores.append({"level": lvl, "coarse_label": coarse, "fine_label": fine})
            res.update(label_follow=scores, scored_pairs=int(differ.sum()))
    elif cmd == "rf":
        _positive("-n", args.n)
        rf = demos.receptive_fields(model, args.n, generator=gen)
        path = receptive_field_figure(rf, out / "receptive_fields.png", title=f"{run.name}: receptive fields per level")
        res.update(rf.to_dict())
    elif cmd == "progressive":
        _positive("--variants", args.variants)
        ref = run.held_out[args.seed % len(run.held_out)][None]
        rows = demos.progressive(model, ref, args.variants, args.temperature, gen)
        path = image_grid(rows, out / "progressive.png", run.kind,
                          row_labels=["none fixed"] + [f"levels >= {top + 1 - k}" for k in range(1, top + 2)],
                          title="coarse-to-fine: latents of the coarse levels fixed to one example, finer resampled")
    else:  # inpaint
        _positive("--images", args.images)
        size = args.mask_size or max(1, layout.L // 4)
        if not 1 <= size < layout.L:
            raise ValueError(f"--mask-size must be between 1 and {layout.L - 1}, got {size}")
        truth = run.held_out[: args.images]
        mask = torch.zeros(layout.L, layout.L, dtype=torch.bool)
        lo = (layout.L - size) // 2
        mask[lo:lo + size, lo:lo + size] = True
        noise = torch.rand(truth.shape, generator=gen, dtype=truth.dtype) if run.kind == "images" else \
            torch.randn(truth.shape, generator=gen, dtype=truth.dtype)
        corrupted = torch.where(mask, noise, truth)
        cone = demos.inpaint(model, corrupted, mask, args.method, True, args.steps, truth=truth, generator=gen)
        full = demos.inpaint(model, corrupted, mask, args.method, False, args.steps, truth=truth, generator=gen)
        grid = torch.stack([truth, corrupted, cone.filled, full.filled], dim=0)
        path = image_grid(grid, out / "inpainting.png", run.kind,
                          row_labels=["original", "corrupted", f"light cone ({cone.n_changed})",
                                      f"all latents ({full.n_changed})"],
                          title=f"inpainting a {size}x{size} square ({args.method})")
        res.update(mask_size=size, method=args.method, n_latents=cone.n_latents,
                   cone={"n_changed": cone.n_changed, "rms_error": cone.rms_error.mean().item(),
                         "log_prob": cone.log_prob.mean().item()},
                   all={"n_changed": full.n_changed, "rms_error": full.rms_error.mean().item(),
                        "log_prob": full.log_prob.mean().item()})
    res["figure"] = str(path)
    return res, path


def run(args) -> int:
    """Dispatch ``rgflow images ...``."""
    cmd = args.images_command
    if cmd == "train":
        return _train(args)
    if cmd == "eval":
        return run_eval(args)
    res, path = _demo(args)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"figure: {path}")
        for key in ("radius", "label_follow", "cone", "all"):
            if key in res:
                print(f"{key}: {json.dumps(res[key])}")
    return 0
