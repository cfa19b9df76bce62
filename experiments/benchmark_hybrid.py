"""Exact diffusion sampling and the flow-diffusion hybrid against the flow alone and HMC.

For each case (``--cases``): an HMC ensemble of the target (the reference and the diffusion models'
training data, sign-flip and shift augmented), then at equal total training wall time ``T``:

* ``flow``      -- rgflow's default flow trained by reverse KL for ``T`` minutes;
* ``hybrid``    -- a flow trained for ``T - T_h`` minutes whose coarse latents (levels ``>= K``) are
  then modelled by a diffusion model trained ``T_h`` minutes on the ensemble's latents
  (``rgflow diffuse train --coords FLOW --levels K:``), the finer levels keeping the flow's prior;
* ``diffusion``, ``diffusion-standard`` -- (``--with-diffusion``) full-field diffusion models (the default
  local network; RG schedule: the Gaussian pyramid level by level; standard: white noise on the whole
  field) trained ``T`` minutes each, evaluated with their exact densities like every other model.

A case that ``shares`` another reuses its flows: ``ising-L8-all`` diffuses all levels (K = 0) of the
Ising flow's latents, ``hop-L16-lhmc`` trains the hop-L16 hybrid's diffusion on latent-HMC chains of its
own flow (``rgflow mcmc FLOW --sampler latent-hmc --out``) instead of the HMC ensemble.

Every model is judged by the same code (``rgflow eval`` / ``rgflow diffuse eval``: ESS, ln Z with
Pareto k, F_var, IMH acceptance) and by independence-Metropolis chains (``rgflow mcmc RUN --sampler
imh``: tau_int(|m|) and seconds per independent sample, the likelihood included), against HMC.

    OMP_NUM_THREADS=1 taskset -c 0 python experiments/benchmark_hybrid.py --cases hop-L32 --with-diffusion
    OMP_NUM_THREADS=1 taskset -c 1 python experiments/benchmark_hybrid.py --cases hop-L16,hop-L16-lhmc,ising-L8-all \\
        --with-diffusion
    OMP_NUM_THREADS=1 taskset -c 1 python experiments/benchmark_hybrid.py --cases ising-L8,ising-L16
    python experiments/benchmark_hybrid.py --report
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_output_arguments, machine, rgflow_cli  # noqa: E402

ISING_TC = 2.269185314213022
HOP = ["--action", "phi4-hopping", "--kappa", 0.2705, "--lam", 0.022]
CASES = {
    # physics flags, minutes T, hybrid minutes T_h, first diffused level K, NFE of the hybrid;
    # full_samples: exact samples of a full-field diffusion model (eval); full_chains: its IMH chains
    # (steps, chains), by default full_samples proposals in 4 chains
    "hop-L16": {"physics": [*HOP, "--L", 16], "minutes": 9.0, "hybrid_minutes": 3.0, "levels": 2, "nfe": 15,
                "full_samples": 4096},
    "hop-L32": {"physics": [*HOP, "--L", 32], "minutes": 12.0, "hybrid_minutes": 4.0, "levels": 3, "nfe": 15,
                "full_samples": 1024, "full_chains": (256, 4)},
    "ising-L8": {"physics": ["--action", "ising", "--L", 8, "--T", ISING_TC],
                 "minutes": 5.0, "hybrid_minutes": 2.0, "levels": 1, "nfe": 15},
    "ising-L16": {"physics": ["--action", "ising", "--L", 16, "--T", ISING_TC],
                  "minutes": 6.0, "hybrid_minutes": 2.0, "levels": 2, "nfe": 15},
    # cases that reuse another case's flows (and ensemble): only their hybrid is new
    # latent diffusion over all levels on the ising-L8 flows and ensemble
    "ising-L8-all": {"physics": ["--action", "ising", "--L", 8, "--T", ISING_TC], "shares": "ising-L8",
                     "hybrid": "hybrid-K0", "minutes": 5.0, "hybrid_minutes": 2.0, "levels": 0, "nfe": 15,
                     "full_samples": 512},
    # the hop-L16 hybrid trained on latent-HMC chains of its own flow instead of the HMC ensemble
    "hop-L16-lhmc": {"physics": [*HOP, "--L", 16], "shares": "hop-L16", "hybrid": "hybrid-lhmc",
                     "data": "latent-hmc", "minutes": 9.0, "hybrid_minutes": 3.0, "levels": 2, "nfe": 15},
}
SCHEDULES = {"diffusion": "rg", "diffusion-standard": "standard"}
OBS = "abs_m"


def _ensemble(name: str, c: dict, work: Path, seed: int) -> tuple[Path, dict]:
    """The diffusion models' training data: the case's HMC ensemble (also the reference), or latent-HMC
    chains of the hybrid's own flow (``data: latent-hmc``, exact for the target through the flow)."""
    if c.get("data") == "latent-hmc":
        ens = work / "latent-hmc.npz"
        print(f"[{name}] latent-HMC ensemble of the hybrid's flow", flush=True)
        t0 = time.perf_counter()
        mc = rgflow_cli(["mcmc", work / "hybrid-flow", "--sampler", "latent-hmc", "--n", 600, "--chains", 16,
                         "--warmup", 100, "--save-every", 2, "--seed", seed, "--json",
                         *([] if ens.exists() else ["--out", ens])])
        return ens, {**mc, "wall_seconds": time.perf_counter() - t0}
    ens = work / "hmc.npz"
    print(f"[{name}] HMC ensemble", flush=True)
    return ens, rgflow_cli(["mcmc", "--sampler", "hmc", *c["physics"], "--n", 1500, "--chains", 16, "--warmup", 300,
                            "--save-every", 5, "--seed", seed, "--json", *([] if ens.exists() else ["--out", ens])])


def _train(name: str, c: dict, work: Path, ens: Path, seed: int, with_diffusion: bool) -> dict:
    """Train what is missing at equal total time ``T``; returns ``{model: eval command}``."""
    T, Th = c["minutes"], c["hybrid_minutes"]
    if "shares" not in c:
        for run, minutes in (("flow", T), ("hybrid-flow", T - Th)):
            if not (work / run / "checkpoint.pt").exists():
                print(f"[{name}] training {run} for {minutes} min", flush=True)
                rgflow_cli(["train", *c["physics"], "--minutes", minutes, "--seed", seed, "--out", work / run])
    hybrid = work / c.get("hybrid", "hybrid")
    if not (hybrid / "checkpoint.pt").exists():
        print(f"[{name}] training the hybrid's diffusion (levels >= {c['levels']}) for {Th} min", flush=True)
        rgflow_cli(["diffuse", "train", "--coords", work / "hybrid-flow", "--levels", f"{c['levels']}:", "--data", ens,
                    "--minutes", Th, "--seed", seed, "--out", hybrid])
    models = {"hybrid": ["diffuse", "eval", hybrid, "--nfe", c["nfe"]]}
    if "shares" in c:
        return models
    models = {"flow": ["eval", work / "flow"], "hybrid-flow": ["eval", work / "hybrid-flow"], **models}
    for model, schedule in SCHEDULES.items() if with_diffusion else ():
        if not (work / model / "checkpoint.pt").exists():
            print(f"[{name}] training the full-field diffusion model ({schedule} schedule) for {T} min", flush=True)
            rgflow_cli(["diffuse", "train", "--data", ens, "--schedule", schedule, "--minutes", T, "--seed", seed,
                        "--out", work / model])
        models[model] = ["diffuse", "eval", work / model, "--nfe", c["nfe"]]
    return models


def _run_case(name: str, root: Path, seed: int, with_diffusion: bool, chains: int, n_imh: int) -> dict:
    """Train and measure one case; outputs that exist already are reused, not retrained."""
    c = CASES[name]
    work = root / c.get("shares", name)
    work.mkdir(parents=True, exist_ok=True)
    rec: dict = {"config": {k: v for k, v in c.items() if k != "physics"}, "physics": [str(a) for a in c["physics"]]}
    ens, rec["latent-hmc-data" if c.get("data") == "latent-hmc" else "hmc"] = _ensemble(name, c, work, seed)
    for model, args in _train(name, c, work, ens, seed, with_diffusion).items():
        # the exact density costs D backward passes per network evaluation: D = L^2 for full-field models
        full_field = model.startswith("diffusion") or (model == "hybrid" and c["levels"] == 0)
        n = c["full_samples"] if full_field else 4096
        t0 = time.perf_counter()
        rec[model] = {"eval": rgflow_cli([*args, "--samples", n, "--seed", seed, "--json"])}
        rec[model]["eval_seconds_per_sample"] = (time.perf_counter() - t0) / n
        ev = rec[model]["eval"]
        print(f"[{name}] {model}: ESS {ev['ess']:.4f}, IMH acc {ev['imh_acceptance']:.3f}, lnZ {ev['lnZ']:.4f}"
              f"({ev['lnZ_err']:.4f}) k {ev['pareto_k']:.2f}, F_var {ev['f_variational']:.4f}"
              + (f", F_var - F_exact {ev['kl']:.4f}" if "kl" in ev else ""), flush=True)
        if model == "hybrid-flow":
            continue
        run = args[2] if args[0] == "diffuse" else args[1]
        steps, n_chains = c.get("full_chains", (n // 4, 4)) if full_field else (n_imh, chains)
        extra = ["--nfe", c["nfe"]] if args[0] == "diffuse" else []
        mc = rgflow_cli(["mcmc", run, "--sampler", "imh", "--n", steps, "--chains", n_chains, "--seed", seed, *extra,
                         "--json"])
        rec[model]["imh"] = mc
        print(f"[{name}] {model} IMH: acceptance {mc['acceptance']:.3f}, tau_int(|m|) {mc['tau_int'][OBS]}, "
              f"{mc['cost_per_independent_sample'][OBS]['seconds']:.3g} s per independent |m|", flush=True)
    if "hmc" in rec:
        hmc = rec["hmc"]
        print(f"[{name}] HMC: tau_int(|m|) {hmc['tau_int'][OBS]}, "
              f"{hmc['cost_per_independent_sample'][OBS]['seconds']:.3g} s per independent |m|", flush=True)
    return rec


def _figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in CASES if n in results]  # the cases in the order CASES lists them
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    models = ["flow", "hybrid", *SCHEDULES]
    for k, model in enumerate(models):
        xs = [i + 0.2 * (k - 1.5) for i, n in enumerate(names) if model in results[n]]
        rs = [results[n][model] for n in names if model in results[n]]
        if not rs:
            continue
        # hatched: fewer than 100 samples (ESS at or near its 1/N floor, acceptance from a handful)
        few = ["//" if r["eval"]["n_samples"] < 100 else None for r in rs]
        colour = f"C{k}"
        for ax, key in ((axes[0], "ess"), (axes[1], "imh_acceptance")):
            for x, r, h in zip(xs, rs, few):
                ax.bar(x, r["eval"][key], 0.19, color=colour, hatch=h, edgecolor="k" if h else colour)
        sec = [r["imh"]["cost_per_independent_sample"][OBS]["seconds"] if "imh" in r else float("nan") for r in rs]
        axes[2].bar(xs, sec, 0.19, color=colour, label=model)
    axes[0].bar(0, 0, 0, color="w", edgecolor="k", hatch="//", label="< 100 samples")
    hmc = [results[n]["hmc"]["cost_per_independent_sample"][OBS]["seconds"] if "hmc" in results[n] else float("nan")
           for n in names]
    axes[2].scatter(range(len(names)), hmc, marker="_", s=900, color="k", label="HMC", zorder=3)
    for ax, title in zip(axes, ("ESS / N", "IMH acceptance", "seconds per independent |m| sample")):
        ax.set_xticks(range(len(names)), names, rotation=25, fontsize=8)
        ax.set_title(title, fontsize=10)
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _table(results: dict) -> str:
    """The docs' markdown table: one row per case and model (HMC first), as measured."""
    from rgflow.stats import format_value_error as fmt

    rows = ["| case | model | ESS (N) | ln Z (k) | F_var | F_var − F_exact | IMH acc. (eval / chain) "
            "| τ_int(\\|m\\|) | s / indep. \\|m\\| | ⟨\\|m\\|⟩ (chain) |", "|---" * 10 + "|"]
    for name, res in results.items():
        if "hmc" in res:
            h = res["hmc"]
            rows.append(f"| {name} | HMC | | | | | {h['acceptance']:.3f} | {fmt(*h['tau_int'][OBS])} "
                        f"| {h['cost_per_independent_sample'][OBS]['seconds']:.3g} | {fmt(*h['observables'][OBS])} |")
        for model in ("flow", "hybrid-flow", "hybrid", *SCHEDULES):
            if model not in res or "eval" not in res[model]:
                continue
            ev, mc = res[model]["eval"], res[model].get("imh")
            err = ev.get("f_variational_err", float("nan"))
            kl = fmt(ev["kl"], err) if "kl" in ev else ""
            chain = (f"{mc['acceptance']:.3f} | {fmt(*mc['tau_int'][OBS])} | "
                     f"{mc['cost_per_independent_sample'][OBS]['seconds']:.3g} | {fmt(*mc['observables'][OBS])}"
                     if mc else "— | — | — | —")
            rows.append(f"| {name} | {model} | {ev['ess']:.3g} ({ev['n_samples']}) | {fmt(ev['lnZ'], ev['lnZ_err'])} "
                        f"({ev['pareto_k']:.2f}) | {fmt(ev['f_variational'], err)} | {kl} "
                        f"| {ev['imh_acceptance']:.3f} / {chain} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_output_arguments(p, "hybrid")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--with-diffusion", action="store_true", help="also the full-field diffusion model (slow)")
    p.add_argument("--chains", type=int, default=8)
    p.add_argument("--imh-steps", type=int, default=512)
    args = p.parse_args()
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.exists() else {"results": {}}
    if not args.report:
        for name in args.cases.split(","):
            res = _run_case(name, Path(args.work), args.seed, args.with_diffusion, args.chains, args.imh_steps)
            record = json.loads(out.read_text()) if out.exists() else {"results": {}}  # another process may have written
            record["results"][name] = {**record["results"].get(name, {}), **res}  # keeps models not re-run
            record["machine"] = machine()
            out.write_text(json.dumps(record, indent=1) + "\n")
    _figure(record["results"], Path(args.figure))
    print(_table(record["results"]))


if __name__ == "__main__":
    main()
