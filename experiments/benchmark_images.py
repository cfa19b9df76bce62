"""Image benchmark: held-out bits/dim at equal CPU wall time, RG flow against the flat baseline, and the
scale-separation demos on the best RG run of each dataset.

Stages (``--stages train,eval,demos``; each reads what the previous wrote):

* ``train`` -- for each dataset (MNIST-5k 32x32, LFW faces 32x32) and model (RG flow with block 2 or 4
  and a normal or Laplace prior; the flat checkerboard baseline with the RG b=2 flow's parameter
  count) ``rgflow images train --minutes M``; ``--models`` / ``--datasets`` select a subset, so two
  processes can share the work (pin each to a core: ``taskset -c K``, ``OMP_NUM_THREADS=1``);
* ``eval`` -- ``rgflow images eval --draws 4`` of every run, learning curves from ``metrics.jsonl``;
* ``demos`` -- mixing grid with the nearest-neighbour label check (MNIST), receptive fields,
  coarse-to-fine strip, inpainting (light cone against all latents), temperature samples;
* ``lattice`` -- the same flow on a lattice ensemble: phi^4 8x8 at the tutorial point (m^2 = -4,
  lam = 8), an HMC ensemble, then forward KL (``rgflow train --data``) against reverse KL at equal
  wall time, both judged by held-out NLL per site and by ESS against the action
  (``rgflow images eval``), and the demos on the forward-KL run (the physics analogue).

    OMP_NUM_THREADS=1 taskset -c 0 python experiments/benchmark_images.py --stages train --models rg-b2-normal,...
    python experiments/benchmark_images.py --stages eval,demos
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, add_output_arguments, machine, rgflow_cli as _cli  # noqa: E402

MODELS = {
    "rg-b2-normal": ["--flow", "mera", "--block-size", "2", "--prior", "normal"],
    "rg-b2-laplace": ["--flow", "mera", "--block-size", "2", "--prior", "laplace"],
    "rg-b4-normal": ["--flow", "mera", "--block-size", "4", "--prior", "normal"],
    "rg-b4-laplace": ["--flow", "mera", "--block-size", "4", "--prior", "laplace"],
    "flat": ["--flow", "flat"],
}
DATASETS = {"mnist": ["--holdout", "0.1"], "faces": ["--holdout", "0.2"]}
#: Published full-data numbers, for reference only (GPU-days, full MNIST / CelebA).
REFERENCE = {"MNIST (full, 28x28 dequantised)": {"RealNVP": 1.06, "Glow": 1.05, "FFJORD": 0.99, "Residual Flow": 0.97},
             "RG-Flow re-implementation": {"ellipses 32x32": 1.85, "CelebA 32x32": 3.72}}


def _train(work: Path, datasets, models, minutes: float, seed: int) -> None:
    for data in datasets:
        for model in models:
            run = work / f"{data}-{model}"
            if (run / "checkpoint.pt").exists():
                print(f"{run} exists, skipped", flush=True)
                continue
            print(f"training {run} for {minutes} min", flush=True)
            _cli(["images", "train", "--data", data, *DATASETS[data], *MODELS[model], "--minutes", str(minutes),
                  "--seed", str(seed), "--eval-every", "50", "--out", str(run)])


def _curve(run: Path) -> dict:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    ev = [r for r in rows if "eval" in r]
    steps = [r["step"] for r in rows if "loss" in r]
    return {"time": [r["time"] for r in ev], "step": [r["step"] for r in ev],
            "heldout_bits_per_dim": [r["eval"]["heldout_bits_per_dim"] for r in ev], "steps": max(steps or [0])}


def _eval(work: Path, datasets, models, seed: int) -> dict:
    res = {}
    for data in datasets:
        for model in models:
            run = work / f"{data}-{model}"
            if not (run / "checkpoint.pt").exists():
                continue
            ev = _cli(["images", "eval", str(run), "--draws", "4", "--seed", str(seed), "--json"])
            cfg = json.loads((run / "config.json").read_text())
            curve = _curve(run)
            res.setdefault(data, {})[model] = {
                "bits_per_dim": ev["bits_per_dim"], "bits_per_dim_err": ev["bits_per_dim_err"], "n_test": ev["n_test"],
                "params": ev["params"], "steps": curve["steps"], "minutes": cfg["minutes"], "curve": curve}
            print(f"{data:6s} {model:14s} {ev['bits_per_dim']:.4f}({ev['bits_per_dim_err']:.4f}) bits/dim  "
                  f"{ev['params']} params  {curve['steps']} steps", flush=True)
    return res


def _demos(work: Path, results: dict, figures: Path) -> dict:
    out = {}
    for data, runs in results.items():
        rg = {m: r for m, r in runs.items() if m.startswith("rg")}
        best = min(rg, key=lambda m: rg[m]["bits_per_dim"])
        run, tmp = work / f"{data}-{best}", work / f"{data}-figures"
        rec = {"run": best}
        rec["mix"] = _cli(["images", "mix", str(run), "--pairs", "6", "--score-pairs", "400", "--out", str(tmp), "--json"])
        rec["rf"] = _cli(["images", "rf", str(run), "-n", "16", "--out", str(tmp), "--json"])
        rec["progressive"] = _cli(["images", "progressive", str(run), "--variants", "6", "--out", str(tmp), "--json"])
        rec["inpaint"] = _cli(["images", "inpaint", str(run), "--images", "6", "--mask-size", "10", "--steps", "300",
                               "--out", str(tmp), "--json"])
        rec["sample"] = _cli(["images", "sample", str(run), "-n", "8", "--out", str(tmp), "--json"])
        for key in ("mix", "rf", "progressive", "inpaint", "sample"):
            src = Path(rec[key]["figure"])
            dst = figures / f"images_{src.stem}_{data}.png"
            shutil.copy(src, dst)
            rec[key]["figure"] = str(dst.relative_to(ROOT.parent))
        out[data] = rec
        print(f"{data}: demos on {best}; radius per level {[round(r, 2) for r in rec['rf']['radius']]}; inpaint cone "
              f"{rec['inpaint']['cone']} vs all {rec['inpaint']['all']}", flush=True)
    return out


def _lattice(work: Path, minutes: float, seed: int, figures: Path) -> dict:
    physics = ["--action", "phi4", "--L", "8", "--m2", "-4", "--lam", "8"]
    ens = work / "phi4-hmc.npz"
    rec = {"hmc": _cli(["mcmc", "--sampler", "hmc", *physics, "--n", "2000", "--chains", "16", "--save-every", "4",
                        "--seed", str(seed), "--out", str(ens), "--json"])}
    for name, extra in (("forward_kl", ["--data", str(ens)]), ("reverse_kl", physics)):
        run = work / f"phi4-{name}"
        if not (run / "checkpoint.pt").exists():
            _cli(["train", *extra, "--minutes", str(minutes), "--seed", str(seed), "--out", str(run)])
        rec[name] = _cli(["images", "eval", str(run), "--samples", "16384", "--json"])
        print(f"phi4 8x8 {name}: ESS {rec[name]['ess']:.4f}, lnZ {rec[name]['lnZ']:.4f}({rec[name]['lnZ_err']:.4f})"
              + (f", held-out NLL/site {rec[name]['nll_per_site']:.4f}" if "nll_per_site" in rec[name] else ""), flush=True)
    run, tmp = work / "phi4-forward_kl", work / "phi4-figures"
    for demo, args in (("mix", ["--pairs", "4"]), ("rf", ["-n", "16"]), ("inpaint", ["--images", "4", "--steps", "200"])):
        rec[demo] = _cli(["images", demo, str(run), *args, "--out", str(tmp), "--json"])
        dst = figures / f"images_{Path(rec[demo]['figure']).stem}_phi4.png"
        shutil.copy(rec[demo]["figure"], dst)
        rec[demo]["figure"] = str(dst.relative_to(ROOT.parent))
    return rec


def _figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 3.6), squeeze=False)
    for ax, (data, runs) in zip(axes[0], results.items()):
        for model, r in runs.items():
            c = r["curve"]
            ax.plot([t / 60 for t in c["time"]], c["heldout_bits_per_dim"], "-" if model.startswith("rg") else "--",
                    label=f"{model}: {r['bits_per_dim']:.3f}({1000 * r['bits_per_dim_err']:.0f})")
        ax.set_xlabel("training wall time (min, one CPU thread)")
        ax.set_ylabel("held-out bits/dim")
        ax.set_title(f"{data} 32x32")
        lo = min(min(r["curve"]["heldout_bits_per_dim"]) for r in runs.values())
        ax.set_ylim(lo - 0.1, lo + 2.0)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_output_arguments(p, "images")
    p.add_argument("--stages", default="train,eval,demos,lattice")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--minutes", type=float, default=5.0, help="training wall time per run")
    args = p.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    stages, datasets, models = args.stages.split(","), args.datasets.split(","), args.models.split(",")
    record = json.loads(out.read_text()) if out.exists() else {}
    if "train" in stages:
        _train(work, datasets, models, args.minutes, args.seed)
    if "eval" in stages:
        record.update(machine=machine(), minutes=args.minutes, reference_bits_per_dim=REFERENCE,
                      results=_eval(work, datasets, models, args.seed))
        _figure(record["results"], Path(args.figure))
    if "demos" in stages:
        record["demos"] = _demos(work, record["results"], Path(args.figure).parent)
    if "lattice" in stages:
        record["lattice"] = _lattice(work, 3.0, args.seed, Path(args.figure).parent)
    if set(stages) & {"eval", "demos", "lattice"}:
        out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
