"""Diffusion benchmark: correctness against HMC and exact values, NFE at equal accuracy, exact densities.

Every case is a step of its own, resumable, one torch thread, its result a JSON file in
``--work/cases`` (so two processes pinned to the two cores can run different cases); ``--report``
gathers them into ``experiments/results/diffusion.json``, draws the figures and prints the tables.

* ``data POINT L`` -- an HMC training ensemble (the sampler of ``rgflow mcmc``: 64 chains, every
  ``keep``-th trajectory after 500 of warm-up; cold starts in the broken phase) and an independent
  reference (HMC chains, Gamma-method errors; for the free field the exact values).
* ``train POINT L SCHEDULE NET`` -- ``rgflow diffuse train`` on the ensemble for ``--minutes``.
* ``ladder POINT L SCHEDULE NET`` -- 4096 samples at each NFE of a ladder with the EMA weights
  (what ``rgflow diffuse sample`` uses): the deviation of <|m|>, chi, U_4, e_link, xi_2 and G(r),
  r = 1 .. L/2, in units of the combined error from the reference; the smallest NFE from which on
  all are within 2 sigma (NFE counted as evaluations of a network on the whole lattice).
* ``exact POINT L`` -- seconds per exact sample (``rgflow diffuse eval``) of the trained rg model.
* ``cost POINT L`` -- seconds per exact sample of untrained rg models by network depth (2, 3, 4).
* ``imh POINT L`` -- DM-MC (``rgflow mcmc RUN --sampler imh``) against HMC: acceptance, tau_int of
  |m| and m, seconds per independent |m|.

Usage::

    python experiments/benchmark_diffusion.py data crit 32
    python experiments/benchmark_diffusion.py train crit 32 rg local --minutes 15
    python experiments/benchmark_diffusion.py ladder crit 32 rg local
    python experiments/benchmark_diffusion.py train crit 32 rg local --depth 3   # run and case named local.d3
    python experiments/benchmark_diffusion.py --report
    python experiments/benchmark_diffusion.py --restore   # on a new machine, before adding cases
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from common import ROOT, machine, rgflow_cli

from rgflow.physics.exact import free_field_two_point
from rgflow.physics.observables import two_point

POINTS = {
    "free-xi2": ("free", {"m2": 0.25}),
    "free-xi5": ("free", {"m2": 0.04}),
    "sym": ("phi4-hopping", {"kappa": 0.21, "lam": 0.022}),
    "crit": ("phi4-hopping", {"kappa": 0.2708, "lam": 0.022}),
    "broken": ("phi4-hopping", {"kappa": 0.5, "lam": 0.022}),
}
#: (chains, recorded trajectories, keep every) of the training ensemble and (chains, trajectories) of the reference
HMC = {16: ((64, 2000, 4), (32, 10000)), 32: ((64, 6000, 12), (32, 10000)), 64: ((32, 4000, 8), (16, 4000))}
COMPARED = ("abs_m", "chi", "binder", "e_link", "xi2")
LADDER = {"rg": (1, 2, 4, 8, 16, 32, 64), "standard": (4, 8, 16, 32, 64, 128), "ve": (4, 8, 16, 32, 64, 128)}
N_SAMPLES = 4096


def _flags(params: dict) -> list[str]:
    return [a for k, v in params.items() for a in (f"--{k}", str(v))]


def _G_rows(x: torch.Tensor) -> np.ndarray:
    """``G(r)`` per configuration for r = 1 .. L/2 (averaged over both axes): ``[N, L/2]``."""
    G = two_point(x.double())
    L = G.shape[-1]
    return (0.5 * (G[:, 1 : L // 2 + 1, 0] + G[:, 0, 1 : L // 2 + 1])).cpu().numpy()


def free_reference(m2: float, L: int) -> dict:
    """Exact free-field values of the compared observables (zero error)."""
    G = free_field_two_point(L, m2)
    chi = float(G.sum())
    Gh = torch.fft.fft2(G).real
    xi2 = math.sqrt(float(Gh[0, 0]) / float(0.5 * (Gh[1, 0] + Gh[0, 1])) - 1) / (2 * math.sin(math.pi / L))
    ref = {"abs_m": [math.sqrt(2 * chi / (math.pi * L * L)), 0.0], "chi": [chi, 0.0], "binder": [0.0, 0.0],
           "e_link": [float(G[1, 0]), 0.0], "xi2": [xi2, 0.0]}
    ref.update({f"G{r}": [float(G[r, 0]), 0.0] for r in range(1, L // 2 + 1)})
    return ref


def _hmc(action, L: int, n: int, chains: int, seed: int, keep_every: int, cold: bool):
    """HMC chains (``rgflow mcmc --sampler hmc``'s sampler, 500 warm-up trajectories tuning the step size),
    from a hot start or, in the broken phase, a cold one: half the chains at ``+phi_0``, half at
    ``-phi_0``, the minimum of the uniform field's potential (from a hot start the chains freeze into
    domain walls that do not decay in any affordable run)."""
    from rgflow.mcmc.hmc import hmc, run_hmc

    if not cold:
        return hmc(action, L, n=n, chains=chains, seed=seed, warmup=500, keep_every=keep_every)
    kappa, lam = action.params["kappa"], action.params["lam"]
    phi0 = math.sqrt((4 * kappa - 1 + 2 * lam) / (2 * lam))
    gen = torch.Generator().manual_seed(seed)
    sign = torch.where(torch.arange(chains) % 2 == 0, 1.0, -1.0).to(torch.float64)
    q0 = phi0 * sign[:, None, None, None] * torch.ones(chains, 1, L, L, dtype=torch.float64)
    return run_hmc(action.evaluate, q0, n, measure=lambda q: action.measurement_field(q, gen), generator=gen,
                   warmup=500, keep_every=keep_every)


def stage_data(point: str, L: int, work: Path, seed: int) -> dict:
    from rgflow.ensemble import save_chain
    from rgflow.mcmc.run import summarize
    from rgflow.physics.models import make_action
    from rgflow.physics.observables import chain_observables
    from rgflow.stats import gamma_method

    name, params = POINTS[point]
    action, cold = make_action(name, **params), point == "broken"
    (chains, n, keep), (ref_chains, ref_n) = HMC[L]
    ens = work / f"{point}-L{L}.npz"
    t0 = time.perf_counter()
    train = _hmc(action, L, n, chains, seed, keep, cold)
    save_chain(train, ens, action, L)
    summary = summarize(train, action, L)
    out = {"ensemble": str(ens), "n_train": chains * (n // keep), "cold_start": cold,
           "train_hmc": {k: summary[k] for k in ("observables", "tau_int", "n_discarded", "acceptance", "reliable")},
           "train_seconds": time.perf_counter() - t0}
    if name == "free":
        out["reference"], out["reference_kind"] = free_reference(params["m2"], L), "exact"
        return out
    t0 = time.perf_counter()
    res = _hmc(action, L, ref_n, ref_chains, seed + 1000, 5, cold)
    obs = chain_observables(res.series, L)
    G = _G_rows(res.configs.reshape(-1, 1, L, L)).reshape(ref_chains, -1, L // 2)[:, obs.n_discarded // 5 + 1:]
    ref = {k: v.to_list() for k, v in obs.observables.items() if k in COMPARED}
    ref.update({f"G{r}": [(g := gamma_method(G[:, :, r - 1])).value, g.error] for r in range(1, L // 2 + 1)})
    out.update(reference=ref, reference_kind="hmc", reference_n=ref_chains * ref_n,
               reference_tau={k: v.to_list() for k, v in obs.tau_int.items()}, reference_reliable=obs.reliable,
               reference_thermalized=obs.thermalized, reference_seconds=time.perf_counter() - t0)
    return out


def run_name(point: str, L: int, schedule: str, net: str) -> str:
    return f"{point}-L{L}-{schedule}-{net}"


def net_label(net: str, depth: int | None) -> str:
    """The net's name in run folders and case keys: ``local``, or ``local.d3`` for a depth other than the CLI's."""
    return net if depth is None else f"{net}.d{depth}"


def stage_train(point, L, schedule, net, work: Path, data: dict, minutes: float, seed: int,
                depth: int | None = None) -> dict:
    run = work / run_name(point, L, schedule, net_label(net, depth))
    shutil.rmtree(run, ignore_errors=True)
    depth = ["--depth", str(depth)] if depth else ["--depth", "3"] if net == "unet" else []
    t0 = time.perf_counter()
    rgflow_cli(["diffuse", "train", "--data", data["ensemble"], "--schedule", schedule, "--net", net, *depth, "--target", "force",
                "--minutes", minutes, "--seed", seed, "--eval-every", 500, "--out", run])
    state = torch.load(run / "checkpoint.pt", weights_only=True, map_location="cpu")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in metrics if "eval" in m]
    return {"run": str(run), "minutes": minutes, "steps": state["step"], "seconds": time.perf_counter() - t0,
            "samples_seen": state["step"] * state["config"]["batch_size"],
            "heldout_loss": [[m["step"], m["eval"]["heldout_loss"]] for m in evals],
            "heldout_loss_per_stage": evals[-1]["eval"]["heldout_loss_per_stage"] if evals else None}


def measure(x: torch.Tensor) -> dict:
    from rgflow.physics.observables import estimate_observables

    est = estimate_observables(x.double())
    out = {k: est[k].to_list() for k in COMPARED + ("m",)}
    G = _G_rows(x)
    out.update({f"G{r}": [float(G[:, r - 1].mean()), float(G[:, r - 1].std(ddof=1) / math.sqrt(len(G)))]
                for r in range(1, G.shape[1] + 1)})
    return out


def z_scores(obs: dict, ref: dict) -> dict:
    return {k: (obs[k][0] - ref[k][0]) / math.hypot(obs[k][1], ref[k][1]) for k in ref if k in obs}


def smallest_nfe(rows: list[dict], key: str = "max_abs_z", bound: float = 2.0):
    """The smallest lattice NFE from which on every rung is within ``bound`` sigma (None: never)."""
    ok = [r[key] < bound for r in rows]
    for i in range(len(rows)):
        if all(ok[i:]):
            return rows[i]["lattice_nfe"]
    return None


def stage_ladder(point, L, schedule, net, work: Path, data: dict, seed: int, nfes=None) -> dict:
    from rgflow.diffusion.sampler import cost_of, sample_fields
    from rgflow.runs import open_run

    run = work / run_name(point, L, schedule, net)  # net: its label (net_label)
    model = open_run(run, "diffusion", weights="ema").model
    rows = []
    for nfe in nfes or LADDER[schedule]:
        t0 = time.perf_counter()
        x, _ = sample_fields(model, N_SAMPLES, nfe, "ode", torch.Generator().manual_seed(seed), batch_size=512)
        obs = measure(x)
        z = z_scores(obs, data["reference"])
        rows.append({**cost_of(model, nfe), "seconds": time.perf_counter() - t0, "observables": obs, "z": z,
                     "max_abs_z": max(abs(v) for v in z.values())})
        print(f"{run.name}: nfe {nfe} (lattice {rows[-1]['lattice_nfe']:.1f}) max|z| {rows[-1]['max_abs_z']:.2f} "
              f"U4 {obs['binder'][0]:.4f}({obs['binder'][1]:.4f})", flush=True)
    top = rows[-1]["observables"]
    for row in rows:
        zt = z_scores(row["observables"], top)
        row["max_abs_z_vs_top"] = max(abs(v) for v in zt.values()) if row is not rows[-1] else 0.0
    return {"ladder": rows, "smallest_nfe": smallest_nfe(rows), "converged_nfe": smallest_nfe(rows, "max_abs_z_vs_top")}


def stage_exact(point, L, work: Path, seed: int, nfe: int, samples: int, net: str = "local") -> dict:
    """Seconds per exact sample (`rgflow diffuse eval`) of the rg model (``net``: its label), and its weights'
    diagnostics."""
    run = work / run_name(point, L, "rg", net)
    import resource

    t0 = time.perf_counter()
    res = rgflow_cli(["diffuse", "eval", run, "--nfe", nfe, "--samples", samples, "--seed", seed, "--json"])
    res["wall_seconds"] = time.perf_counter() - t0
    res["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return res


def stage_imh(point, L, work: Path, seed: int, nfe: int, n: int, chains: int, net: str = "local") -> dict:
    """DM-MC (the rg model, ``net``: its label) and HMC chains on the same target: cost per independent |m|
    (likelihood included)."""
    action, params = POINTS[point]
    run = work / run_name(point, L, "rg", net)
    imh = rgflow_cli(["mcmc", run, "--sampler", "imh", "--nfe", nfe, "--n", n, "--chains", chains, "--seed", seed,
                      "--json"])
    hmc = rgflow_cli(["mcmc", "--sampler", "hmc", "--action", action, *_flags(params), "--L", L, "--n", 4000,
                      "--chains", 16, "--seed", seed, "--json"])
    return {"imh": imh, "hmc": hmc}


def stage_cost(L: int, samples: int = 16) -> dict:
    """Seconds per exact sample (rg, ``--nfe 1``) of untrained local models of depth 2, 3, 4 (width 32) with
    perturbed weights: the cost of the exact density by the network's radius, without training."""
    from rgflow.diffusion.model import DiffusionModel
    from rgflow.layout import Layout

    P = torch.fft.fft2(free_field_two_point(L, 0.04)).real[None].float()
    out = {}
    for depth in (2, 3, 4):
        torch.manual_seed(0)
        model = DiffusionModel.build(P, Layout(L), "rg", "local", 32, depth, True, nfe=1).float()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-3 * torch.randn_like(p))
        t0 = time.perf_counter()
        model.sample(samples)
        out[f"depth{depth}"] = {"seconds_per_sample": (time.perf_counter() - t0) / samples, "samples": samples}
    return out


def case_path(work: Path, *parts) -> Path:
    return work / "cases" / ("-".join(map(str, parts)) + ".json")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", nargs="?", choices=["data", "train", "ladder", "exact", "imh", "cost"])
    p.add_argument("point", nargs="?", choices=list(POINTS))
    p.add_argument("L", nargs="?", type=int)
    p.add_argument("schedule", nargs="?", choices=list(LADDER))
    p.add_argument("net", nargs="?", choices=["local", "unet"])
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--depth", type=int, help="train, ladder, exact, imh: the net's depth (default: the CLI's; the run and "
                   "case are then named NET.dDEPTH)")
    p.add_argument("--nfe", type=int, default=4, help="exact, imh: evaluations of the finest level")
    p.add_argument("--nfes", help="ladder: comma-separated NFE rungs instead of the schedule's default ladder")
    p.add_argument("--samples", type=int, default=64, help="exact: samples with exact ln q")
    p.add_argument("--n", type=int, default=512, help="imh: proposals per chain")
    p.add_argument("--chains", type=int, default=8, help="imh: chains")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="/tmp/rgflow-diffusion")
    p.add_argument("--out", default=str(ROOT / "results" / "diffusion.json"))
    p.add_argument("--report", action="store_true", help="gather the cases into --out, draw the figures, print tables")
    p.add_argument("--restore", action="store_true", help="write the cases of --out back into --work/cases (missing "
                   "ones only), so that a new machine adds cases to the committed results instead of replacing them")
    args = p.parse_args()
    work = Path(args.work)
    (work / "cases").mkdir(parents=True, exist_ok=True)
    if args.restore:
        for stage, cases in json.loads(Path(args.out).read_text()).items():
            for key, entry in cases.items():
                if not case_path(work, stage, key).exists():
                    case_path(work, stage, key).write_text(json.dumps(entry, indent=1) + "\n")
        return
    if args.report:
        from diffusion_report import report

        report(work, Path(args.out))
        return
    torch.set_num_threads(1)
    point, L = args.point, args.L
    data_path = case_path(work, "data", point, L)
    if args.stage == "data":
        result = stage_data(point, L, work, args.seed)
    elif args.stage == "cost":
        result = stage_cost(L)
    else:
        data = json.loads(data_path.read_text())
        if args.stage == "train":
            result = stage_train(point, L, args.schedule, args.net, work, data, args.minutes, args.seed, args.depth)
        elif args.stage == "ladder":
            nfes = [int(v) for v in args.nfes.split(",")] if args.nfes else None
            result = stage_ladder(point, L, args.schedule, net_label(args.net, args.depth), work, data, args.seed, nfes)
        elif args.stage == "exact":
            result = stage_exact(point, L, work, args.seed, args.nfe, args.samples, net_label("local", args.depth))
        else:
            result = stage_imh(point, L, work, args.seed, args.nfe, args.n, args.chains, net_label("local", args.depth))
    parts = [args.stage, point, L] + ([args.schedule, net_label(args.net, args.depth)] if args.stage in ("train", "ladder")
                                      else [f"d{args.depth}"] if args.stage in ("exact", "imh") and args.depth else [])
    result["machine"] = machine()
    case_path(work, *parts).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {case_path(work, *parts)}")


if __name__ == "__main__":
    main()
