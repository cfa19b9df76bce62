"""Diffusion benchmark: NFE needed by the RG and the standard noise schedule, against HMC.

Stages (all by default, one after the other, on one torch thread):

1. ``data``: for hopping phi^4 (lam = 0.022) at the symmetric point kappa = 0.21 and at
   kappa_c = 0.2705, L = 16 and 32: an HMC training ensemble (32 chains, every 4th of 1500
   trajectories after 500 of warm-up: 12 000 fields) and an independent HMC reference (16 other
   chains, 2000 trajectories, Gamma-method errors).
2. ``train``: one diffusion model per schedule on each ensemble -- the same U-Net (width 32,
   depth 3), the same budget (``--minutes``, x1.25 at L = 32) and seed; Haar coordinates.
3. ``sample``: for NFE in a ladder (3 .. 127 network evaluations), 1024 (L = 16) / 512 (L = 32)
   fields from the PF-ODE (Heun); the deviation of <|m|>, chi, U_4, e_link and G(r) (r = 1 .. L/2,
   along the axes) in units of the combined error (a) from the HMC reference -- the smallest NFE
   from which on all agree within 2 sigma -- and (b) from the same model's samples at the top
   rung (the discretisation error alone: the NFE at which the sampler has converged to its model).

Usage::

    python experiments/benchmark_diffusion.py                 # everything (about 60 min)
    python experiments/benchmark_diffusion.py --report        # figures and table from the JSON
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import ROOT, add_output_arguments, machine  # noqa: E402

from rgflow.diffusion.sampler import sample_coords, sample_fields  # noqa: E402
from rgflow.diffusion.train import config_for_ensemble, load_diffusion_run, train_diffusion  # noqa: E402
from rgflow.ensemble import save_chain  # noqa: E402
from rgflow.mcmc import hmc  # noqa: E402
from rgflow.physics.models import make_action  # noqa: E402
from rgflow.physics.observables import chain_observables, estimate_observables, two_point  # noqa: E402
from rgflow.stats import format_value_error, gamma_method  # noqa: E402

LAM = 0.022
POINTS = {"sym": 0.21, "crit": 0.2705}
SIZES = (16, 32)
NFE_LADDER = (4, 8, 16, 32, 64, 128)
COMPARED = ("abs_m", "chi", "binder", "e_link")


def _G_rows(x: torch.Tensor) -> np.ndarray:
    """``G(r)`` per configuration for r = 1 .. L/2 (disconnected, averaged over both axes): ``[N, L/2]``."""
    G = two_point(x.double())
    L = G.shape[-1]
    return (0.5 * (G[:, 1 : L // 2 + 1, 0] + G[:, 0, 1 : L // 2 + 1])).cpu().numpy()


def make_data(point: str, L: int, work: Path, seed: int) -> dict:
    action = make_action("phi4-hopping", kappa=POINTS[point], lam=LAM)
    train_res = hmc(action, L, n=1500, chains=32, seed=seed, warmup=500, keep_every=4)
    path = work / f"{point}-L{L}.npz"
    save_chain(train_res, path, action, L)
    ref = hmc(action, L, n=2000, chains=16, seed=seed + 1000, warmup=500, keep_every=1)
    obs = chain_observables(ref.series, L)
    G = _G_rows(ref.configs.reshape(-1, 1, L, L)).reshape(16, 2000, -1)[:, obs.n_discarded:]
    G_est = [gamma_method(G[:, :, r]) for r in range(G.shape[-1])]
    return {"ensemble": str(path), "n_train": int(train_res.configs.shape[0] * train_res.configs.shape[1]),
            "reference": {k: v.to_list() for k, v in obs.observables.items()},
            "reference_reliable": obs.reliable, "reference_thermalized": obs.thermalized,
            "reference_G": [[g.value, g.error] for g in G_est], "reference_n_used": obs.n_used,
            "reference_tau_abs_m": obs.observables["abs_m"].tau_int}


def measure(x: torch.Tensor) -> dict:
    """Observables with errors of independent samples: the compared names, ``m`` and ``G(r)``."""
    est = estimate_observables(x.double())
    out = {k: est[k].to_list() for k in COMPARED + ("m",)}
    G = _G_rows(x)
    for r in range(1, G.shape[1] + 1):
        out[f"G{r}"] = [float(G[:, r - 1].mean()), float(G[:, r - 1].std(ddof=1) / math.sqrt(len(G)))]
    return out


def z_scores(obs: dict, ref: dict) -> dict:
    return {k: (obs[k][0] - ref[k][0]) / math.hypot(obs[k][1], ref[k][1]) for k in obs if k in ref}


def _max_z(z: dict) -> float:
    return max(abs(v) for k, v in z.items() if k != "m")


def hmc_reference(entry: dict) -> dict:
    return {**entry["reference"], **{f"G{r}": v for r, v in enumerate(entry["reference_G"], start=1)}}


def sample_ladder(run: Path, n: int, seed: int, entry: dict) -> list[dict]:
    _, model, _, _ = load_diffusion_run(run)
    rows, ref = [], hmc_reference(entry)
    for nfe in NFE_LADDER:
        t0 = time.perf_counter()
        x, used = sample_fields(model, n, nfe, "ode", torch.Generator().manual_seed(seed), batch_size=512)
        obs = measure(x)
        z = z_scores(obs, ref)
        rows.append({"nfe": used, "seconds": time.perf_counter() - t0, "observables": obs, "z": z, "max_abs_z": _max_z(z)})
        print(f"{run.name}: NFE {used:4d}  max|z| vs HMC {rows[-1]['max_abs_z']:6.2f}  z(m) {z['m']:+.2f}  "
              f"{rows[-1]['seconds']:.1f} s", flush=True)
    top = rows[-1]["observables"]
    for row in rows[:-1]:  # the discretisation error alone: against the model's own top rung
        row["max_abs_z_vs_top"] = _max_z(z_scores(row["observables"], top))
    rows[-1]["max_abs_z_vs_top"] = 0.0
    return rows


def smallest_nfe(rows: list[dict], bound: float = 2.0, key: str = "max_abs_z") -> int | None:
    """The smallest NFE from which on every rung agrees within ``bound`` sigma (None: never)."""
    ok = [r[key] < bound for r in rows]
    for i in range(len(rows)):
        if all(ok[i:]):
            return rows[i]["nfe"]
    return None


def plot_ladder(result: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, len(POINTS), figsize=(12, 4.2), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, point in zip(axes, POINTS):
        for L in SIZES:
            for schedule, style in (("rg", "-o"), ("standard", "--s")):
                rows = result["runs"].get(f"{point}-L{L}-{schedule}", {}).get("ladder")
                if rows:
                    ax.plot([r["nfe"] for r in rows], [r["max_abs_z"] for r in rows], style, label=f"L={L} {schedule} vs HMC")
                    ax.plot([r["nfe"] for r in rows[:-1]], [r["max_abs_z_vs_top"] for r in rows[:-1]], style, alpha=0.35,
                            label=f"L={L} {schedule} vs its NFE {rows[-1]['nfe']}")
        ax.axhline(2, color="k", lw=0.8, ls=":")
        ax.set(xscale="log", yscale="log", xlabel="NFE (network evaluations per sample)",
               title=f"hopping φ⁴ κ={POINTS[point]} ({'symmetric' if point == 'sym' else 'critical'})")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("max |deviation| from HMC [σ]")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_strip(result: dict, work: Path, path: Path, seed: int) -> None:
    """Coarse-to-fine: x(t) while sampling (RG vs standard, critical L = 32), and the per-level log-SNR."""
    runs = [(s, work / f"crit-L32-{s}") for s in ("rg", "standard")]
    runs = [(s, r) for s, r in runs if (r / "checkpoint.pt").exists()]
    if not runs:
        return
    fig = plt.figure(figsize=(13, 2.4 * len(runs) + 2.6))
    grid = fig.add_gridspec(len(runs) + 1, 7)
    for row, (schedule, run) in enumerate(runs):
        _, model, _, _ = load_diffusion_run(run)
        _, _, snaps = sample_coords(model.denoiser, model.schedule, model.coords, 1, 32, "ode",
                                    torch.Generator().manual_seed(seed), snapshots=6)
        for col, (t, v) in enumerate(snaps[:6] + [snaps[-1]] if len(snaps) < 7 else snaps[:7]):
            a = model.schedule.alpha_sigma(torch.tensor([t], dtype=v.dtype))[0]
            y = v * model.coords.sigma_map(a)  # back to the VP variable y_t
            x = model.coords.to_field(y)[0][0, 0].numpy()
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(x, cmap="RdBu_r", vmin=-2.5, vmax=2.5)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{schedule}: t = {t:.2f}", fontsize=8)
    ax = fig.add_subplot(grid[len(runs), :])
    for schedule, run in runs:
        _, model, _, _ = load_diffusion_run(run)
        t = torch.linspace(0, 1, 201, dtype=torch.float64)
        lam = model.schedule.logsnr(t).numpy()
        for level in range(lam.shape[1]):
            ax.plot(t, lam[:, level], "-" if schedule == "rg" else "--", color=f"C{level}",
                    label=f"{schedule} level {level}" if schedule == "rg" or level == 0 else None)
    ax.set(xlabel="t (sampling runs from t = 1 to 0)", ylabel="log-SNR per level")
    ax.legend(fontsize=7, ncol=4)
    fig.suptitle("coarse-to-fine generation: the RG schedule fixes the coarse levels first (critical φ⁴, L = 32)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(result: dict) -> str:
    lines = ["| point | L | schedule | train steps | NFE: all within 2σ of HMC | max\\|z\\| vs HMC at NFE 15 / 63 / 127 | "
             "NFE: converged (within 2σ of NFE 127) | z(⟨m⟩) at 127 |", "|---|---|---|---|---|---|---|---|"]
    for key, run in result["runs"].items():
        rows = run.get("ladder")
        if not rows:
            continue
        point, L, schedule = key.split("-")
        at = {r["nfe"]: r for r in rows}
        pick = [at.get(k, {}).get("max_abs_z", float("nan")) for k in (15, 63, 127)]
        lines.append(f"| {point} | {L[1:]} | {schedule} | {run['train_steps']} | {run['smallest_nfe']} | "
                     f"{pick[0]:.1f} / {pick[1]:.1f} / {pick[2]:.1f} | {run.get('converged_nfe')} | "
                     f"{rows[-1]['z']['m']:+.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stages", default="data,train,sample", help="comma-separated subset of data, train, sample")
    p.add_argument("--minutes", type=float, default=3.0, help="training budget per model at L = 16 (x1.25 at L = 32)")
    p.add_argument("--sizes", default="16,32")
    add_output_arguments(p, "diffusion")
    args = p.parse_args()
    stages, sizes = args.stages.split(","), [int(s) for s in args.sizes.split(",")]
    out, work = Path(args.out), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result = json.loads(out.read_text()) if out.exists() else {"data": {}, "runs": {}}

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")

    if not args.report:
        result["machine"] = machine()
        for point in POINTS:
            for L in sizes:
                key = f"{point}-L{L}"
                if "data" in stages:
                    result["data"][key] = make_data(point, L, work, args.seed)
                    ref = result["data"][key]["reference"]
                    print(f"{key}: HMC reference |m| {format_value_error(*ref['abs_m'])}, "
                          f"chi {format_value_error(*ref['chi'])}", flush=True)
                    save()
                for schedule in ("rg", "standard"):
                    run_key, run = f"{key}-{schedule}", work / f"{key}-{schedule}"
                    entry = result["runs"].setdefault(run_key, {})
                    if "train" in stages:
                        minutes = args.minutes * (1.25 if L == 32 else 1.0)
                        cfg = config_for_ensemble(result["data"][key]["ensemble"], noise_schedule=schedule,
                                                  minutes=minutes, seed=args.seed, eval_every=500)
                        shutil.rmtree(run, ignore_errors=True)
                        summary = train_diffusion(cfg, run)
                        entry.update(config=cfg.to_dict(), train_steps=summary["step"],
                                     train_seconds=summary["elapsed"])
                        save()
                    if "sample" in stages:
                        entry["ladder"] = sample_ladder(run, 1024 if L == 16 else 512, args.seed, result["data"][key])
                        entry["smallest_nfe"] = smallest_nfe(entry["ladder"])
                        entry["converged_nfe"] = smallest_nfe(entry["ladder"][:-1], key="max_abs_z_vs_top")
                        save()
        for point in POINTS:
            for L in sizes:
                for metric, ratio in (("smallest_nfe", "nfe_ratio"), ("converged_nfe", "converged_nfe_ratio")):
                    rg = result["runs"].get(f"{point}-L{L}-rg", {}).get(metric)
                    std = result["runs"].get(f"{point}-L{L}-standard", {}).get(metric)
                    result.setdefault(ratio, {})[f"{point}-L{L}"] = (std / rg) if rg and std else None
        save()
    plot_ladder(result, Path(args.figure))
    plot_strip(result, work, ROOT.parent / "figures" / "diffusion_coarse_to_fine.png", args.seed)
    print(markdown_table(result))
    print("NFE ratio standard / rg (vs HMC):", result.get("nfe_ratio"))
    print("NFE ratio standard / rg (converged):", result.get("converged_nfe_ratio"))


if __name__ == "__main__":
    main()
