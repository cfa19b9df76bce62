"""``rgflow images {train,eval,sample,mix,rf,progressive,inpaint}``: builds a config or opens a run,
calls the plain functions of :mod:`rgflow.images`, writes figures (into ``RUN/figures/`` unless
``--out DIR``) and, with ``--json``, prints exactly one JSON object. The demos accept image runs
and lattice flow runs alike."""
from __future__ import annotations

import json

from rgflow.cli.common import add_family_parser, family_config, run_eval, run_train


__all__ = ["add_parser", "run"]

def add_parser(sub, parser_class) -> None:
    """Add ``images`` and its subcommands to the ``rgflow`` parser."""
    from rgflow.images.train import ImageConfig

    isub = add_family_parser(sub, "images", "flows on images by maximum likelihood, and the scale-separation demos",
                             parser_class, ImageConfig, "maximum-likelihood training on an image dataset (bits/dim)")

    from rgflow.images.showcase import DEMOS

    for name, text in DEMOS.items():
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

    return run_train(args, family_config(args, "images", ImageConfig.from_dict, _NOT_CONFIG), train_images)


def run(args) -> int:
    """Dispatch ``rgflow images ...``."""
    cmd = args.images_command
    if cmd == "train":
        return _train(args)
    if cmd == "eval":
        return run_eval(args)
    from rgflow.images.showcase import run_image_demo

    options = {k: v for k, v in vars(args).items() if k not in ("command", "images_command", "run", "json")}
    res, path = run_image_demo(cmd, args.run, **options)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"figure: {path}")
        for key in ("radius", "label_follow", "cone", "all"):
            if key in res:
                print(f"{key}: {json.dumps(res[key])}")
    return 0
