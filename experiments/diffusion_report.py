"""Gather the diffusion benchmark's cases into one JSON, draw its figures, print its tables."""
from __future__ import annotations

import json
import math
from pathlib import Path

from common import ROOT


def training_values(entry: dict) -> dict:
    """The training ensemble's own values of the compared observables with Gamma-method errors over its
    chains (``{"abs_m": [value, error], ..., "G1": ...}``): a model learns these, not the reference's."""
    from benchmark_diffusion import COMPARED, _G_rows
    from rgflow.ensemble import load_ensemble
    from rgflow.stats import gamma_method

    if not Path(entry["ensemble"]).exists() and "train_values" in entry:  # a case restored from the results JSON
        return entry["train_values"]
    out = {k: v for k, v in entry["train_hmc"]["observables"].items() if k in COMPARED}
    ens = load_ensemble(entry["ensemble"])
    G = _G_rows(ens.fields)
    G = G.reshape(int(ens.chain.max()) + 1, -1, G.shape[-1])  # save_chain writes chain after chain
    out.update({f"G{r}": [(g := gamma_method(G[:, :, r - 1])).value, g.error] for r in range(1, G.shape[-1] + 1)})
    return out


def rescore(res: dict) -> None:
    """Add to every ladder rung the deviations with the training data's statistical error in the budget:
    ``z_budget`` (model - reference) / sqrt(err_model^2 + err_ref^2 + err_data^2) -- a model trained on a
    finite ensemble carries that ensemble's fluctuation -- and ``z_data`` (model - training ensemble) /
    sqrt(err_model^2 + err_data^2), what the model failed to learn; and per ladder the smallest NFE by
    ``z_budget``."""
    from benchmark_diffusion import smallest_nfe

    for key, lad in res.get("ladder", {}).items():
        data = res["data"][key.rsplit("-", 2)[0]]
        ref, train = data["reference"], data["train_values"]
        for row in lad["ladder"]:
            obs = row["observables"]
            row["z_budget"] = {k: (obs[k][0] - ref[k][0]) / math.sqrt(obs[k][1] ** 2 + ref[k][1] ** 2 + train[k][1] ** 2)
                               for k in ref if k in obs and k in train}
            row["z_data"] = {k: (obs[k][0] - train[k][0]) / math.hypot(obs[k][1], train[k][1])
                             for k in train if k in obs}
            row["max_abs_z_budget"] = max(abs(v) for v in row["z_budget"].values())
            row["max_abs_z_data"] = max(abs(v) for v in row["z_data"].values())
        lad["smallest_nfe_budget"] = smallest_nfe(lad["ladder"], "max_abs_z_budget")


def gather(work: Path) -> dict:
    """``{"data": {"crit-L32": ...}, "train": {"crit-L32-rg-local": ...}, "ladder": ..., "exact": ..., "imh": ...}``."""
    out: dict = {}
    for path in sorted((work / "cases").glob("*.json")):
        stage, key = path.stem.split("-", 1)
        out.setdefault(stage, {})[key] = json.loads(path.read_text())
    for entry in out.get("data", {}).values():
        entry.pop("machine", None)
        entry["train_values"] = training_values(entry)
    rescore(out)
    return out


def _fmt(v, e) -> str:
    from rgflow.stats import format_value_error

    return format_value_error(v, e) if e > 0 else f"{v:.4g}"


def correctness_table(res: dict, nfe_pick: dict) -> str:
    """One row per model: steps, the observables at the picked NFE against the reference, max|z|."""
    names = ("abs_m", "chi", "binder", "e_link", "xi2")
    lines = ["| point, L | model | steps (samples) | NFE (lattice) | " + " | ".join(names) + " | max\\|z\\| incl. G(r) |",
             "|---" * (5 + len(names)) + "|"]
    for key, lad in res.get("ladder", {}).items():
        point_L = key.rsplit("-", 2)[0]
        schedule, net = key.rsplit("-", 2)[1:]
        ref = res["data"][point_L]["reference"]
        train = res["train"][key]
        want = nfe_pick.get(schedule, 16)
        row = min(lad["ladder"], key=lambda r: abs(r["nfe"] - want))
        lines.append(f"| {point_L} (ref.) | {res['data'][point_L]['reference_kind']} | | | "
                     + " | ".join(_fmt(*ref[k]) for k in names) + " | |")
        lines.append(f"| {point_L} | {schedule} / {net} | {train['steps']} ({train['samples_seen'] / 1e6:.2f} M) | "
                     f"{row['nfe']} ({row['lattice_nfe']:.1f}) | "
                     + " | ".join(f"{_fmt(*row['observables'][k])} ({row['z'][k]:+.1f}σ)" for k in names)
                     + f" | {row['max_abs_z']:.2f} |")
    return "\n".join(lines)


def _nfe(v) -> str:
    return "never" if v is None else f"{v:.3g}"


def nfe_table(res: dict) -> str:
    lines = ["| point, L | model | smallest lattice NFE with every observable within 2σ of the reference (from there "
             "on) | the same, the training data's error in the budget | converged (within 2σ of its top rung) | "
             "max\\|z\\| per rung (lattice NFE: vs reference / with data error / vs training data) |",
             "|---|---|---|---|---|---|"]
    for key, lad in res.get("ladder", {}).items():
        point_L = key.rsplit("-", 2)[0]
        schedule, net = key.rsplit("-", 2)[1:]
        rungs = ", ".join(f"{r['lattice_nfe']:.3g}: {r['max_abs_z']:.2f} / {r['max_abs_z_budget']:.2f} / "
                          f"{r['max_abs_z_data']:.2f}" for r in lad["ladder"] if r is lad["ladder"][0] or r["nfe"] != 1)
        lines.append(f"| {point_L} | {schedule} / {net} | {_nfe(lad['smallest_nfe'])} | {_nfe(lad['smallest_nfe_budget'])} "
                     f"| {_nfe(lad['converged_nfe'])} | {rungs} |")
    return "\n".join(lines)


def exact_table(res: dict) -> str:
    lines = ["| point, L | NFE (lattice) | s per exact sample | ESS / N (N) | ln Z (k̂) | F_var | IMH acc. |",
             "|---|---|---|---|---|---|---|"]
    for key, ev in res.get("exact", {}).items():
        lines.append(f"| {key} | {ev['nfe']} ({ev['lattice_nfe']:.1f}) | {ev['seconds_per_sample']:.3g} | "
                     f"{ev['ess']:.3g} ({ev['n_samples']}) | {_fmt(ev['lnZ'], ev['lnZ_err'])} ({ev['pareto_k']:.2f}) | "
                     f"{_fmt(ev['f_variational'], ev['f_variational_err'])} | {ev['imh_acceptance']:.3f} |")
    return "\n".join(lines)


def imh_table(res: dict) -> str:
    lines = ["| point, L | sampler | acceptance | τ_int(\\|m\\|) | τ_int(m) | s per indep. \\|m\\| | ⟨\\|m\\|⟩ | U₄ |",
             "|---|---|---|---|---|---|---|---|"]
    for key, rec in res.get("imh", {}).items():
        for name in ("hmc", "imh"):
            mc = rec[name]
            lines.append(f"| {key} | {name} | {mc['acceptance']:.3f} | {_fmt(*mc['tau_int']['abs_m'])} | "
                         f"{_fmt(*mc['tau_int']['m'])} | {mc['cost_per_independent_sample']['abs_m']['seconds']:.3g} | "
                         f"{_fmt(*mc['observables']['abs_m'])} | {_fmt(*mc['observables']['binder'])} |")
    return "\n".join(lines)


def plot_ladders(res: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    keys = list(res.get("ladder", {}))
    groups = sorted({k.rsplit("-", 2)[0] for k in keys}, key=lambda g: (int(g.rsplit("-", 1)[1]), g))
    ncols = min(4, len(groups))
    nrows = -(-len(groups) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.2 * nrows), sharey=True, squeeze=False)
    styles = {"rg": "-o", "standard": "--s", "ve": ":^"}
    ticks = [2, 4, 8, 16, 32, 64]
    for ax, group in zip(axes.flat, groups):
        for key in keys:
            if key.rsplit("-", 2)[0] != group:
                continue
            schedule, net = key.rsplit("-", 2)[1:]
            rows = res["ladder"][key]["ladder"]
            ax.plot([r["lattice_nfe"] for r in rows], [max(r["max_abs_z"], 0.1) for r in rows], styles[schedule],
                    label=f"{schedule} / {net}")
        ax.axhline(2, color="k", lw=0.8, ls=":")
        ax.set(xscale="log", yscale="log", title=group, xlim=(1.5, 90))
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.legend(fontsize=7)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("lattice NFE")
    for row in axes:
        row[0].set_ylabel("max |deviation| [σ]")
    fig.suptitle("max deviation over ⟨|m|⟩, χ, U₄, e_link, ξ₂, G(r ≤ L/2) from the reference, 4096 samples", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_coarse_to_fine(run: Path, ensemble: Path, path: Path, nfe: int = 4, seed: int = 0) -> None:
    """One sample of a trained ``rg`` model and one HMC field, block-averaged over 2^l x 2^l cells for
    every level l: the order in which the RG schedule generates them (the coarse field of level l is
    the stage generated l levels before the last)."""
    import matplotlib.pyplot as plt
    import torch

    from rgflow.diffusion.sampler import sample_fields
    from rgflow.ensemble import load_ensemble
    from rgflow.runs import open_run

    model = open_run(run, "diffusion", weights="ema").model
    x, _ = sample_fields(model, 1, nfe, "ode", torch.Generator().manual_seed(seed))
    hmc = torch.as_tensor(load_ensemble(ensemble).fields[:1], dtype=x.dtype)
    L = x.shape[-1]
    levels = list(range(L.bit_length() - 1, -1, -1))
    fig, axes = plt.subplots(2, len(levels), figsize=(1.6 * len(levels), 3.6), squeeze=False)
    for row, (field, name) in enumerate(((x, f"diffusion (rg, NFE {nfe})"), (hmc, "HMC"))):
        vmax = float(field.abs().max())
        for ax, lvl in zip(axes[row], levels):
            b = 2**lvl
            coarse = torch.nn.functional.avg_pool2d(field[:, :1], b).repeat_interleave(b, -1).repeat_interleave(b, -2)
            ax.imshow(coarse[0, 0].numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{L // b}x{L // b}" if row == 0 else "", fontsize=8)
        axes[row][0].set_ylabel(name, fontsize=8)
    fig.suptitle("coarse to fine: the field averaged over the cells of each RG level", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(work: Path, out: Path) -> dict:
    res = gather(work)
    out.write_text(json.dumps(res, indent=1) + "\n")
    plot_ladders(res, ROOT.parent / "figures" / "benchmark_diffusion.png")
    run = work / "crit-L32-rg-local"
    if run.is_dir():
        plot_coarse_to_fine(run, Path(res["data"]["crit-32"]["ensemble"]),
                            ROOT.parent / "figures" / "diffusion_coarse_to_fine.png")
    print(correctness_table(res, {"rg": 4, "standard": 64, "ve": 64}))
    print()
    print(nfe_table(res))
    print()
    print(exact_table(res))
    print()
    print(imh_table(res))
    return res
