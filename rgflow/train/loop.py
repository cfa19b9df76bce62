"""The one training loop: a plain function from a config to a run folder, with pluggable tasks.

:func:`run_loop` trains any :class:`Task` -- a model, a loss module ``forward(batch_size) -> loss``
and hooks -- under a :class:`~rgflow.config.LoopConfig`; :func:`train` is the reverse-KL flow
task, :func:`rgflow.diffusion.train.train_diffusion` the denoising-score-matching one.

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

from rgflow.config import TrainConfig
from rgflow.flows.base import device_of
from rgflow.flows.flat import build_flat_flow
from rgflow.flows.rgflow import FieldFlow, build_flow
from rgflow.layout import Layout
from rgflow.physics.models import ACTION_PARAMS
from rgflow.stats import effective_sample_size
from rgflow.train.checkpoint import FolderLock, latest_checkpoint, load_checkpoint, save_checkpoint
from rgflow.train.diagnostics import weight_summary
from rgflow.train.distributed import DistContext, init_distributed, sampler_seed
from rgflow.train.loss import ForwardKL, ReverseKL

__all__ = ["build_model", "train", "run_loop", "Task", "load_run", "load_run_state", "resume_config", "read_run_config",
           "TrainingInterrupted", "RunFolderError"]

log = logging.getLogger("rgflow")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class TrainingInterrupted(Exception):
    """Raised after a checkpoint was written on SIGINT (``exit_code`` 130) or SIGTERM (143)."""

    def __init__(self, signum: int, step: int):
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by signal {signum} at step {step}; checkpoint written, resume with --resume")


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (not a run, or already a run)."""


def build_model(cfg: TrainConfig, device: str | None = None) -> FieldFlow:
    """The flow a config describes, in the config's dtype and device (or ``device``)."""
    channels = ACTION_PARAMS[cfg.action][1]
    if cfg.flow == "flat":
        flow = build_flat_flow(cfg.L, channels, n_layers=cfg.n_couplings, hidden=(cfg.hidden,) * cfg.layers)
    else:
        layout = Layout(cfg.L, block_size=cfg.block_size, kind=cfg.flow, depth=cfg.depth, repeats=cfg.repeats)
        flow = build_flow(layout, channels, cfg.block, cfg.n_couplings, cfg.hidden, cfg.layers, cfg.prior,
                          cfg.learn_level_scale, num_bins=cfg.num_bins, tail_bound=cfg.tail_bound,
                          symmetry=cfg.symmetry, ode_method=cfg.ode_method, ode_steps=cfg.ode_steps,
                          ode_levels=cfg.ode_levels, ode_checkpoint=cfg.ode_checkpoint)
    if cfg.symmetrize:
        from rgflow.flows.symmetrize import SymmetrizedFlow, check_invariance

        check_invariance(cfg.make_action(), cfg.symmetrize, cfg.L, channels)
        flow = SymmetrizedFlow(flow, cfg.symmetrize)
    return flow.to(dtype=_DTYPES[cfg.dtype], device=device or cfg.device)


def read_run_config(run_dir: str | Path) -> dict:
    """The raw ``config.json`` of a run folder (``kind`` names its model family: ``"flow"``, the
    default of folders written before diffusion runs existed, or ``"diffusion"``)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise RunFolderError(f"{run_dir} is not a run folder (no config.json); create one with `rgflow train --out {run_dir}`")
    try:
        data = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise RunFolderError(f"{cfg_path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{cfg_path}: not a run configuration")
    if data.get("kind", "flow") == "flow":
        data.setdefault("symmetrize", None)  # folders from before symmetrised flows hold plain flows
    return data


def load_run_state(run_dir: str | Path, kind: str, config_cls, device: str | None = None, hint: str = ""):
    """``(config, checkpoint state)`` of a run folder of model family ``kind`` (``"diffusion"``,
    ``"images"``, ...), its config read through ``config_cls``; a folder of another kind, or one
    without a checkpoint, is a :class:`RunFolderError` (``hint`` says what to use instead)."""
    data = read_run_config(run_dir)
    found = data.get("kind", "flow")
    if found != kind:
        raise RunFolderError(f"{run_dir} is a {found} run, not a {kind} run{hint}")
    cfg = config_cls.from_dict(data, warn=False)
    if device is not None:
        cfg.device = device
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise RunFolderError(f"{run_dir} has no checkpoint yet (checkpoint.pt); train it first")
    return cfg, load_checkpoint(ckpt, cfg.to_dict(), cfg.device, config_cls)


def resume_config(run_dir: str | Path, kind: str, config_cls, overrides: dict):
    """The config to continue the ``kind`` run in ``run_dir`` with: its ``config.json`` updated by ``overrides``."""
    saved = read_run_config(run_dir)
    found = saved.get("kind", "flow")
    if found != kind:
        raise RunFolderError(f"cannot resume: {run_dir} is a {found} run, not a {kind} run")
    return config_cls.from_dict({**saved, **overrides}, warn=False)


def load_run(run_dir: str | Path, device: str | None = None) -> tuple[TrainConfig, FieldFlow, dict]:
    """Load ``(config, flow with trained weights, checkpoint state)`` from a flow run folder."""
    run_dir = Path(run_dir)
    data = read_run_config(run_dir)
    if data.get("kind", "flow") != "flow":
        tool = {"diffusion": "rgflow diffuse", "images": "rgflow images"}.get(data["kind"], "rgflow")
        raise RunFolderError(f"{run_dir} is a {data['kind']} run, not a lattice flow run; use `{tool} ...` for it")
    cfg = TrainConfig.from_dict({k: v for k, v in data.items() if k != "kind"}, warn=False)
    if device is not None:
        cfg.device = device
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise RunFolderError(f"{run_dir} has no checkpoint yet (checkpoint.pt); train it first")
    state = load_checkpoint(ckpt, cfg.to_dict(), map_location=cfg.device)
    flow = build_model(cfg)
    flow.load_state_dict(state["model"])
    return cfg, flow, state


#: config keys that must agree between a run and the run it starts from (``--init-from``)
_TRANSFER_KEYS = ("action", "flow", "block", "block_size", "n_couplings", "hidden", "layers", "repeats", "depth",
                  "num_bins", "tail_bound", "prior", "learn_level_scale", "symmetric")


def init_from_run(cfg: TrainConfig, flow: torch.nn.Module) -> dict:
    """Copy the flow of the run ``cfg.init_from`` (a smaller lattice) into ``flow`` (:func:`rgflow.flows.transfer.grow_flow`).

    Raises:
        RunFolderError / ValueError: in one line, naming the folder and what differs.
    """
    from rgflow.flows.transfer import grow_flow, level_offset

    src_cfg, src_flow, _ = load_run(cfg.init_from, device=str(device_of(flow)))
    diff = [f"{k}={getattr(src_cfg, k)!r} there, {getattr(cfg, k)!r} here" for k in _TRANSFER_KEYS
            if getattr(src_cfg, k) != getattr(cfg, k)]
    if diff:
        raise ValueError(f"--init-from {cfg.init_from}: the architecture must match (L may grow by a power of 2, "
                         f"couplings may differ); " + "; ".join(diff))
    try:
        level_offset(src_cfg.L, cfg.L)
    except ValueError as exc:
        raise ValueError(f"--init-from {cfg.init_from}: {exc}") from None
    info = grow_flow(src_flow, flow, cfg.init_finest)
    log.info("initialised from %s (L=%d -> %d, levels shifted by %d)", cfg.init_from, src_cfg.L, cfg.L, info["offset"])
    return info


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


@torch.no_grad()
def _quick_eval(flow: FieldFlow, action, n: int, seed: int) -> dict:
    gen = torch.Generator(device=next(flow.parameters()).device).manual_seed(seed)
    x, log_q = flow.sample(n, generator=gen)
    return weight_summary(log_q, action(x), action.lnZ_offset(x.shape[-1]))


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


def _flow_task(cfg: TrainConfig, ctx: DistContext, device: str) -> Task:
    """Reverse KL of the flow ``cfg`` describes against its action, or (``cfg.data``) forward KL on
    an ensemble's training split."""
    action = cfg.make_action()
    flow = build_model(cfg, device)
    gen = torch.Generator(device=device).manual_seed(sampler_seed(cfg.seed, ctx.rank))
    if cfg.data:
        return _forward_kl_task(cfg, flow, action, gen, device)
    loss_fn = ReverseKL(flow, action, cfg.path_gradient, generator=gen, kinetic_weight=cfg.ode_kinetic,
                      jacobian_weight=cfg.ode_jacobian)

    def log_extras() -> dict:
        log_w = torch.cat(ctx.all_gather(loss_fn.last_log_w)).double().cpu().numpy()
        return {"ess_batch": effective_sample_size(log_w)}

    return Task(flow, loss_fn, gen, quick_eval=lambda step: _quick_eval(flow, action, cfg.eval_samples, seed=step),
                log_extras=log_extras, initialise=(lambda: init_from_run(cfg, flow)) if cfg.init_from else lambda: None)


def _forward_kl_task(cfg: TrainConfig, flow: FieldFlow, action, gen: torch.Generator, device: str) -> Task:
    """Maximum likelihood on ``cfg.data``; every evaluation logs the held-out NLL per site (and the
    flow's ESS against the action, for comparison with reverse KL)."""
    from rgflow.ensemble import FieldBatches, load_ensemble, split_ensemble

    ens = load_ensemble(cfg.data)
    if (ens.action.name, dict(ens.action.params), ens.L) != (cfg.action, cfg.params, cfg.L):
        raise ValueError(f"--data {cfg.data}: the ensemble is {ens.action.name} {dict(ens.action.params)} L={ens.L}, "
                         f"the run is {cfg.action} {cfg.params} L={cfg.L}")
    fields = ens.fields.to(device=device, dtype=_DTYPES[cfg.dtype])
    train_idx, test_idx = split_ensemble(len(fields), cfg.holdout, cfg.seed)
    batches = FieldBatches(fields[train_idx], gen, shift=True, sign=action.sign_symmetric)
    held_out = fields[test_idx]
    V = cfg.L * cfg.L

    @torch.no_grad()
    def quick_eval(step: int) -> dict:
        nll = torch.cat([-flow.log_prob(held_out[i:i + 1024]) for i in range(0, len(held_out), 1024)]).double()
        return {"heldout_nll_per_site": float(nll.mean()) / V,
                "heldout_nll_per_site_err": float(nll.std() / len(nll) ** 0.5) / V, "n_heldout": len(nll),
                **_quick_eval(flow, action, cfg.eval_samples, seed=step)}

    return Task(flow, ForwardKL(flow, batches), gen, quick_eval=quick_eval)


def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = False, progress: bool | None = None) -> dict:
    """Train the flow ``cfg`` describes by reverse KL into ``run_dir``; with ``resume`` continue
    the run stored there. Runs data-parallel when launched by ``torchrun`` (module docstring).

    Returns:
        ``{"run_dir", "step", "elapsed", "loss", "bad_steps", "rollbacks", "world_size"}``.
    """
    return run_loop(cfg, run_dir, _flow_task, resume, progress)


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
