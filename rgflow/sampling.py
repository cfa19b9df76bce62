"""Sampling a trained run or an action, as the command line does it, as plain functions.

* :func:`sample_run` -- independent samples of a trained flow with ``ln q`` and ``S`` into an ``.npz``
  (``rgflow sample``);
* :func:`run_chains` -- Markov chains on an action (physical samplers) or through a trained run (flow
  IMH, latent HMC / Metropolis; a diffusion run's IMH), summarised with the Gamma-method, optionally
  saved with their autocorrelation figure (``rgflow mcmc``).
"""
from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["sample_run", "run_chains", "parse_discard"]


def sample_run(run: str | Path, n: int, out: str | Path, seed: int = 0) -> Path:
    """Draw ``n`` samples of a trained flow run into ``out`` (:func:`rgflow.ensemble.save_flow_samples`)."""
    from rgflow.ensemble import check_npz_path, save_flow_samples
    from rgflow.runs import open_run
    from rgflow.train.diagnostics import draw

    if n < 1:
        raise ValueError(f"-n (number of samples) must be a positive integer, got {n}")
    check_npz_path(out)
    opened = open_run(run, "flow")
    cfg, flow, state, action = opened.config, opened.model, opened.state, opened.action
    x, log_q, S = draw(flow, action, n, generator=torch.Generator(device=cfg.device).manual_seed(seed))
    return save_flow_samples(out, x, log_q, S, action, cfg.L, int(state["step"]))


def parse_discard(value: str | int, n: int) -> int | str:
    """``"auto"`` or an integer in ``[0, n - 4]`` (``--discard``)."""
    if value == "auto":
        return value
    try:
        k = int(value)
    except ValueError:
        k = -1
    if not 0 <= k <= n - 4:
        raise ValueError(f"--discard must be 'auto' or an integer in [0, n - 4] = [0, {n - 4}], got {value!r}")
    return k


def run_chains(sampler: str, run: str | Path | None = None, physics: dict | None = None, n: int = 2000,
               chains: int = 16, seed: int = 0, warmup: int = 200, discard: str | int = "auto",
               n_leapfrog: int = 10, step_size: float | None = None, device: str = "cpu", nfe: int = 16,
               weights: str = "ema", out: str | Path | None = None, save_every: int = 10) -> dict:
    """Run ``chains`` chains of ``sampler`` and return the JSON summary (:func:`rgflow.mcmc.run.summarize`,
    plus ``action`` and ``L``). ``run``: a trained run folder (its physics; needed by the flow samplers,
    a diffusion run supports ``imh``); otherwise ``physics`` (``action``, ``L`` and couplings) names the
    target. With ``out`` every ``save_every``-th state is written to that ``.npz`` with the figure beside it."""
    from rgflow.ensemble import check_npz_path, save_chain
    from rgflow.layout import Layout
    from rgflow.mcmc.run import plot_autocorrelation, run_sampler, summarize
    from rgflow.physics.models import make_action
    from rgflow.runs import open_run

    physics = dict(physics or {})
    model = None
    if run is not None:
        if physics:
            raise ValueError(f"--{next(iter(physics))} cannot be combined with a run folder: the run fixes the physics")
        opened = open_run(run, ("flow", "diffusion"), device=device, nfe=nfe, weights=weights)
        if opened.kind == "diffusion" and sampler != "imh":
            raise ValueError(f"--sampler {sampler} needs a flow run; a diffusion run supports --sampler imh "
                             "(independent proposals from the probability-flow sampler with exact density)")
        model, action, L = opened.model, opened.action, opened.config.L
    else:
        action = make_action(physics.pop("action", "phi4"), **{k: v for k, v in physics.items() if k != "L"})
        L = physics.get("L", 8)
        Layout(L)  # the same lattice sizes as everywhere else
    out = check_npz_path(out) if out else None
    discard = parse_discard(discard, n)
    res = run_sampler(sampler, action, L, n, chains, seed, flow=model, keep_every=save_every if out is not None else 0,
                      warmup=warmup, n_leapfrog=n_leapfrog, step_size=step_size, device=device)
    summary = summarize(res, action, L, discard=discard)
    if out is not None:
        save_chain(res, out, action, L)
        plot_autocorrelation(res, summary, out.with_suffix(".png"))
    return summary
