"""Figures of the scale-separation demos (matplotlib's object API, no pyplot state): image grids of
images and fields alike."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["image_grid", "receptive_field_figure"]


def _save(fig, path: str | Path, title: str | None) -> Path:
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def _panel(ax, field: torch.Tensor, kind: str, vlim: float) -> None:
    a = field.detach().double().cpu()
    ax.set_xticks([])
    ax.set_yticks([])
    if kind == "images":
        img = a.clamp(0, 1).permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img[..., :3], cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
    else:  # lattice field: first component, symmetric colour scale
        ax.imshow(a[0].numpy(), cmap="RdBu_r", vmin=-vlim, vmax=vlim, interpolation="nearest")


def image_grid(rows: torch.Tensor, path: str | Path, kind: str = "images", row_labels=None, col_labels=None,
               title: str | None = None) -> Path:
    """Save a grid of ``rows [R, K, C, L, L]`` (images in ``[0, 1]`` or lattice fields) to ``path``."""
    from matplotlib.figure import Figure

    R, K = rows.shape[:2]
    vlim = float(rows.abs().quantile(0.99)) if kind != "images" else 1.0
    fig = Figure(figsize=(1.1 * K + 0.6, 1.1 * R + 0.5))
    axes = fig.subplots(R, K, squeeze=False)
    for r in range(R):
        for k in range(K):
            _panel(axes[r, k], rows[r, k], kind, vlim)
        if row_labels is not None:
            axes[r, 0].set_ylabel(row_labels[r], fontsize=7)
    if col_labels is not None:
        for k in range(K):
            axes[0, k].set_title(col_labels[k], fontsize=7)
    return _save(fig, path, title)


def receptive_field_figure(rf, path: str | Path, title: str | None = None) -> Path:
    """Rows: ``E|dx/dz|`` and the impulse response per level; last panel: effective radius vs level."""
    from matplotlib.figure import Figure

    n = len(rf.radius)
    fig = Figure(figsize=(1.6 * (n + 1), 3.4))
    axes = fig.subplots(2, n + 1, squeeze=False)
    for lvl in range(n):
        for row, maps in enumerate((rf.mean_abs, rf.impulse)):
            ax = axes[row, lvl]
            m = maps[lvl][0].double().cpu().numpy()
            lim = float(np.abs(m).max()) or 1.0
            ax.imshow(m, cmap="magma" if row == 0 else "RdBu_r", vmin=0 if row == 0 else -lim, vmax=lim,
                      interpolation="nearest")
            ax.plot(rf.sites[lvl][1], rf.sites[lvl][0], "c+", ms=6)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, lvl].set_title(f"level {lvl}" if lvl < n - 1 else f"top ({lvl})", fontsize=8)
    axes[0, 0].set_ylabel("E|dx/dz|", fontsize=8)
    axes[1, 0].set_ylabel("impulse at z=0", fontsize=8)
    gs = axes[0, n].get_gridspec()
    for ax in axes[:, n]:
        ax.remove()
    ax = fig.add_subplot(gs[:, n])
    ax.plot(range(n), rf.radius, "o-")
    ax.set_xlabel("level")
    ax.set_ylabel("effective radius (sites)")
    return _save(fig, path, title)
