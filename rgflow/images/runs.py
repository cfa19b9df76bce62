"""Open a trained run for the demos, with examples to show: image runs (``rgflow images train``)
and lattice flow runs (``rgflow train``, by reverse or forward KL), read through the run registry."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["DemoRun", "open_demo_run"]


@dataclass
class DemoRun:
    """A model in its data space with examples to show: ``held_out [N, C, L, L]`` (images: the
    bin centres ``(x + 1/2) / 256``; lattice: held-out ensemble fields, or flow samples when the run
    was trained from the action) with ``labels`` (or None), the training split likewise."""

    kind: str  # "images" or "lattice"
    model: torch.nn.Module
    config: object
    held_out: torch.Tensor
    labels: np.ndarray | None
    train: torch.Tensor
    train_labels: np.ndarray | None
    name: str


def _dtype(cfg):
    return torch.float64 if cfg.dtype == "float64" else torch.float32


def open_demo_run(run_dir: str | Path, device: str | None = None, n_samples: int = 256, seed: int = 0) -> DemoRun:
    """Load ``run_dir`` (an image or a lattice flow run) for the demos."""
    from rgflow.runs import open_run

    run = open_run(run_dir, ("images", "flow"), device)
    cfg = run.config
    if run.kind == "images":
        from rgflow.images.train import image_split

        model = run.model
        data, train_idx, test_idx = image_split(cfg)
        to_u = lambda x: ((x.to(_dtype(cfg)) + 0.5) / 256).to(cfg.device)  # noqa: E731
        labels = data.labels
        return DemoRun("images", model, cfg, to_u(data.images[test_idx]), None if labels is None else labels[test_idx],
                       to_u(data.images[train_idx]), None if labels is None else labels[train_idx], cfg.data)
    flow = run.model.eval()
    if cfg.data:
        from rgflow.ensemble import load_ensemble, split_ensemble

        fields = load_ensemble(cfg.data).fields.to(device=cfg.device, dtype=_dtype(cfg))
        train_idx, test_idx = split_ensemble(len(fields), cfg.holdout, cfg.seed)
        held_out, train = fields[test_idx], fields[train_idx]
    else:
        with torch.no_grad():
            held_out = flow.sample(n_samples, torch.Generator(device=cfg.device).manual_seed(seed))[0]
        train = held_out
    return DemoRun("lattice", flow, cfg, held_out, None, train, None, f"{cfg.action} L={cfg.L}")
