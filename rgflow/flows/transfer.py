r"""Size transfer: start a flow on an ``L = 2^k L_0`` lattice from a flow trained on ``L_0``.

A MERA flow on ``2^k L_0`` has ``k`` more levels than one on ``L_0``, and level ``l`` of the big
lattice acts on the sublattice of spacing ``2^l`` whose coarse-grained field is, near a fixed
point, distributed like that of level ``l - k`` of the small lattice. So the big flow's level
``l >= k`` takes the small flow's level ``l - k`` (blocks and prior scale), and the ``k`` new fine
levels start either as copies of the small flow's finest level (``finest="copy"``, the
self-similar guess at criticality) or at the identity (``finest="identity"``, their
initialisation). Weights are shared by all blocks of a sublayer, so nothing depends on ``L``
except the number of levels.
"""
from __future__ import annotations

import torch

from rgflow.flows.rgflow import RGFlow

__all__ = ["grow_flow", "FINEST_INIT", "level_offset"]

FINEST_INIT = ("copy", "identity")


def _unwrap(flow):
    """The :class:`RGFlow` inside a symmetrised mixture (or the flow itself)."""
    inner = getattr(flow, "flow", flow)
    if not isinstance(inner, RGFlow):
        raise ValueError("size transfer needs MERA flows (rgflow's hierarchical flow); got a "
                         f"{type(inner).__name__}")
    return inner


def level_offset(L_small: int, L_big: int) -> int:
    """``k`` with ``L_big = 2^k L_small`` (``ValueError`` naming both sizes otherwise)."""
    k, L = 0, L_small
    while L < L_big:
        L, k = 2 * L, k + 1
    if L != L_big:
        raise ValueError(f"L={L_big} is not allowed for a size transfer from L={L_small}: "
                         f"allowed L = {L_small}, {2 * L_small}, {4 * L_small}, ... (L_0 times a power of 2)")
    return k


@torch.no_grad()
def grow_flow(small, big, finest: str = "copy") -> dict:
    """Copy a trained flow ``small`` (on ``L_0``) into ``big`` (on ``2^k L_0``, same architecture) in place.

    Level ``l >= k`` of ``big`` gets level ``l - k`` of ``small`` (every sublayer's block and the
    prior's log-scale); levels ``< k`` get the finest level of ``small`` (``finest="copy"``) or keep
    their identity initialisation (``"identity"``; prior scale 1). Symmetrised mixtures are
    unwrapped on both sides. Returns ``{"offset": k, "copied": [(big level, small level), ...]}``.

    Raises:
        ValueError: naming the mismatch (sizes, number of sublayers per level, block shapes) or ``finest``.
    """
    if finest not in FINEST_INIT:
        raise ValueError(f"finest={finest!r} is not allowed; allowed: {', '.join(FINEST_INIT)}")
    s, b = _unwrap(small), _unwrap(big)
    ls, lb = s.layout, b.layout
    if ls.kind != "mera" or lb.kind != "mera":
        raise ValueError(f"size transfer needs MERA layouts, got {ls.kind!r} -> {lb.kind!r}")
    if (ls.block_size, ls.repeats) != (lb.block_size, lb.repeats):
        raise ValueError(f"size transfer needs the same block_size and repeats, got {ls.block_size}/{ls.repeats} -> "
                         f"{lb.block_size}/{lb.repeats}")
    k = level_offset(ls.L, lb.L)
    if lb.n_levels != ls.n_levels + k:
        raise ValueError(f"size transfer needs untruncated layouts: {ls.n_levels} levels on L={ls.L}, "
                         f"{lb.n_levels} on L={lb.L} (depth must not be set)")

    def by_level(flow):
        out: dict[int, list] = {}
        if any(not hasattr(sub, "transform") for sub in flow.sublayers):
            raise ValueError("size transfer needs block sublayers on every level (not ode-cnn levels)")
        for sub in flow.sublayers:
            out.setdefault(sub.level, []).append(sub.transform)
        return out

    # big level -> small level it starts from (None: keep the identity initialisation); the top maps to the top
    sources = {level: level - k if level >= k else (0 if finest == "copy" else None) for level in range(lb.n_levels + 1)}
    src, dst = by_level(s), by_level(b)
    copied = []
    for level in range(lb.n_levels):
        source = sources[level]
        if source is None:
            continue
        for t_big, t_small in zip(dst[level], src[source], strict=True):
            state = t_small.state_dict()
            mine = t_big.state_dict()
            if state.keys() != mine.keys() or any(state[n].shape != mine[n].shape for n in state):
                raise ValueError("size transfer needs the same block architecture (kind, n_couplings, hidden, layers, "
                                 "num_bins, channels) on both lattices")
            t_big.load_state_dict(state)
        copied.append((level, source))
    scale_s, scale_b = s.prior.log_scale, b.prior.log_scale
    if scale_s.shape[0] != scale_b.shape[0]:
        raise ValueError(f"size transfer needs the same channels, got {scale_s.shape[0]} -> {scale_b.shape[0]}")
    for level, source in sources.items():
        if source is not None:
            scale_b[:, level] = scale_s[:, source].to(scale_b)
    return {"offset": k, "copied": copied}
