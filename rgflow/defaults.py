"""The one source of flow defaults, shared by the Python API (:func:`rgflow.flows.build_flow`),
the training config (:class:`rgflow.config.TrainConfig`) and the command line.

Names mean one thing everywhere: ``block`` is the block bijection's *kind* (``"spline"``),
``block_size`` the RG block side ``b`` (``Layout.block_size``, ``--block-size``),
``n_couplings`` the number of coupling layers per block (``--n-couplings``), and ``params`` the
physics couplings of the action (``m2``, ``lam``, ...).
"""
from __future__ import annotations

__all__ = ["FLOW_DEFAULTS", "spline_range"]

#: Defaults of the flow's architecture (the spline range depends on the action: :func:`spline_range`).
FLOW_DEFAULTS = {
    "block": "spline",
    "block_size": 2,
    "n_couplings": 4,
    "hidden": 32,
    "layers": 2,
    "prior": "normal",
    "learn_level_scale": True,
}


def spline_range(action: str | None = None) -> tuple[int, float]:
    """``(num_bins, tail_bound)`` of the spline couplings for ``action``.

    The spline acts on ``[-tail_bound, tail_bound]`` and is the identity outside, so the interval
    must cover the field: ``|phi| < ~2`` for phi^4-type actions (8 bins on [-6, 6]), while the
    Ising relaxation's field sits near ``+-(c + 4 beta) ~ 3.6`` at T_c with tails to ~7 (12 bins
    on [-10, 10]).
    """
    return (12, 10.0) if action == "ising" else (8, 6.0)
