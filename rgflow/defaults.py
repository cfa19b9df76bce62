"""The one source of flow defaults, shared by the Python API (:func:`rgflow.flows.build_flow`),
the training config (:class:`rgflow.config.TrainConfig`) and the command line.

Names mean one thing everywhere: ``block`` is the block bijection's *kind* (``"spline"``),
``block_size`` the RG block side ``b`` (``Layout.block_size``, ``--block-size``),
``n_couplings`` the number of coupling layers per block (``--n-couplings``), and ``params`` the
physics couplings of the action (``m2``, ``lam``, ...).
"""
from __future__ import annotations

__all__ = ["FLOW_DEFAULTS", "CELL_BLOCK_DEFAULTS", "block_defaults", "default_block", "default_prior", "spline_range"]

#: Defaults of the lattice flow's architecture (the spline range depends on the action: :func:`spline_range`):
#: convolutional couplings of width 16 on every level of the MERA, one stack shared by all levels. They won
#: every comparison at equal wall time (``experiments/results/flows.json``: ESS 0.295 against the spline
#: blocks' 0.0146 at L = 16, 0.798 against 0.715 in the L = 8 demo setting; ``docs/scale.md``); eight couplings
#: per level beat four at L = 8, 16 and 32 and on the Ising model, at equal wall time (``docs/scale.md``).
FLOW_DEFAULTS = {
    "block": "conv",
    "block_size": 2,
    "n_couplings": 8,
    "hidden": 16,
    "layers": 2,
    "prior": "normal",
    "learn_level_scale": False,
}

#: Defaults of the blocks that act on one RG cell each (``spline``, ``affine``, ``ode``): the lattice default
#: before ``conv``, still the default of TEBD flows, of ``--ode-levels`` and of the image flows.
CELL_BLOCK_DEFAULTS = {"block": "spline", "n_couplings": 4, "hidden": 32, "learn_level_scale": True}


def default_block(flow: str = "mera", ode_levels: str | None = None) -> str:
    """The block kind a flow gets when none is asked for: ``conv`` on the MERA, ``spline`` on TEBD and flat
    flows and when some levels are neural ODEs (``ode_levels``), which ``conv`` does not combine with."""
    return FLOW_DEFAULTS["block"] if flow == "mera" and not ode_levels else CELL_BLOCK_DEFAULTS["block"]


def block_defaults(block: str) -> dict:
    """``{"n_couplings", "hidden", "learn_level_scale"}`` for a block kind: 8 couplings of width 16 and no
    per-level prior scales (they would tie the flow to one L) for ``conv``; 4 couplings of width 32 and learned
    level scales for the per-cell blocks."""
    source = FLOW_DEFAULTS if block == "conv" else CELL_BLOCK_DEFAULTS
    return {key: source[key] for key in ("n_couplings", "hidden", "learn_level_scale")}


def default_prior(action: str | None = None, params: dict | None = None) -> str:
    """The latent prior of a lattice flow for ``action`` (``params``: its resolved couplings): ``"normal-wall"``
    for ``phi4`` with ``lam > 0``, ``"normal"`` otherwise.

    A phi^4 field's tails fall like ``e^{-lambda phi^4}``, while the splines' unit-slope ends pass a normal
    prior's rare 5-6 sigma latents almost unchanged into single-site spikes that cost thousands of nats of
    action; the soft wall shrinks the worst from ~4200 to 200-500 nats at no cost in ESS or KL at L = 16 and 32,
    with a higher IMH acceptance at L = 64 (``docs/scale.md``). The free field (``phi4`` at ``lam = 0``
    included) and the Ising relaxation have Gaussian tails, which the normal prior matches; other actions were
    not measured.
    """
    return "normal-wall" if action == "phi4" and (params or {}).get("lam", 0) > 0 else FLOW_DEFAULTS["prior"]


def spline_range(action: str | None = None) -> tuple[int, float]:
    """``(num_bins, tail_bound)`` of the spline couplings for ``action``.

    The spline acts on ``[-tail_bound, tail_bound]`` and is the identity outside, so the interval
    must cover the field: ``|phi| < ~2`` for phi^4-type actions (8 bins on [-6, 6]), while the
    Ising relaxation's field sits near ``+-(c + 4 beta) ~ 3.6`` at T_c with tails to ~7 (12 bins
    on [-10, 10]).
    """
    return (12, 10.0) if action == "ising" else (8, 6.0)
