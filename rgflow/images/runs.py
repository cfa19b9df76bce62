"""Open any trained run for the demos and evaluate it by held-out likelihood: image runs
(``rgflow images train``) and lattice flow runs (``rgflow train``, by reverse or forward KL)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["DemoRun", "open_run", "evaluate_run"]


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


def open_run(run_dir: str | Path, device: str | None = None, n_samples: int = 256, seed: int = 0) -> DemoRun:
    """Load ``run_dir`` (either kind) for the demos."""
    from rgflow.train.loop import RunFolderError, load_run, read_run_config

    kind = read_run_config(run_dir).get("kind", "flow")
    if kind == "images":
        from rgflow.images.train import image_split, load_image_run

        cfg, model, _ = load_image_run(run_dir, device)
        data, train_idx, test_idx = image_split(cfg)
        to_u = lambda x: ((x.to(_dtype(cfg)) + 0.5) / 256).to(cfg.device)  # noqa: E731
        labels = data.labels
        return DemoRun("images", model, cfg, to_u(data.images[test_idx]), None if labels is None else labels[test_idx],
                       to_u(data.images[train_idx]), None if labels is None else labels[train_idx], cfg.data)
    if kind != "flow":
        raise RunFolderError(f"{run_dir} is a {kind} run; the demos need a flow (rgflow train / rgflow images train)")
    cfg, flow, _ = load_run(run_dir, device)
    flow.eval()
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


def evaluate_run(run_dir: str | Path, seed: int = 0, draws: int = 1, samples: int = 4096,
                 device: str | None = None) -> dict:
    """Held-out likelihood of a run.

    Image run: ``bits_per_dim`` (mean over held-out images of the per-image bits/dim, each averaged
    over ``draws`` dequantisations) and ``bits_per_dim_err`` (standard error over images),
    ``n_test``, ``params``, ``seconds``. Lattice run: ``nll_per_site`` (held-out, when trained from an
    ensemble) and every key of ``rgflow eval --json`` (ESS, ``lnZ``, ``pareto_k``, ...).
    """
    from rgflow.images.model import bits_per_dim
    from rgflow.images.train import count_parameters

    if not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws!r}")
    from rgflow.train.loop import read_run_config

    t0 = time.perf_counter()
    if read_run_config(run_dir).get("kind", "flow") == "images":  # the 8-bit images themselves, loaded once
        from rgflow.images.train import image_split, load_image_run

        cfg, model, _ = load_image_run(run_dir, device)
        params = count_parameters(model)
        data, _, test_idx = image_split(cfg)
        gen = torch.Generator(device=cfg.device).manual_seed(seed)
        images = data.images[test_idx].to(cfg.device)
        bpd = torch.stack([bits_per_dim(model, images, gen) for _ in range(draws)]).mean(0)
        return {"run": str(run_dir), "kind": "images", "data": cfg.data, "flow": cfg.flow,
                "bits_per_dim": float(bpd.mean()), "bits_per_dim_err": float(bpd.std() / math.sqrt(len(bpd))),
                "n_test": len(bpd), "draws": draws, "params": params, "n_params": params, "seconds": time.perf_counter() - t0}
    run = open_run(run_dir, device)
    params = count_parameters(run.model)
    from rgflow.train.diagnostics import evaluate

    cfg = run.config
    out = {"run": str(run_dir), "kind": "lattice", "n_params": params}
    if cfg.data:
        with torch.no_grad():
            nll = torch.cat([-run.model.log_prob(run.held_out[i:i + 1024]) for i in range(0, len(run.held_out), 1024)])
        V = cfg.L * cfg.L
        out.update(nll_per_site=float(nll.double().mean()) / V,
                   nll_per_site_err=float(nll.double().std() / math.sqrt(len(nll))) / V, n_test=len(nll))
    out.update(evaluate(run.model, cfg.make_action(), samples, seed=seed))
    out["seconds"] = time.perf_counter() - t0
    return out
