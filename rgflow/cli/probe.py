"""``rgflow probe RUN``: the holographic probes of a trained flow (see :func:`rgflow.holography.probe`)."""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    from rgflow.holography.probe import PROBE_SAMPLERS

    p = sub.add_parser("probe", help="bulk correlators, mutual information and emergent geometry of a trained flow")
    p.add_argument("run", help="trained flow run folder (MERA)")
    p.add_argument("--n", type=int, default=200, help="recorded steps per chain")
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--sampler", choices=list(PROBE_SAMPLERS), default="auto",
                   help="exact-target samples: flow IMH or latent HMC on S_eff; auto (default): IMH when the flow's "
                        "ESS/N on 1024 fresh samples is at least 0.05, else latent HMC")
    p.add_argument("--coords", choices=["flow", "haar"], default="flow",
                   help="bulk coordinates: the run's flow, or the fixed Haar map on the same samples")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.add_argument("--out", required=True, help="folder for result.json and the figures")


def run(args) -> int:
    from rgflow.holography.probe import probe
    from rgflow.stats import format_value_error as fmt

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {args.out!r} exists and is not a folder")
    res = probe(args.run, args.n, args.chains, args.sampler, args.coords, args.seed, args.warmup, out)
    (out / "result.json").write_text(json.dumps(res, indent=1) + "\n")
    if args.json:
        print(json.dumps(res))
        return 0
    geo = res["geometry"]
    why = (f", chosen by the pilot ESS/N {res['sampler_choice']['pilot_ess']:.3f}" if res["sampler_choice"] else "")
    print(f"{res['action']} {res['params']} L={res['L']}: {res['n_samples']} samples ({res['sampler']}{why}, "
          f"acceptance {res['sampler_stats']['acceptance']:.3f}, tau_int(|m|) {fmt(*res['tau_int_abs_m'])}), "
          f"bulk in {res['coords']} coordinates; total Gaussian bulk MI {fmt(*res['total_mi_gaussian'])} nats")
    for g in ("hyperbolic", "flat"):
        if g in geo:
            p = geo[g]["params"]
            shape = next(k for k in p if k not in ("a", "xi"))
            print(f"  {g:<10} xi = {fmt(*p['xi'])}, {shape} = {fmt(*p[shape])}, chi2/dof = {geo[g]['chi2_per_dof']:.2f}, "
                  f"AIC = {geo[g]['aic']:.1f}")
    if "preferred" in geo:
        print(f"  preferred geometry: {geo['preferred']} (AIC flat - hyperbolic = {geo['delta_aic_flat_minus_hyperbolic']:.1f})")
    fits = res["boundary_fits"]
    if fits.get("preferred"):
        print(f"  boundary G(r): power law eta = {fits['power_law']['eta']:.3f} (AIC {fits['power_law']['aic']:.1f}), "
              f"exponential xi = {fits['exponential']['xi']:.3f} (AIC {fits['exponential']['aic']:.1f}): {fits['preferred']}")
    print(f"  {res['seconds']['sampling']:.0f} s sampling, {res['seconds']['analysis']:.0f} s analysis; figures and "
          f"result.json in {out}")
    return 0
