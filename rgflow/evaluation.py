"""One evaluation for every kind of run (``rgflow eval RUN``; ``diffuse eval`` and ``images eval`` are aliases).

:func:`evaluate_run` opens the folder through the registry (:func:`rgflow.runs.open_run`) and returns
one JSON-ready dict whose common keys every kind shares -- ``run``, ``kind``, ``n_params``,
``n_samples``, ``seconds``, ``seconds_per_sample`` -- with the kind's measurements:

* lattice runs (``flow``, ``diffusion``): every key of :func:`rgflow.train.diagnostics.evaluate` (ESS,
  ``lnZ`` with its error and Pareto k, ``f_variational``, IMH acceptance, reweighted and IMH
  observables), the held-out NLL per site of a flow trained on an ensemble, and for diffusion runs the
  sampler's cost (``nfe``, ``nfe_per_stage``, ``network_calls``, ``lattice_nfe``), ``schedule``,
  ``levels`` and ``weights``;
* image runs: ``bits_per_dim`` (held-out, mean over images of the per-image bits/dim averaged over
  ``draws`` dequantisations) with its standard error, ``n_test`` and ``draws``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

__all__ = ["evaluate_run", "format_eval", "DEFAULT_SAMPLES"]

#: Samples with exact ln q per kind when ``samples`` is not given (a diffusion sample's exact density
#: costs step Jacobians).
DEFAULT_SAMPLES = {"flow": 16384, "diffusion": 1024, "images": None}


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def evaluate_run(run_dir: str | Path, samples: int | None = None, seed: int = 0, nfe: int = 16, weights: str = "ema",
                 draws: int = 1, device: str | None = None, by_level: bool = False, by_level_samples: int = 512,
                 by_level_inner: int = 32) -> dict:
    """Evaluate a run folder of any kind (module docstring); ``by_level`` adds ``by_level``, the KL and the
    variance of ``ln w`` split by RG level (:func:`rgflow.by_level.kl_by_level`, hierarchical flows only)."""
    from rgflow.runs import open_run
    from rgflow.train.diagnostics import evaluate

    if samples is not None and samples < 2:  # bad input first, before any work
        raise ValueError(f"--samples must be >= 2, got {samples}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"--draws must be a positive integer, got {draws!r}")
    t0 = time.perf_counter()
    for name, v in (("--by-level-samples", by_level_samples), ("--by-level-inner", by_level_inner)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 2:
            raise ValueError(f"{name} must be an integer >= 2, got {v!r}")
    if device is not None:
        from rgflow.config import check_device

        check_device(device, "--device")
    run = open_run(run_dir, device=device, nfe=nfe, weights=weights)
    if by_level and (run.kind != "flow" or getattr(run.model, "layout", None) is None):
        raise ValueError(f"--by-level needs a hierarchical flow run (flow mera or tebd); {run_dir} is a {run.kind} run"
                         + (" with a flat flow" if run.kind == "flow" else ""))
    samples = samples if samples is not None else DEFAULT_SAMPLES[run.kind]
    cfg, model = run.config, run.model
    out = {"run": str(run_dir), "kind": run.kind, "n_params": _n_params(model)}
    if run.kind == "images":
        from rgflow.images.model import bits_per_dim
        from rgflow.images.train import image_split

        data, _, test_idx = image_split(cfg)
        gen = torch.Generator(device=cfg.device).manual_seed(seed)
        images = data.images[test_idx].to(cfg.device)
        bpd = torch.stack([bits_per_dim(model, images, gen) for _ in range(draws)]).mean(0)
        out.update(data=cfg.data, flow=cfg.flow, bits_per_dim=float(bpd.mean()),
                   bits_per_dim_err=float(bpd.std() / math.sqrt(len(bpd))), n_test=len(bpd), draws=draws,
                   n_samples=len(bpd))
    else:
        if run.kind == "flow" and cfg.data:
            out.update(_heldout_nll(model, cfg))
        out.update(evaluate(model, run.action, samples, seed=seed))
        if by_level:
            from rgflow.by_level import kl_by_level

            out["by_level"] = kl_by_level(model, run.action, by_level_samples, by_level_inner, seed=seed)
        if run.kind == "diffusion":
            from rgflow.diffusion.sampler import cost_of

            out.update(**cost_of(model, nfe), schedule=cfg.noise_schedule, levels=cfg.levels, weights=weights)
    out["seconds"] = time.perf_counter() - t0
    out["seconds_per_sample"] = out["seconds"] / out["n_samples"]
    return out


@torch.no_grad()
def _heldout_nll(flow, cfg) -> dict:
    from rgflow.ensemble import load_ensemble, split_ensemble

    fields = load_ensemble(cfg.data).fields.to(device=cfg.device, dtype=next(flow.parameters()).dtype)
    _, test_idx = split_ensemble(len(fields), cfg.holdout, cfg.seed)
    held_out = fields[test_idx]
    nll = torch.cat([-flow.log_prob(held_out[i:i + 1024]) for i in range(0, len(held_out), 1024)]).double()
    V = cfg.L * cfg.L
    return {"nll_per_site": float(nll.mean()) / V, "nll_per_site_err": float(nll.std() / math.sqrt(len(nll))) / V,
            "n_test": len(nll)}


def format_eval(res: dict) -> str:
    """The human-readable table of :func:`evaluate_run`'s result."""
    from rgflow.stats import format_value_error as fmt

    if res["kind"] == "images":
        return (f"{res['run']}: {res['bits_per_dim']:.4f} +- {res['bits_per_dim_err']:.4f} bits/dim on "
                f"{res['n_test']} held-out {res['data']} images ({res['n_params']} parameters, {res['seconds']:.1f} s)")
    lines = [
        f"{res['action']} {res['params']}  L={res['L']}  N={res['n_samples']}  ({res['kind']} run)",
        *([f"  held-out NLL/site {fmt(res['nll_per_site'], res['nll_per_site_err'])}"] if "nll_per_site" in res else []),
        *([f"  sampler          {res['schedule']} schedule, {res['weights']} weights, NFE {res['nfe']} "
           f"({res['lattice_nfe']:.2f} on the whole lattice), {res['seconds_per_sample']:.3g} s per exact sample"]
          if res["kind"] == "diffusion" else []),
        f"  ESS/N            {res['ess']:.4f}",
        f"  IMH acceptance   {res['imh_acceptance']:.4f}",
        f"  ln Z             {fmt(res['lnZ'], res['lnZ_err'])}" + (f"   exact {res['lnZ_exact']:.6f}" if "lnZ_exact" in res else ""),
        *(f"    WARNING: {w}" for w in res.get("lnZ_warnings", [])),
        f"  Pareto k         {res['pareto_k']:.3f}",
        f"  F_var            {fmt(res['f_variational'], res['f_variational_err'])}"
        + (f"   KL(q||p) = {res['kl']:.4f}" if "kl" in res else ""),
        f"  {'observable':<10} {'reweighted':>16} {'IMH':>16} {'tau_int(IMH)':>14}",
    ]
    for name, (v, e) in res["observables"].items():
        vi, ei = res["observables_imh"][name]
        tau = res["tau_int_imh"].get(name)
        lines.append(f"  {name:<10} {fmt(v, e):>16} {fmt(vi, ei):>16} {fmt(*tau) if tau else '':>14}")
    if "by_level" in res:
        from rgflow.by_level import format_by_level

        lines.append(format_by_level(res["by_level"]))
    return "\n".join(lines)
