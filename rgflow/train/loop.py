"""The one training loop: a plain function from a config to a run folder, with pluggable tasks.

:func:`run_loop` trains any :class:`Task` -- a model, a loss module ``forward(batch_size) -> loss``
and hooks -- under a :class:`~rgflow.config.LoopConfig`: :func:`rgflow.train.flow.train` (reverse
and forward KL of flows), :func:`rgflow.diffusion.train.train_diffusion` (score matching) and
:func:`rgflow.images.train.train_images` (image likelihood) are its tasks.

A run folder holds ``config.json`` (the resolved config), ``metrics.jsonl`` (one JSON object
per logged step, evaluation or event) and ``checkpoint.pt`` (atomic; the previous one is kept
as ``checkpoint.pt.prev``). ``train(cfg, run, resume=True)`` continues a run where it stopped:
same parameters, optimiser state, step count, elapsed time and sampler RNG states, so with a
step budget a killed and resumed run ends with the same parameters as an uninterrupted one.

Data parallel: under ``torchrun`` every rank draws ``batch_size / world_size`` samples from its
own stream (:func:`~rgflow.train.distributed.sampler_seed`), the :class:`ReverseKL` module is
(the task's loss module) called through the ``DistributedDataParallel`` wrapper (gradients averaged), metrics are
all-reduced, and only rank 0 writes files. At each checkpoint the ranks compare parameter
checksums and stop if they ever differ.

Robustness: a step with a non-finite loss or gradient (on any rank) is skipped and counted;
after ``max_bad_steps`` consecutive bad steps the run rolls back to its last checkpoint with
the learning rate halved. SIGINT / SIGTERM (on any rank) write a checkpoint and raise
:class:`TrainingInterrupted`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from rgflow.denormals import flush_denormals
from rgflow.train.checkpoint import FolderLock, RunFolderError, latest_checkpoint, load_checkpoint, save_checkpoint
from rgflow.train.distributed import DistContext, init_distributed, sampler_seed

__all__ = ["run_loop", "Task", "TrainingInterrupted"]

log = logging.getLogger("rgflow")


class TrainingInterrupted(Exception):
    """Raised after a checkpoint was written on SIGINT (``exit_code`` 130) or SIGTERM (143)."""

    def __init__(self, signum: int, step: int):
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by signal {signum} at step {step}; checkpoint written, resume with --resume")


def _lr_factor(cfg, progress: float) -> float:
    if cfg.lr_schedule == "constant":
        return 1.0
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _progress(cfg, step: int, elapsed: float) -> float:
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


def _make_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


@dataclass
class Task:
    """What :func:`run_loop` trains.

    * ``model`` -- the module whose parameters are optimised, checkpointed and compared across ranks;
    * ``loss`` -- an ``nn.Module`` with ``forward(batch_size) -> scalar loss`` (called through the
      DDP wrapper), drawing from ``generator`` (the rank's stream, checkpointed);
    * ``quick_eval(step)`` -- a small evaluation logged every ``eval_every`` steps (rank 0);
    * ``log_extras()`` -- extra numbers for each logged step (e.g. the batch ESS), all ranks;
    * ``after_step()`` -- called after every optimiser step (e.g. an EMA update);
    * ``extra_state()`` / ``load_extra_state(state)`` -- more checkpointed tensors (e.g. EMA weights);
    * ``initialise()`` -- called once before the first step of a new run, not on resume (e.g. weights
      from another run).
    """

    model: torch.nn.Module
    loss: torch.nn.Module
    generator: torch.Generator
    quick_eval: Callable[[int], dict] | None = None
    log_extras: Callable[[], dict] = lambda: {}
    after_step: Callable[[], None] = lambda: None
    extra_state: Callable[[], dict] = lambda: {}
    load_extra_state: Callable[[dict], None] = lambda state: None
    initialise: Callable[[], None] = lambda: None


@flush_denormals()
def run_loop(cfg, run_dir: str | Path, make_task: Callable[..., Task], resume: bool = False,
             progress: bool | None = None) -> dict:
    """Train the :class:`Task` that ``make_task(cfg, ctx, device)`` builds, under ``cfg`` (a
    :class:`~rgflow.config.LoopConfig`), into ``run_dir``; see the module docstring."""
    ctx, device = init_distributed(cfg.device)
    deterministic = torch.are_deterministic_algorithms_enabled()
    lock = FolderLock()
    try:
        return _train(cfg, Path(run_dir), resume, progress, ctx, device, make_task, lock)
    finally:
        lock.release()
        torch.use_deterministic_algorithms(deterministic)
        ctx.close()


def _param_checksum(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([(p.double() * (1 + torch.arange(p.numel(), device=p.device).reshape(p.shape) % 7)).sum()
                            for p in model.parameters()]).sum().reshape(1)


def _train(cfg, run_dir: Path, resume: bool, progress: bool | None, ctx: DistContext, device: str, make_task,
           lock: FolderLock) -> dict:
    ckpt_path = run_dir / "checkpoint.pt"
    if ctx.is_main and run_dir.is_dir():
        lock.acquire(run_dir)  # one writer per folder (rank 0 writes for all ranks)
    previous = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if resume and previous is None:
        raise RunFolderError(f"cannot resume: {run_dir} holds no checkpoint")
    if not resume and (previous is not None or (run_dir / "config.json").exists()):
        raise RunFolderError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if cfg.batch_size % ctx.world_size:
        raise ValueError(f"batch_size={cfg.batch_size} must be a multiple of the number of processes ({ctx.world_size})")
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)

    torch.manual_seed(cfg.seed)
    task = make_task(cfg, ctx, device)
    flow, gen = task.model, task.generator
    config_cls = type(cfg)
    saved = load_checkpoint(previous, cfg.to_dict(), device, config_cls) if resume else None  # validate first
    if saved is None:
        task.initialise()  # before the folder is written: a refused --init-from leaves nothing behind
    if ctx.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire(run_dir)
            if not resume and (run_dir / "config.json").exists():  # another process created it meanwhile
                raise RunFolderError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
            cfg.save(run_dir / "config.json")
        except OSError as exc:
            raise RunFolderError(f"cannot write to run folder {run_dir}: {exc.strerror}") from None
    ctx.barrier()

    model = task.loss
    if ctx.enabled:
        model = torch.nn.parallel.DistributedDataParallel(task.loss, device_ids=[ctx.local_rank] if "cuda" in device else None)
    opt = _make_optimizer(cfg, flow)
    n = {"step": 0, "elapsed": 0.0, "bad_steps": 0, "rollbacks": 0, "lr_scale": 1.0}

    def restore(state: dict) -> None:
        flow.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        task.load_extra_state(state.get("extra", {}))
        for key in n:
            n[key] = type(n[key])(state.get(key, n[key]))
        streams = state.get("rng", {}).get("sampler", [])
        if len(streams) == ctx.world_size:
            gen.set_state(streams[ctx.rank].cpu())
        else:
            log.warning("checkpoint has %d sampler streams for %d processes: reseeding", len(streams), ctx.world_size)
            gen.manual_seed(sampler_seed(cfg.seed + n["step"], ctx.rank))

    def checkpoint(metrics) -> None:
        sums = [float(t) for t in ctx.all_gather(_param_checksum(flow))]
        if max(sums) != min(sums):
            raise RuntimeError(f"parameters differ across ranks at step {n['step']}: checksums {sums}")
        streams = [t.cpu() for t in ctx.all_gather(gen.get_state().to(device if "cuda" in device else "cpu"))]
        if ctx.is_main:
            save_checkpoint(ckpt_path, {"model": flow.state_dict(), "optimizer": opt.state_dict(), **n,
                                        "config": cfg.to_dict(), "rng": {"sampler": streams},
                                        "extra": task.extra_state()})
            metrics.write(json.dumps({"step": n["step"], "event": "checkpoint", "param_checksums": sums}) + "\n")
            metrics.flush()
        ctx.barrier()

    if saved is not None:
        restore(saved)
        log.info("resumed %s at step %d (%.1f s trained)", run_dir, n["step"], n["elapsed"])

    show = ctx.is_main and (sys.stderr.isatty() if progress is None else progress)
    bar = tqdm(total=cfg.steps, initial=n["step"], disable=not show, desc="train", dynamic_ncols=True)
    consecutive_bad, loss_value = 0, float("nan")
    metrics = open(run_dir / "metrics.jsonl", "a") if ctx.is_main else open(os.devnull, "w")
    with metrics, _SignalFlag() as flag:
        clock = time.perf_counter()
        while True:
            # --minutes is a wall-clock budget of the loop: steps, skipped steps, evaluations and
            # checkpoints all count (start-up and resume loading do not)
            now = time.perf_counter()
            n["elapsed"] += now - clock
            clock = now
            sync = ctx.all_reduce(torch.tensor([n["elapsed"], float(flag.signum or 0)], dtype=torch.float64,
                                               device=device), "max")
            n["elapsed"] = float(sync[0])
            if _progress(cfg, n["step"], n["elapsed"]) >= 1.0:
                break
            if sync[1] > 0:
                checkpoint(metrics)
                bar.close()
                raise TrainingInterrupted(int(sync[1]), n["step"])
            lr = cfg.lr * n["lr_scale"] * _lr_factor(cfg, _progress(cfg, n["step"], n["elapsed"]))
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss = model(cfg.batch_size // ctx.world_size)
            ok = bool(ctx.all_reduce(torch.isfinite(loss.detach()).to(torch.float64).reshape(1), "min"))
            if ok:
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(flow.parameters(), cfg.grad_clip)
                ok = bool(torch.isfinite(grad_norm))  # gradients are already averaged over ranks
            if not ok:
                consecutive_bad += 1
                n["bad_steps"] += 1
                log.warning("step %d: non-finite loss or gradient, step skipped (%d in a row)", n["step"], consecutive_bad)
                if consecutive_bad >= cfg.max_bad_steps:
                    last = latest_checkpoint(run_dir)
                    if last is None:
                        raise FloatingPointError(
                            f"{consecutive_bad} consecutive non-finite steps before any checkpoint; lower lr (now {cfg.lr})"
                        )
                    elapsed = n["elapsed"]  # time spent stays spent
                    restore(load_checkpoint(last, cfg.to_dict(), device, config_cls))
                    n["elapsed"] = elapsed
                    n["lr_scale"] *= 0.5
                    n["rollbacks"] += 1
                    consecutive_bad = 0
                    log.warning("rolled back to %s (step %d), learning rate scaled by %g", last, n["step"], n["lr_scale"])
                    metrics.write(json.dumps({"step": n["step"], "event": "rollback", "lr_scale": n["lr_scale"]}) + "\n")
                continue
            opt.step()
            task.after_step()
            consecutive_bad = 0
            n["step"] += 1
            step = n["step"]
            bar.update(1)
            if step % cfg.log_every == 0:
                loss_value = float(ctx.all_reduce(loss.detach().double().reshape(1))) / ctx.world_size
                rec = {"step": step, "time": round(n["elapsed"], 3), "loss": loss_value, **task.log_extras(),
                       "lr": lr, "grad_norm": float(grad_norm)}
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()  # `tail -f metrics.jsonl` follows a long run line by line
                bar.set_postfix(loss=f"{loss_value:.3f}", **({"ess": f"{rec['ess_batch']:.2f}"} if "ess_batch" in rec else {}))
            if step % cfg.eval_every == 0 and ctx.is_main and task.quick_eval is not None:
                metrics.write(json.dumps({"step": step, "time": round(n["elapsed"], 3),
                                          "eval": task.quick_eval(step)}) + "\n")
                metrics.flush()
            if step % cfg.ckpt_every == 0:
                checkpoint(metrics)
        if n["step"] % cfg.ckpt_every or n["step"] == 0:
            checkpoint(metrics)
    bar.close()
    return {"run_dir": str(run_dir), "step": n["step"], "elapsed": n["elapsed"], "loss": loss_value,
            "bad_steps": n["bad_steps"], "rollbacks": n["rollbacks"], "world_size": ctx.world_size}
