"""The main job (``rgflow demo``): train phi^4 8x8, evaluate, compare with HMC, write a report.

The run folder gets, besides the training files, ``report.json`` (evaluation, reference,
config), ``report.md`` (a short human summary) and ``demo.png`` (loss and ESS curves, sample
configurations, observables against the HMC reference).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from matplotlib.figure import Figure
import numpy as np
import torch

from rgflow.config import TrainConfig
from rgflow.mcmc.hmc import hmc
from rgflow.mcmc.run import summarize
from rgflow.stats import format_value_error as fmt
from rgflow.runs import open_run
from rgflow.train import evaluate, train

__all__ = ["DEMO_CONFIG", "run_demo", "next_run_dir", "read_metrics", "plot_run", "hmc_reference"]

log = logging.getLogger("rgflow")

#: The demo: phi^4 at the tutorial point (m2 = -4, lam = 8) on 8x8 with rgflow's default flow.
DEMO_CONFIG = {"action": "phi4", "L": 8, "params": {"m2": -4.0, "lam": 8.0}}


def next_run_dir(root: str | Path = "runs", stem: str = "demo") -> Path:
    """The first ``root/stem-N`` (N = 1, 2, ...) that does not exist yet."""
    root = Path(root)
    n = 1
    while (root / f"{stem}-{n}").exists():
        n += 1
    return root / f"{stem}-{n}"


def read_metrics(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """``(step records, eval records)`` from a run's ``metrics.jsonl``."""
    steps, evals = [], []
    for line in Path(run_dir, "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        (evals if "eval" in rec else steps if "loss" in rec else []).append(rec)
    return steps, evals


def hmc_reference(action, L: int, n: int = 2000, chains: int = 16, seed: int = 0) -> dict:
    """Observables of ``action`` from HMC (tau_int-corrected errors) as a JSON-ready dict."""
    res = hmc(action, L, n, chains=chains, seed=seed)
    return {**summarize(res, action, L), "seconds": res.seconds}


def plot_run(run_dir: Path, flow, evaluation: dict, reference: dict, path: Path) -> None:
    """Four panels: loss, ESS, samples, observables / reference."""
    steps, evals = read_metrics(run_dir)
    fig = Figure(figsize=(11, 8.5))
    ax = fig.subplots(2, 2)
    s = np.array([r["step"] for r in steps])
    ax[0, 0].plot(s, [r["loss"] for r in steps], lw=0.8, label="batch $F_{var}$ (loss)")
    ax[0, 0].axhline(-evaluation["lnZ"], color="k", ls="--", lw=1, label=r"$-\ln\hat Z$ (reweighted)")
    ax[0, 0].set(xlabel="step", ylabel="loss  [nats]", title="reverse-KL loss")
    lo = -evaluation["lnZ"] - 1
    losses = [r["loss"] for r in steps]  # empty when the budget ended before the first log line
    ax[0, 0].set_ylim(lo, max(lo + 5, np.percentile(losses, 98) if losses else lo + 5))
    ax[0, 0].legend()
    ax[0, 1].plot(s, [r["ess_batch"] for r in steps], lw=0.6, alpha=0.5, label="batch ESS/N")
    if evals:
        ax[0, 1].plot([r["step"] for r in evals], [r["eval"]["ess"] for r in evals], "o-", label="eval ESS/N")
    ax[0, 1].axhline(evaluation["ess"], color="k", ls="--", lw=1, label=f"final ESS/N = {evaluation['ess']:.3f}")
    ax[0, 1].set(xlabel="step", ylabel="ESS / N", ylim=(0, 1), title="effective sample size")
    ax[0, 1].legend()
    with torch.no_grad():
        x, _ = flow.sample(8, generator=torch.Generator(device=next(flow.parameters()).device).manual_seed(1))
    x = x[:, 0].cpu().numpy()
    vmax = np.abs(x).max()
    ax[1, 0].imshow(np.concatenate([np.concatenate(list(x[:4]), 1), np.concatenate(list(x[4:]), 1)], 0),
                    cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    L = x.shape[-1]
    for k in range(1, 4):
        ax[1, 0].axvline(k * L - 0.5, color="k", lw=1)
    ax[1, 0].axhline(L - 0.5, color="k", lw=1)
    ax[1, 0].set(title="flow samples", xticks=[], yticks=[])
    names = [n for n in ("abs_m", "chi", "chi_c", "binder", "e_link", "xi2") if n in reference["observables"]]
    pos = np.arange(len(names))
    for off, key, label in ((-0.15, "observables", "flow, reweighted"), (0.15, "observables_imh", "flow, IMH")):
        r = np.array([evaluation[key][n][0] / reference["observables"][n][0] for n in names])
        e = np.array([evaluation[key][n][1] / abs(reference["observables"][n][0]) for n in names])
        ax[1, 1].errorbar(pos + off, r, yerr=e, fmt="o", capsize=3, label=label)
    ref_err = np.array([reference["observables"][n][1] / abs(reference["observables"][n][0]) for n in names])
    ax[1, 1].errorbar(pos, np.ones(len(names)), yerr=ref_err, fmt="s", color="grey", capsize=3, label="HMC")
    ax[1, 1].axhline(1, color="k", lw=0.5)
    ax[1, 1].set_xticks(pos, names)
    ax[1, 1].set(ylabel="flow / HMC", title="observables vs HMC reference")
    ax[1, 1].legend()
    fig.suptitle(f"{evaluation['action']} {evaluation['params']}, L={evaluation['L']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _markdown(cfg: TrainConfig, summary: dict, ev: dict, ref: dict, n_params: int) -> str:
    lines = [
        f"# rgflow demo: {ev['action']} {ev['params']} on {ev['L']}x{ev['L']}",
        "",
        f"Flow: {cfg.flow}, {cfg.block} blocks {cfg.block_size}x{cfg.block_size}, {cfg.n_couplings} couplings/block, "
        f"width {cfg.hidden}, {n_params} parameters. Trained {summary['step']} steps in {summary['elapsed']:.0f} s "
        f"(batch {cfg.batch_size}, lr {cfg.lr}, {cfg.lr_schedule}).",
        "",
        f"| diagnostic (N = {ev['n_samples']}) | value |",
        "|---|---|",
        f"| ESS / N | {ev['ess']:.4f} |",
        f"| IMH acceptance | {ev['imh_acceptance']:.4f} |",
        f"| ln Z (reweighted) | {fmt(ev['lnZ'], ev['lnZ_err'])}"
        + "".join(f" — **warning:** {w}" for w in ev.get("lnZ_warnings", [])) + " |",
        f"| Pareto k of the weights (reliable below 0.7) | {ev['pareto_k']:.3f} |",
        f"| F_var (upper bound on -ln Z) | {fmt(ev['f_variational'], ev['f_variational_err'])} |",
        "",
        f"| observable | flow, reweighted | flow, IMH | HMC reference ({ref['n_samples']} trajectories) |",
        "|---|---|---|---|",
    ]
    for name in ev["observables"]:
        lines.append(f"| {name} | {fmt(*ev['observables'][name])} | {fmt(*ev['observables_imh'][name])} | "
                     f"{fmt(*ref['observables'][name])} |")
    lines += ["", "![demo](demo.png)", ""]
    return "\n".join(lines)


def run_demo(out: str | Path | None = None, minutes: float = 4.0, seed: int = 0, n_eval: int = 16384) -> Path:
    """Train the demo config for ``minutes``, evaluate it, and write the report into the run folder."""
    run_dir = Path(out) if out is not None else next_run_dir()
    cfg = TrainConfig(**DEMO_CONFIG, minutes=minutes, seed=seed)
    log.info("training %s %s on %dx%d for %.1f min -> %s", cfg.action, cfg.params, cfg.L, cfg.L, minutes, run_dir)
    summary = train(cfg, run_dir)
    run = open_run(run_dir, "flow")
    cfg, flow = run.config, run.model
    action = cfg.make_action()
    log.info("evaluating on %d samples", n_eval)
    ev = evaluate(flow, action, n_eval, seed=seed)
    log.info("HMC reference")
    ref = hmc_reference(action, cfg.L, seed=seed)
    n_params = sum(p.numel() for p in flow.parameters())
    report = {"config": cfg.to_dict(), "training": summary, "n_params": n_params, "evaluation": ev, "reference": ref}
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_run(run_dir, flow, ev, ref, run_dir / "demo.png")
    (run_dir / "report.md").write_text(_markdown(cfg, summary, ev, ref, n_params))
    return run_dir
