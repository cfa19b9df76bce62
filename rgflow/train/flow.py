"""The flow family: rgflow's normalizing flows trained by reverse KL from an action (or forward KL on
an ensemble), through the one training loop (:func:`~rgflow.train.loop.run_loop`).

* :func:`build_model` -- the flow a :class:`~rgflow.config.TrainConfig` describes (hierarchical MERA or
  TEBD, or the flat baseline; the exact symmetrised mixture when ``mixture`` is set);
* :func:`train` -- its training run; ``--init-from`` grows it from a trained smaller flow
  (:func:`init_from_run`);
* :data:`RUN_FAMILY` -- how :func:`rgflow.runs.open_run` reads a flow run folder.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from rgflow.config import TrainConfig
from rgflow.flows.base import device_of
from rgflow.flows.flat import build_flat_flow
from rgflow.flows.rgflow import FieldFlow, build_flow
from rgflow.layout import Layout
from rgflow.physics.models import ACTION_PARAMS
from rgflow.runs import RunFamily, open_run
from rgflow.stats import effective_sample_size
from rgflow.train.diagnostics import weight_summary
from rgflow.train.distributed import DistContext, sampler_seed
from rgflow.train.loop import Task, run_loop
from rgflow.train.loss import ForwardKL, ReverseKL

__all__ = ["build_model", "train", "init_from_run", "RUN_FAMILY"]

log = logging.getLogger("rgflow")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def build_model(cfg: TrainConfig, device: str | None = None) -> FieldFlow:
    """The flow a config describes, in the config's dtype and device (or ``device``)."""
    channels = ACTION_PARAMS[cfg.action][1]
    if cfg.flow == "flat":
        flow = build_flat_flow(cfg.L, channels, n_layers=cfg.n_couplings, hidden=(cfg.hidden,) * cfg.layers)
    else:
        layout = Layout(cfg.L, block_size=cfg.block_size, kind=cfg.flow, depth=cfg.depth, repeats=cfg.repeats)
        flow = build_flow(layout, channels, cfg.block, cfg.n_couplings, cfg.hidden, cfg.layers, cfg.prior,
                          cfg.learn_level_scale, num_bins=cfg.num_bins, tail_bound=cfg.tail_bound,
                          equivariance=cfg.equivariance, ode_method=cfg.ode_method, ode_steps=cfg.ode_steps,
                          ode_levels=cfg.ode_levels, ode_checkpoint=cfg.ode_checkpoint, conv_finest=cfg.conv_finest,
                          conv_coupling=cfg.conv_coupling)
    if cfg.mixture:
        from rgflow.flows.symmetrize import SymmetrizedFlow, check_invariance

        check_invariance(cfg.make_action(), cfg.mixture, cfg.L, channels)
        flow = SymmetrizedFlow(flow, cfg.mixture)
    return flow.to(dtype=_DTYPES[cfg.dtype], device=device or cfg.device)


#: config keys that must agree between a run and the run it starts from (``--init-from``)
_TRANSFER_KEYS = ("action", "flow", "block", "block_size", "n_couplings", "hidden", "layers", "repeats", "depth",
                  "num_bins", "tail_bound", "prior", "learn_level_scale", "equivariant", "conv_finest",
                  "conv_coupling")


def init_from_run(cfg: TrainConfig, flow: torch.nn.Module) -> dict:
    """Copy the flow of the run ``cfg.init_from`` (a smaller lattice) into ``flow`` (:func:`rgflow.flows.transfer.grow_flow`).

    Raises:
        RunFolderError / ValueError: in one line, naming the folder and what differs.
    """
    from rgflow.flows.transfer import grow_flow, level_offset

    source = open_run(cfg.init_from, "flow", device=str(device_of(flow)))
    src_cfg, src_flow = source.config, source.model
    diff = [f"{k}={getattr(src_cfg, k)!r} there, {getattr(cfg, k)!r} here" for k in _TRANSFER_KEYS
            if getattr(src_cfg, k) != getattr(cfg, k)]
    if diff:
        raise ValueError(f"--init-from {cfg.init_from}: the architecture must match (L may grow by a power of 2, "
                         f"couplings may differ); " + "; ".join(diff))
    try:
        level_offset(src_cfg.L, cfg.L)
    except ValueError as exc:
        raise ValueError(f"--init-from {cfg.init_from}: {exc}") from None
    if cfg.block == "conv":  # one stack for every level: the state dict does not depend on L
        flow.load_state_dict(src_flow.state_dict())
        log.info("initialised from %s (L=%d -> %d, the same weights)", cfg.init_from, src_cfg.L, cfg.L)
        return {"offset": level_offset(src_cfg.L, cfg.L), "copied": "all"}
    info = grow_flow(src_flow, flow, cfg.init_finest)
    log.info("initialised from %s (L=%d -> %d, levels shifted by %d)", cfg.init_from, src_cfg.L, cfg.L, info["offset"])
    return info


@torch.no_grad()
def _quick_eval(flow: FieldFlow, action, n: int, seed: int) -> dict:
    gen = torch.Generator(device=next(flow.parameters()).device).manual_seed(seed)
    x, log_q = flow.sample(n, generator=gen)
    return weight_summary(log_q, action(x), action.lnZ_offset(x.shape[-1]))


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
    batches = FieldBatches(fields[train_idx], gen, shift=True, sign=True)  # every action is Z2-invariant
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


def _load(cfg: TrainConfig, state: dict, device: str) -> FieldFlow:
    flow = build_model(cfg, device)
    flow.load_state_dict(state["model"])
    return flow


RUN_FAMILY = RunFamily("flow", "rgflow train / eval / sample / mcmc", TrainConfig, _load)
