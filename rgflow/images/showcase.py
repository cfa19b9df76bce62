"""The scale-separation demos of a trained hierarchical flow, as one function per call of ``rgflow images DEMO``.

:func:`run_image_demo` opens an image or lattice flow run (:func:`rgflow.images.runs.open_demo_run`),
runs one of :data:`DEMOS` -- ``sample`` (a temperature per level), ``mix`` (coarse latents from one
example, fine from another; with labels, a nearest-neighbour label check per level), ``rf``
(receptive fields), ``progressive`` (coarse levels fixed, finer resampled), ``inpaint`` (a masked
square repaired through the light cone or all latents) -- with the primitives of
:mod:`rgflow.images.demos`, and writes its figure.
"""
from __future__ import annotations

from pathlib import Path

import torch

from rgflow.images import demos
from rgflow.images.figures import image_grid, receptive_field_figure
from rgflow.images.runs import open_demo_run

__all__ = ["run_image_demo", "DEMOS"]

#: the demos, with what each shows
DEMOS = {
    "sample": "samples with a temperature per level (coarse and fine)",
    "mix": "feature mixing: coarse latents from one image, fine from another, over all levels",
    "rf": "receptive fields E|dx/dz| and impulse responses per level, with effective radii",
    "progressive": "coarse-to-fine generation: fix coarse latents, resample finer levels",
    "inpaint": "refill a masked square by changing only the latents in its light cone",
}


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")


def _out_dir(run_dir, out) -> Path:
    out = Path(out) if out else Path(run_dir) / "figures"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {out}: cannot create the folder ({exc.strerror})") from None
    return out


def run_image_demo(demo: str, run_dir: str | Path, out: str | Path | None = None, seed: int = 0, n: int = 8,
                   temperatures: str = "1,0.7,0.3", pairs: int = 6, score_pairs: int = 200, variants: int = 6,
                   temperature: float = 1.0, mask_size: int | None = None, images: int = 6, method: str = "optimize",
                   steps: int = 200) -> tuple[dict, Path]:
    """Run one scale-separation demo (:data:`DEMOS`) on a hierarchical image or lattice flow run, write its
    figure into ``out`` (default ``RUN/figures``) and return ``(result, figure path)`` (module docstring)."""
    if demo not in DEMOS:
        raise ValueError(f"demo {demo!r} is not allowed; allowed: {', '.join(DEMOS)}")
    run = open_demo_run(run_dir, seed=seed)
    model, layout = run.model, run.model.layout
    if layout is None or layout.kind != "mera":
        raise ValueError(f"{run_dir} is a flat-flow run: the demos need the hierarchical (mera) flow")
    gen = torch.Generator(device=run.held_out.device).manual_seed(seed)
    top = layout.n_levels
    out = _out_dir(run_dir, out)
    res: dict = {"run": str(run_dir), "kind": run.kind, "n_levels": top}
    if demo == "sample":
        _positive("-n", n)
        try:
            temps = [float(t) for t in temperatures.split(",")]
        except ValueError:
            raise ValueError(f"--temperatures must be comma-separated numbers, got {temperatures!r}") from None
        if not temps or min(temps) < 0:
            raise ValueError(f"--temperatures must be numbers >= 0, got {temperatures!r}")
        coarse_from = (top + 1) // 2
        rows, labels = [], []
        for tc in temps:
            for tf in temps:
                per_level = [tf if lvl < coarse_from else tc for lvl in range(top + 1)]
                rows.append(demos.sample_with_temperatures(model, n, per_level,
                                                           torch.Generator(device=gen.device).manual_seed(seed)))
                labels.append(f"T_c={tc:g} T_f={tf:g}")
        path = image_grid(torch.stack(rows), out / "samples_temperature.png", run.kind, row_labels=labels,
                          title=f"{run.name}: temperature of coarse (levels >= {coarse_from}) and fine levels")
        res.update(temperatures=temps, coarse_levels_from=coarse_from)
    elif demo == "mix":
        _positive("--pairs", pairs)
        n = len(run.held_out)
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        a_idx, b_idx = idx[: pairs], idx[pairs: 2 * pairs] if n >= 2 * pairs else idx.roll(1)[: pairs]
        a, b = run.held_out[a_idx], run.held_out[b_idx]
        grid = torch.stack([demos.mix(model, a, b, lvl) for lvl in range(top + 2)], dim=1)
        path = image_grid(grid, out / "mixing.png", run.kind,
                          col_labels=[f"l={lvl}" for lvl in range(top + 2)],
                          title="levels >= l from the first (left column), < l from the second (right column)")
        if run.labels is not None and score_pairs > 0:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
            a_i, b_i = idx[: score_pairs], perm[: score_pairs]
            differ = torch.as_tensor(run.labels[a_i.numpy()] != run.labels[b_i.numpy()])
            a_i, b_i = a_i[differ], b_i[differ]
            scores = []
            for lvl in range(top + 2):
                m = demos.mix(model, run.held_out[a_i], run.held_out[b_i], lvl)
                coarse, fine = demos.label_agreement(m, run.train, run.train_labels, run.labels[a_i.numpy()],
                                                     run.labels[b_i.numpy()])
                scores.append({"level": lvl, "coarse_label": coarse, "fine_label": fine})
            res.update(label_follow=scores, scored_pairs=int(differ.sum()))
    elif demo == "rf":
        _positive("-n", n)
        rf = demos.receptive_fields(model, n, generator=gen)
        path = receptive_field_figure(rf, out / "receptive_fields.png", title=f"{run.name}: receptive fields per level")
        res.update(rf.to_dict())
    elif demo == "progressive":
        _positive("--variants", variants)
        ref = run.held_out[seed % len(run.held_out)][None]
        rows = demos.progressive(model, ref, variants, temperature, gen)
        path = image_grid(rows, out / "progressive.png", run.kind,
                          row_labels=["none fixed"] + [f"levels >= {top + 1 - k}" for k in range(1, top + 2)],
                          title="coarse-to-fine: latents of the coarse levels fixed to one example, finer resampled")
    else:  # inpaint
        _positive("--images", images)
        size = mask_size or max(1, layout.L // 4)
        if not 1 <= size < layout.L:
            raise ValueError(f"--mask-size must be between 1 and {layout.L - 1}, got {size}")
        truth = run.held_out[: images]
        mask = torch.zeros(layout.L, layout.L, dtype=torch.bool)
        lo = (layout.L - size) // 2
        mask[lo:lo + size, lo:lo + size] = True
        noise = torch.rand(truth.shape, generator=gen, dtype=truth.dtype) if run.kind == "images" else \
            torch.randn(truth.shape, generator=gen, dtype=truth.dtype)
        corrupted = torch.where(mask, noise, truth)
        cone = demos.inpaint(model, corrupted, mask, method, True, steps, truth=truth, generator=gen)
        full = demos.inpaint(model, corrupted, mask, method, False, steps, truth=truth, generator=gen)
        grid = torch.stack([truth, corrupted, cone.filled, full.filled], dim=0)
        path = image_grid(grid, out / "inpainting.png", run.kind,
                          row_labels=["original", "corrupted", f"light cone ({cone.n_changed})",
                                      f"all latents ({full.n_changed})"],
                          title=f"inpainting a {size}x{size} square ({method})")
        res.update(mask_size=size, method=method, n_latents=cone.n_latents,
                   cone={"n_changed": cone.n_changed, "rms_error": cone.rms_error.mean().item(),
                         "log_prob": cone.log_prob.mean().item()},
                   all={"n_changed": full.n_changed, "rms_error": full.rms_error.mean().item(),
                        "log_prob": full.log_prob.mean().item()})
    res["figure"] = str(path)
    return res, path
