"""One interface over all samplers: run, summarise (with cost per independent sample), plot.

Costs are per chain step: ``seconds_per_step = seconds / (n chains)`` (chains run vectorised),
``grad_evals_per_step`` (action or effective-action gradients). The cost of one independent
sample of an observable is ``2 tau_int`` steps. Statistics are Wolff's Gamma-method pooled over
chains (:func:`rgflow.physics.observables.chain_observables`): every observable has its own
``tau_int``, a ``reliable`` flag (chains of at least 50 tau_int), and the thermalisation cut
(``n_discarded`` over all chains like ``n_samples`` and ``n_used``; ``n_discarded_per_chain``) and
check (``thermalized``) are reported with it.
"""
from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure
import numpy as np

from rgflow.config import check_device
from rgflow.mcmc.base import ChainResult
from rgflow.mcmc.cluster import cluster
from rgflow.mcmc.hmc import hmc
from rgflow.mcmc.imh import flow_imh
from rgflow.mcmc.latent import latent_hmc, latent_local
from rgflow.mcmc.local import local_metropolis
from rgflow.physics.observables import chain_observables, derived_observables
from rgflow.physics.models import ACTION_PARAMS
from rgflow.stats import gamma_method

__all__ = ["SAMPLERS", "FLOW_SAMPLERS", "run_sampler", "flow_imh", "summarize", "plot_autocorrelation"]

SAMPLERS = ("local", "hmc", "cluster", "cluster-hmc", "imh", "latent-hmc", "latent-local")
FLOW_SAMPLERS = ("imh", "latent-hmc", "latent-local")


def run_sampler(sampler: str, action, L: int, n: int, chains: int = 16, seed: int = 0, flow=None,
                keep_every: int = 0, warmup: int = 200, progress: bool = False, n_leapfrog: int = 10,
                step_size: float | None = None, device: str = "cpu") -> ChainResult:
    """Run ``sampler`` (see :data:`SAMPLERS`); the flow samplers need a trained ``flow`` (on ``device``).

    Every ``keep_every``-th configuration of every chain is kept in ``result.configs`` (0: none).
    ``warmup`` unrecorded steps tune the step size (imh needs none: its proposals are independent).
    ``n_leapfrog`` and ``step_size`` (the initial step size, tuned in warm-up) apply to the HMC
    samplers (and cluster-hmc); ``step_size`` is the initial proposal width of the Metropolis
    samplers (and cluster). ``cluster`` on ``ising`` samples the Ising spins themselves
    (:mod:`rgflow.mcmc.cluster`).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")
    if n < 4 or chains < 1:
        raise ValueError(f"--n must be >= 4 and --chains >= 1, got n={n}, chains={chains}")
    if keep_every < 0:
        raise ValueError(f"--save-every must be >= 0 (0 keeps no configurations), got {keep_every}")
    if warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {warmup}")
    if n_leapfrog < 1 or (step_size is not None and not (math.isfinite(step_size) and step_size > 0)):
        raise ValueError(f"--leapfrog must be >= 1 and --step-size > 0, got {n_leapfrog} and {step_size}")
    check_device(device, "--device")
    kw = {"chains": chains, "seed": seed, "keep_every": keep_every}
    hmc_kw = {"n_leapfrog": n_leapfrog, **({"step_size": step_size} if step_size is not None else {})}
    width = {"width": step_size} if step_size is not None else {}
    if sampler in FLOW_SAMPLERS and flow is None:
        raise ValueError(f"sampler {sampler!r} needs a trained run (rgflow mcmc RUN --sampler {sampler})")
    if sampler == "local":
        return local_metropolis(action, L, n, warmup=warmup, progress=progress, device=device, **width, **kw)
    if sampler in ("cluster", "cluster-hmc"):
        return cluster(action, L, n, warmup=warmup, magnitudes="local" if sampler == "cluster" else "hmc",
                       step_size=step_size, n_leapfrog=n_leapfrog, progress=progress, device=device, **kw)
    if sampler == "hmc":
        return hmc(action, L, n, warmup=warmup, progress=progress, device=device, **hmc_kw, **kw)
    if sampler == "imh":
        return flow_imh(flow, action, n, **kw)
    if sampler == "latent-local":
        return latent_local(flow, action, n, warmup=warmup, progress=progress, **width, **kw)
    return latent_hmc(flow, action, n, warmup=warmup, progress=progress, **hmc_kw, **kw)


def summarize(res: ChainResult, action, L: int, discard: int | str = "auto") -> dict:
    """JSON-ready summary: observables (Gamma-method), tau_int per observable (in sampler steps)
    with ``reliable`` flags, the thermalisation cut and check, acceptance, divergences and costs."""
    chain = chain_observables(res.series, L, channels=action.channels, discard=discard)
    per_step = res.seconds / (res.n_steps * res.chains)
    return {
        "sampler": res.sampler,
        "action": action.name,
        "params": dict(action.params),
        "L": L,
        "chains": res.chains,
        "n_samples": chain.n_samples,
        "n_discarded": chain.n_discarded * res.chains,  # all chains, like n_samples and n_used
        "n_discarded_per_chain": chain.n_discarded,
        "n_used": chain.n_used,
        "thermalized": chain.thermalized,
        "thermalization_z": chain.thermalization_z,
        "acceptance": res.acceptance,
        "step_size": res.step_size,
        "divergences": res.divergences,
        "observables": {k: v.to_list() for k, v in chain.observables.items()},
        "tau_int": {k: v.to_list() for k, v in chain.tau_int.items()},
        "reliable": chain.reliable,
        "seconds_per_step": per_step,
        "grad_evals_per_step": res.grad_evals_per_step,
        "cost_per_independent_sample": {
            k: {"seconds": 2 * t.mean * per_step, "grad_evals": 2 * t.mean * res.grad_evals_per_step}
            for k, t in chain.tau_int.items()
        },
    }


def plot_autocorrelation(res: ChainResult, summary: dict, path: str | Path, max_lag: int = 200) -> None:
    """Normalised autocorrelation (pooled over chains, Gamma-method) of every observable, with tau_int."""
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    series = {k: v[:, summary["n_discarded_per_chain"]:] for k, v in res.series.items()}
    channels = ACTION_PARAMS[summary["action"]][1]
    for name, fn in derived_observables(summary["L"], channels).items():
        if name in ("chi_c", "xi2"):
            continue
        rho = gamma_method(series, fn).rho
        tau, _ = summary["tau_int"][name]
        ax.plot(np.arange(len(rho))[: max_lag + 1], rho[: max_lag + 1], label=f"{name}: τ_int = {tau:.2f}")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="sampler step", ylabel="ρ(t) (up to the Γ-method window)", xlim=(0, max_lag),
           title=f"{summary['sampler']} on {summary['action']} L={summary['L']} (acceptance {summary['acceptance']:.2f})")
    ax.set_xscale("symlog", linthresh=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
