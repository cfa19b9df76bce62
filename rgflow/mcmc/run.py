"""One interface over all samplers: run, summarise (with cost per independent sample), save, plot.

Costs are per chain step: ``seconds_per_step = seconds / (n chains)`` (chains run vectorised),
``grad_evals_per_step`` (action or effective-action gradients). The cost of one independent
sample of an observable is ``2 tau_int`` steps.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from rgflow.mcmc.base import ChainResult  # noqa: E402
from rgflow.mcmc.hmc import hmc, latent_hmc  # noqa: E402
from rgflow.mcmc.imh import independence_metropolis  # noqa: E402
from rgflow.mcmc.latent import latent_local  # noqa: E402
from rgflow.mcmc.local import local_metropolis  # noqa: E402
from rgflow.physics.observables import PRIMARY_OF, chain_observables, primaries  # noqa: E402
from rgflow.stats import autocorrelation  # noqa: E402

__all__ = ["SAMPLERS", "FLOW_SAMPLERS", "run_sampler", "flow_imh", "summarize", "save_chain", "plot_autocorrelation"]

SAMPLERS = ("local", "hmc", "imh", "latent-hmc", "latent-local")
FLOW_SAMPLERS = ("imh", "latent-hmc", "latent-local")


@torch.no_grad()
def flow_imh(flow, action, n: int, chains: int = 16, seed: int = 0, batch_size: int = 4096) -> ChainResult:
    """Independence Metropolis with the flow's proposals, ``chains`` chains of ``n`` steps."""
    gen = torch.Generator(device=next(flow.parameters()).device).manual_seed(seed)
    t0 = time.perf_counter()
    prims, log_w = [], []
    for start in range(0, n * chains, batch_size):
        x, log_q = flow.sample(min(batch_size, n * chains - start), generator=gen)
        log_w.append((-action(x) - log_q).double().cpu())
        prims.append(primaries(action.measurement_field(x, gen)))
    log_w = torch.cat(log_w).numpy().reshape(chains, n)
    prim = {k: np.concatenate([p[k] for p in prims]).reshape(chains, n) for k in prims[0]}
    series = {k: np.empty((chains, n)) for k in prim}
    acc = 0.0
    for c in range(chains):
        idx, a = independence_metropolis(log_w[c], seed=seed + c)
        acc += a / chains
        for k in prim:
            series[k][c] = prim[k][c, idx]
    return ChainResult("imh", series, acc, time.perf_counter() - t0, n, chains, action_evals=n)


def run_sampler(sampler: str, action, L: int, n: int, chains: int = 16, seed: int = 0, flow=None,
                progress: bool = False) -> ChainResult:
    """Run ``sampler`` (see :data:`SAMPLERS`); the flow samplers need a trained ``flow``."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")
    if n < 4 or chains < 1:
        raise ValueError(f"--n must be >= 4 and --chains >= 1, got n={n}, chains={chains}")
    if sampler in FLOW_SAMPLERS and flow is None:
        raise ValueError(f"sampler {sampler!r} needs a trained run (rgflow mcmc RUN --sampler {sampler})")
    if sampler == "local":
        return local_metropolis(action, L, n, chains=chains, seed=seed, progress=progress)
    if sampler == "hmc":
        return hmc(action, L, n, chains=chains, seed=seed, progress=progress)
    if sampler == "imh":
        return flow_imh(flow, action, n, chains=chains, seed=seed)
    if sampler == "latent-local":
        return latent_local(flow, action, n, chains=chains, seed=seed, progress=progress)
    return latent_hmc(flow, action, n, chains=chains, seed=seed, progress=progress)


def summarize(res: ChainResult, action, L: int) -> dict:
    """JSON-ready summary: observables, tau_int (in sampler steps), acceptance and costs."""
    est, taus = chain_observables(res.series, L)
    per_step = res.seconds / (res.n_steps * res.chains)
    return {
        "sampler": res.sampler,
        "action": action.name,
        "params": dict(action.params),
        "L": L,
        "chains": res.chains,
        "n_samples": res.n_steps * res.chains,
        "acceptance": res.acceptance,
        "step_size": res.step_size,
        "observables": {k: v.to_list() for k, v in est.items()},
        "tau_int": {k: v.to_list() for k, v in taus.items()},
        "seconds_per_step": per_step,
        "grad_evals_per_step": res.grad_evals_per_step,
        "cost_per_independent_sample": {
            k: {"seconds": 2 * t.mean * per_step, "grad_evals": 2 * t.mean * res.grad_evals_per_step}
            for k, t in taus.items()
        },
    }


def save_chain(res: ChainResult, path: str | Path, action, L: int) -> Path:
    """Write the chain atomically as ``.npz``: primaries ``[chains, n]``, final configurations, metadata."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"--out must name an .npz file, got {str(path)!r}")
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        final = res.final.detach().cpu().numpy() if res.final is not None else np.zeros(0)
        np.savez(tmp, **{f"series_{k}": v for k, v in res.series.items()}, final=final, sampler=res.sampler,
                 action=action.name, params=json.dumps(action.params), L=L, acceptance=res.acceptance)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def plot_autocorrelation(res: ChainResult, summary: dict, path: str | Path, max_lag: int = 200) -> None:
    """Normalised autocorrelation of the observables with tau_int (averaged over chains)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, prim in PRIMARY_OF.items():
        rho = np.mean([autocorrelation(c)[: max_lag + 1] for c in res.series[prim]], axis=0)
        tau = summary["tau_int"][name][0]
        ax.plot(np.arange(len(rho)), rho, label=f"{name}: τ_int = {tau:.2f}")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="sampler step", ylabel="ρ(t)", xlim=(0, max_lag),
           title=f"{summary['sampler']} on {summary['action']} L={summary['L']} (acceptance {summary['acceptance']:.2f})")
    ax.set_xscale("symlog", linthresh=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
