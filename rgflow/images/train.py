r"""Maximum-likelihood training of flows on images, through the one training loop.

``train_images(cfg, run_dir)`` builds a :class:`~rgflow.train.loop.Task` -- an
:class:`~rgflow.images.model.ImageFlow` (logit + the hierarchical RG flow, or the flat
checkerboard baseline), the :class:`ImageNLL` loss module (``forward(batch_size) -> -E[ln p(u)]``
on freshly dequantised minibatches of the training split) -- and runs
:func:`~rgflow.train.loop.run_loop`: same run folder (``config.json`` with ``"kind": "images"``),
``metrics.jsonl`` (batch bits/dim at every log, held-out bits/dim and the epoch at every
evaluation), atomic checkpoints, ``--resume``, signals, DDP and bad-input rules as every run.

The held-out split is fixed by ``seed`` (:func:`rgflow.ensemble.split_ensemble`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from rgflow.config import LoopConfig, _choice, _positive, option
from rgflow.defaults import CELL_BLOCK_DEFAULTS, FLOW_DEFAULTS, spline_range
from rgflow.ensemble import split_ensemble
from rgflow.flows.couplings import BLOCK_KINDS
from rgflow.flows.flat import build_flat_flow
from rgflow.flows.priors import PRIOR_KINDS
from rgflow.flows.rgflow import build_flow
from rgflow.images.data import DATASETS, ImageSet, load
from rgflow.images.model import ImageFlow, bits_per_dim, dequantize
from rgflow.layout import Layout
from rgflow.runs import RunFamily
from rgflow.train.distributed import sampler_seed

__all__ = ["ImageConfig", "ImageBatches", "ImageNLL", "build_image_model", "train_images", "RUN_FAMILY",
           "image_split", "count_parameters"]

IMAGE_FLOWS = ("mera", "flat")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class ImageConfig(LoopConfig):
    """An image flow's training run (``rgflow images train --help``).

    ``flat_width`` (the flat baseline's CNN width) is resolved when not given so that the flat flow
    has about as many parameters as the RG flow of the same config would have.
    """

    kind: str = "images"
    data: str = option("photo", "dataset (default photo: no extra packages)", choices=tuple(DATASETS))
    size: int | None = option(None, "image side (dataset default)")
    flow: str = option("mera", "mera: the RG flow; flat: RealNVP-style baseline", choices=IMAGE_FLOWS)
    block: str = option(CELL_BLOCK_DEFAULTS["block"], "block bijection of the RG flow",
                        choices=tuple(b for b in BLOCK_KINDS if b != "haar"))
    block_size: int = option(FLOW_DEFAULTS["block_size"], "RG block side (2 or 4)")
    n_couplings: int = option(CELL_BLOCK_DEFAULTS["n_couplings"], "coupling layers per block")
    hidden: int = option(CELL_BLOCK_DEFAULTS["hidden"], "conditioner width")
    layers: int = FLOW_DEFAULTS["layers"]
    num_bins: int = spline_range()[0]
    tail_bound: float = spline_range()[1]
    prior: str = option(FLOW_DEFAULTS["prior"], choices=PRIOR_KINDS)
    learn_level_scale: bool = CELL_BLOCK_DEFAULTS["learn_level_scale"]
    flat_layers: int = option(8, "coupling layers of the flat baseline (even)")
    flat_width: int | None = option(None, "CNN width of the flat baseline (default: matched to the RG flow's "
                                    "parameters)")
    alpha: float = option(0.05, "logit margin of the pre-transform, in (0, 0.5)")
    holdout: float = option(0.1, "held-out fraction of the images (fixed by --seed)")
    lr: float = option(1e-3, "learning rate", group="optimisation")

    MODEL_KEYS: ClassVar[tuple[str, ...]] = ("data", "size", "flow", "block", "block_size", "n_couplings", "hidden",
                                             "layers", "num_bins", "tail_bound", "prior", "learn_level_scale",
                                             "flat_layers", "flat_width", "alpha")

    def __post_init__(self):
        _choice(self, "data", list(DATASETS))
        if self.size is None:
            self.size = DATASETS[self.data][2]
        self.validate()
        if self.flow == "flat" and self.flat_width is None:
            self.flat_width = _matched_width(self)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field and its allowed values."""
        self.validate_loop()
        if self.kind != "images":
            raise ValueError(f"kind={self.kind!r} is not an image run")
        sizes = DATASETS[self.data][1]
        if self.size not in sizes:
            raise ValueError(f"size={self.size!r} is not allowed for data={self.data!r}; allowed: {', '.join(map(str, sizes))}")
        for name in ("block_size", "n_couplings", "hidden", "layers", "num_bins", "flat_layers"):
            _positive(self, name)
        _positive(self, "flat_width", allow_none=True)
        _positive(self, "tail_bound", integer=False)
        if not (isinstance(self.alpha, (int, float)) and 0 < self.alpha < 0.5):
            raise ValueError(f"alpha={self.alpha!r} is not allowed: the logit margin must lie in (0, 0.5)")
        if not (isinstance(self.holdout, (int, float)) and 0 < self.holdout < 1):
            raise ValueError(f"holdout={self.holdout!r} is not allowed: a fraction in (0, 1)")
        if self.flow == "mera":
            Layout(self.size, block_size=self.block_size)  # raises naming block_size and the allowed L
        elif self.flat_layers % 2:
            raise ValueError(f"flat_layers={self.flat_layers} is not allowed: an even number (both checkerboard parities)")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _flow(cfg: ImageConfig, channels: int):
    if cfg.flow == "flat":
        width = cfg.flat_width or cfg.hidden
        return build_flat_flow(cfg.size, channels, n_layers=cfg.flat_layers, hidden=(width, width))
    layout = Layout(cfg.size, block_size=cfg.block_size)
    return build_flow(layout, channels, cfg.block, cfg.n_couplings, cfg.hidden, cfg.layers, cfg.prior,
                      cfg.learn_level_scale, num_bins=cfg.num_bins, tail_bound=cfg.tail_bound)


def _matched_width(cfg: ImageConfig, channels: int = 1) -> int:
    """The flat CNN width whose parameter count is closest to the RG flow's."""
    target = count_parameters(_flow(ImageConfig(**{**cfg.to_dict(), "flow": "mera", "flat_width": None}), channels))
    flat = lambda w: count_parameters(build_flat_flow(cfg.size, channels, cfg.flat_layers, hidden=(w, w)))  # noqa: E731
    return min(range(2, 257), key=lambda w: abs(flat(w) - target))


def build_image_model(cfg: ImageConfig, channels: int = 1, device: str | None = None) -> ImageFlow:
    """The :class:`ImageFlow` a config describes, in its dtype and device."""
    return ImageFlow(_flow(cfg, channels), cfg.alpha).to(dtype=_DTYPES[cfg.dtype], device=device or cfg.device)


def image_split(cfg: ImageConfig) -> tuple[ImageSet, torch.Tensor, torch.Tensor]:
    """``(dataset, train indices, held-out indices)`` of a run (the split is fixed by ``cfg.seed``)."""
    data = load(cfg.data, cfg.size)
    train_idx, test_idx = split_ensemble(len(data.images), cfg.holdout, cfg.seed)
    return data, train_idx, test_idx


class ImageBatches:
    """Random minibatches of 8-bit ``images [N, C, H, W]``, dequantised afresh each time (and
    mirrored left-right at random when ``flip``): ``__call__(batch_size) -> u [B, C, H, W]``."""

    def __init__(self, images: torch.Tensor, generator: torch.Generator, flip: bool, dtype=torch.float32):
        self.images, self.generator, self.flip, self.dtype = images, generator, flip, dtype

    def __call__(self, batch_size: int) -> torch.Tensor:
        g, dev = self.generator, self.images.device
        x = self.images[torch.randint(len(self.images), (batch_size,), generator=g, device=dev)]
        if self.flip:
            mirror = torch.rand(batch_size, generator=g, device=dev) < 0.5
            x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
        return dequantize(x, g, self.dtype)


class ImageNLL(nn.Module):
    """``forward(batch_size) -> -E[ln p(u)]`` over a dequantised minibatch (nats per image); the
    batch's bits/dim is kept in ``last_bits_per_dim``."""

    def __init__(self, model: ImageFlow, batches: ImageBatches):
        super().__init__()
        self.model, self.batches = model, batches
        self._last_nll, self._dims = None, 1

    @property
    def last_bits_per_dim(self) -> float:
        """Bits/dim of the last batch (converted only when read: no device sync on every step)."""
        if self._last_nll is None:
            return float("nan")
        D = self._dims
        return (float(self._last_nll) + D * math.log(256.0)) / (D * math.log(2.0))

    def forward(self, batch_size: int) -> torch.Tensor:
        u = self.batches(batch_size)
        nll = -self.model.log_prob(u).mean()
        self._last_nll, self._dims = nll.detach(), u[0].numel()
        return nll


def _image_task(cfg: ImageConfig, ctx, device: str):
    from rgflow.train.loop import Task

    data, train_idx, test_idx = image_split(cfg)
    model = build_image_model(cfg, data.channels, device)
    gen = torch.Generator(device=device).manual_seed(sampler_seed(cfg.seed, ctx.rank))
    train_images = data.images[train_idx].to(device)
    test_images = data.images[test_idx].to(device)
    loss = ImageNLL(model, ImageBatches(train_images, gen, data.flip, _DTYPES[cfg.dtype]))

    @torch.no_grad()
    def quick_eval(step: int) -> dict:
        bpd = bits_per_dim(model, test_images, torch.Generator(device=device).manual_seed(cfg.seed + 1))
        return {"heldout_bits_per_dim": float(bpd.mean()),
                "heldout_bits_per_dim_err": float(bpd.std() / math.sqrt(len(bpd))),
                "n_test": len(bpd), "epoch": step * cfg.batch_size / len(train_idx)}

    return Task(model, loss, gen, quick_eval=quick_eval, log_extras=lambda: {"bpd_batch": loss.last_bits_per_dim})


def train_images(cfg: ImageConfig, run_dir: str | Path, resume: bool = False, progress: bool | None = None) -> dict:
    """Train the image flow ``cfg`` describes into ``run_dir`` (module docstring)."""
    from rgflow.train.loop import run_loop

    return run_loop(cfg, run_dir, _image_task, resume, progress)


def _load(cfg: ImageConfig, state: dict, device: str) -> ImageFlow:
    model = build_image_model(cfg, load(cfg.data, cfg.size).channels, device)
    model.load_state_dict(state["model"])
    return model.eval()


RUN_FAMILY = RunFamily("images", "rgflow images train / eval / demo", ImageConfig, _load)
