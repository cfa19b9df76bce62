"""One interface over all samplers: run, summarise (with cost per independent sample), plot.

Costs are per chain step: ``seconds_per_step = seconds / (n chains)`` (chains run vectorised),
``grad_evals_per_step`` (action or effective-action gradients). The cost of one independent
sample of an observable is ``2 tau_int`` steps.
"""
from __future__ import annotations

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

__all__ = ["SAMPLERS", "FLOW_SAMPLERS", "run_sampler", "flow_imh", "summarize", "plot_autocorrelation"]

SAMPLERS = ("local", "hmc", "imh", "latent-hmc", "latent-local")
FLOW_SAMPLERS = ("imh", "latent-hmc", "latent-local")


@torch.no_grad()
def flow_imh(flow, action, n: int, chains: int = 16, seed: int = 0, batch_size: int = 4096,
             keep_every: int = 0) -> ChainResult:
    """Independence Metropolis with the flow's proposals, ``chains`` chains of ``n`` steps.

    With ``keep_every > 0`` all proposals are held (float32) until the accept/reject pass has
    chosen which ones every ``keep_every``-th chain state is.
    """
    gen = torch.Generator(device=next(flow.parameters()).device).manual_seed(seed)
    t0 = time.perf_counter()
    prims, log_w, proposals = [], [], []
    for start in range(0, n * chains, batch_size):
        x, log_q = flow.sample(min(batch_size, n * chains - start), generator=gen)
        log_w.append((-action(x) - log_q).double().cpu())
        prims.append(primaries(action.measurement_field(x, gen)))
        if keep_every:
            proposals.append(x.to("cpu", torch.float32))
    log_w = torch.cat(log_w).numpy().reshape(chains, n)
    prim = {k: np.concatenate([p[k] for p in prims]).reshape(chains, n) for k in prims[0]}
    series = {k: np.empty((chains, n)) for k in prim}
    kept = []
    acc = 0.0
    for c in range(chains):
        idx, a = independence_metropolis(log_w[c], seed=seed + c)
        acc += a / chains
        for k in prim:
            series[k][c] = prim[k][c, idx]
        if keep_every:
            kept.append(idx[::keep_every] + c * n)
    configs = torch.cat(proposals)[torch.as_tensor(np.stack(kept))] if keep_every else None
    return ChainResult("imh", series, acc, time.perf_counter() - t0, n, chains, action_evals=n, configs=configs,
                       keep_every=keep_every)


def run_sampler(sampler: str, action, L: int, n: int, chains: int = 16, seed: int = 0, flow=None,
                keep_every: int = 0, warmup: int = 200, progress: bool = False) -> ChainResult:
    """Run ``sampler`` (see :data:`SAMPLERS`); the flow samplers need a trained ``flow``.

    Every ``keep_every``-th configuration of every chain is kept in ``result.configs`` (0: none).
    ``warmup`` unrecorded steps tune the step size (imh needs none: its proposals are independent).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")
    if n < 4 or chains < 1:
        raise ValueError(f"--n must be >= 4 and --chains >= 1, got n={n}, chains={chains}")
    if keep_every < 0:
        raise ValueError(f"--save-every must be >= 0 (0 keeps no configurations), got {keep_every}")
    if warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {warmup}")
    kw = {"chains": chains, "seed": seed, "keep_every": keep_every}
    if sampler in FLOW_SAMPLERS and flow is None:
        raise ValueError(f"sampler {sampler!r} needs a trained run (rgflow mcmc RUN --sampler {sampler})")
    if sampler == "local":
        return local_metropolis(action, L, n, warmup=warmup, progress=progress, **kw)
    if sampler == "hmc":
        return hmc(action, L, n, warmup=warmup, progress=progress, **kw)
    if sampler == "imh":
        return flow_imh(flow, action, n, **kw)
    if sampler == "latent-local":
        return latent_local(flow, action, n, warmup=warmup, progress=progress, **kw)
    return latent_hmc(flow, action, n, warmup=warmup, progress=progress, **kw)


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
