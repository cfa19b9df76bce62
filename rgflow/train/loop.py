"""The training loop: a plain function from a :class:`~rgflow.config.TrainConfig` to a run folder.

A run folder holds ``config.json`` (the resolved config), ``metrics.jsonl`` (one JSON object
per logged step or evaluation) and ``checkpoint.pt`` (atomic; the previous one is kept as
``checkpoint.pt.prev``). ``train(cfg, run, resume=True)`` continues a run where it stopped:
same parameters, optimiser state, step count, elapsed time and RNG state.

Robustness: a step with a non-finite loss or gradient is skipped and counted; after
``max_bad_steps`` consecutive bad steps the run rolls back to its last checkpoint with the
learning rate halved. SIGINT / SIGTERM write a checkpoint and raise :class:`TrainingInterrupted`.
"""
from __future__ import annotations

import json
import logging
import math
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rgflow.config import TrainConfig
from rgflow.flows.flat import build_flat_flow
from rgflow.flows.rgflow import FieldFlow, build_flow
from rgflow.layout import Layout
from rgflow.physics.models import ACTION_PARAMS
from rgflow.stats import effective_sample_size, log_mean_exp
from rgflow.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from rgflow.train.loss import ReverseKL

__all__ = ["build_model", "train", "load_run", "TrainingInterrupted", "RunFolderError"]

log = logging.getLogger("rgflow")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class TrainingInterrupted(Exception):
    """Raised after a checkpoint was written on SIGINT (``exit_code`` 130) or SIGTERM (143)."""

    def __init__(self, signum: int, step: int):
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by signal {signum} at step {step}; checkpoint written, resume with --resume")


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (not a run, or already a run)."""


def build_model(cfg: TrainConfig) -> FieldFlow:
    """The flow a config describes, in the config's dtype and device."""
    channels = ACTION_PARAMS[cfg.action][1]
    if cfg.flow == "flat":
        flow = build_flat_flow(cfg.L, channels, n_layers=cfg.n_couplings, hidden=(cfg.hidden,) * cfg.layers)
    else:
        layout = Layout(cfg.L, block=cfg.block_size, kind=cfg.flow, depth=cfg.depth, repeats=cfg.repeats)
        extra = {"num_bins": cfg.num_bins, "tail_bound": cfg.tail_bound} if cfg.block == "spline" else {}
        flow = build_flow(
            layout, channels, cfg.block, cfg.n_couplings, cfg.hidden, cfg.layers, cfg.prior, cfg.learn_level_scale, **extra
        )
    return flow.to(dtype=_DTYPES[cfg.dtype], device=cfg.device)


def load_run(run_dir: str | Path, device: str | None = None) -> tuple[TrainConfig, FieldFlow, dict]:
    """Load ``(config, flow with trained weights, checkpoint state)`` from a run folder."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise RunFolderError(f"{run_dir} is not a run folder (no config.json); create one with `rgflow train --out {run_dir}`")
    try:
        cfg = TrainConfig.from_dict(json.loads(cfg_path.read_text()))
    except json.JSONDecodeError as exc:
        raise RunFolderError(f"{cfg_path}: not valid JSON ({exc})") from None
    if device is not None:
        cfg.device = device
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise RunFolderError(f"{run_dir} has no checkpoint yet (checkpoint.pt); train it first")
    state = load_checkpoint(ckpt, cfg.to_dict(), map_location=cfg.device)
    flow = build_model(cfg)
    flow.load_state_dict(state["model"])
    return cfg, flow, state


def _lr_factor(cfg: TrainConfig, progress: float) -> float:
    if cfg.schedule == "constant":
        return 1.0
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _progress(cfg: TrainConfig, step: int, elapsed: float) -> float:
    fracs = []
    if cfg.steps is not None:
        fracs.append(step / cfg.steps)
    if cfg.minutes is not None:
        fracs.append(elapsed / (60 * cfg.minutes))
    return max(fracs)


class _SignalFlag:
    """Record SIGINT/SIGTERM instead of dying mid-step (main thread only)."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _make_optimizer(cfg: TrainConfig, flow: FieldFlow) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(flow.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


@torch.no_grad()
def _quick_eval(flow: FieldFlow, action, n: int, seed: int) -> dict:
    gen = torch.Generator(device=next(flow.parameters()).device).manual_seed(seed)
    x, log_q = flow.sample(n, generator=gen)
    S = action(x)
    log_w = (-S - log_q).double().cpu().numpy()
    offset = action.lnZ_offset(x.shape[-1])
    return {
        "ess": effective_sample_size(log_w),
        "lnZ": log_mean_exp(log_w) + offset,
        "f_variational": float((log_q + S).double().mean()) - offset,
    }


def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = False, progress: bool | None = None) -> dict:
    """Train ``cfg`` into ``run_dir``; with ``resume`` continue the run stored there.

    Returns:
        ``{"run_dir", "step", "elapsed", "loss", "bad_steps", "rollbacks"}``.
    """
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "checkpoint.pt"
    previous = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if resume and previous is None:
        raise RunFolderError(f"cannot resume: {run_dir} holds no checkpoint")
    if not resume and (previous is not None or (run_dir / "config.json").exists()):
        raise RunFolderError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    torch.manual_seed(cfg.seed)
    action = cfg.make_action()
    flow = build_model(cfg)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.json")
    except OSError as exc:
        raise RunFolderError(f"cannot write to run folder {run_dir}: {exc.strerror}") from None
    loss_fn = ReverseKL(flow, action, cfg.path_gradient)
    opt = _make_optimizer(cfg, flow)
    step, elapsed, bad_total, rollbacks, lr_scale = 0, 0.0, 0, 0, 1.0

    def restore(path: Path) -> None:
        nonlocal step, elapsed, bad_total, rollbacks, lr_scale
        state = load_checkpoint(path, cfg.to_dict(), map_location=cfg.device)
        flow.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed = int(state["step"]), float(state.get("elapsed", 0.0))
        bad_total, rollbacks = int(state.get("bad_steps", 0)), int(state.get("rollbacks", 0))
        lr_scale = float(state.get("lr_scale", 1.0))
        torch.set_rng_state(state["rng"]["torch"])
        if cfg.device.startswith("cuda") and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"])

    def checkpoint() -> None:
        rng = {"torch": torch.get_rng_state()}
        if cfg.device.startswith("cuda"):
            rng["cuda"] = torch.cuda.get_rng_state()
        save_checkpoint(
            ckpt_path,
            {
                "model": flow.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "elapsed": elapsed,
                "bad_steps": bad_total,
                "rollbacks": rollbacks,
                "lr_scale": lr_scale,
                "config": cfg.to_dict(),
                "rng": rng,
            },
        )

    if resume:
        restore(previous)
        log.info("resumed %s at step %d (%.1f s trained)", run_dir, step, elapsed)

    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=cfg.steps, initial=step, disable=not show, desc="train", dynamic_ncols=True)
    consecutive_bad, loss_value = 0, float("nan")
    with open(run_dir / "metrics.jsonl", "a") as metrics, _SignalFlag() as flag:
        while _progress(cfg, step, elapsed) < 1.0:
            if flag.signum is not None:
                checkpoint()
                bar.close()
                raise TrainingInterrupted(flag.signum, step)
            t0 = time.perf_counter()
            lr = cfg.lr * lr_scale * _lr_factor(cfg, _progress(cfg, step, elapsed))
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(cfg.batch_size)
            ok = bool(torch.isfinite(loss))
            if ok:
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(flow.parameters(), cfg.grad_clip)
                ok = bool(torch.isfinite(grad_norm))
            if not ok:
                consecutive_bad += 1
                bad_total += 1
                log.warning("step %d: non-finite loss or gradient, step skipped (%d in a row)", step, consecutive_bad)
                if consecutive_bad >= cfg.max_bad_steps:
                    last = latest_checkpoint(run_dir)
                    if last is None:
                        raise FloatingPointError(
                            f"{consecutive_bad} consecutive non-finite steps before any checkpoint; lower lr (now {cfg.lr})"
                        )
                    restore(last)
                    lr_scale *= 0.5
                    rollbacks += 1
                    consecutive_bad = 0
                    log.warning("rolled back to %s (step %d), learning rate scaled by %g", last, step, lr_scale)
                    metrics.write(json.dumps({"step": step, "event": "rollback", "lr_scale": lr_scale}) + "\n")
                continue
            opt.step()
            consecutive_bad = 0
            step += 1
            elapsed += time.perf_counter() - t0
            loss_value = float(loss.detach())
            bar.update(1)
            if step % cfg.log_every == 0:
                log_w = loss_fn.last_log_w.double().cpu().numpy()
                rec = {"step": step, "time": round(elapsed, 3), "loss": loss_value, "ess_batch": effective_sample_size(log_w),
                       "lr": lr, "grad_norm": float(grad_norm)}
                metrics.write(json.dumps(rec) + "\n")
                bar.set_postfix(loss=f"{loss_value:.3f}", ess=f"{rec['ess_batch']:.2f}")
            if step % cfg.eval_every == 0:
                metrics.write(json.dumps({"step": step, "time": round(elapsed, 3),
                                          "eval": _quick_eval(flow, action, cfg.eval_samples, seed=step)}) + "\n")
                metrics.flush()
            if step % cfg.ckpt_every == 0:
                checkpoint()
        checkpoint()
    bar.close()
    return {"run_dir": str(run_dir), "step": step, "elapsed": elapsed, "loss": loss_value, "bad_steps": bad_total,
            "rollbacks": rollbacks}
