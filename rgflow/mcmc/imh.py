r"""Flow independence Metropolis-Hastings (Albergo, Kanwar & Shanahan 2019).

Proposals ``x' ~ q`` independent of the state; accept with ``min(1, w(x') / w(x))``,
``w = exp(-S - ln q)``. Asymptotically exact for any ``q`` with full support, because ``ln q``
is exact.
"""
from __future__ import annotations

import numpy as np

__all__ = ["independence_metropolis"]


def independence_metropolis(log_w: np.ndarray, seed: int = 0) -> tuple[np.ndarray, float]:
    """Run IMH over a sequence of proposals with log weights ``log_w [N]``.

    Returns:
        ``(chain, acceptance)``: ``chain[i]`` is the index of the proposal the chain sits on
        after step ``i`` (``chain[0] = 0``), and the fraction of accepted proposals.
    """
    log_w = np.asarray(log_w, dtype=np.float64)
    if log_w.ndim != 1 or len(log_w) < 2 or not np.isfinite(log_w).all():
        raise ValueError("log_w must be a finite 1-d array with at least 2 entries")
    log_u = np.log(np.random.default_rng(seed).random(len(log_w)))
    chain = np.empty(len(log_w), dtype=np.int64)
    current, accepted = 0, 0
    chain[0] = 0
    for i in range(1, len(log_w)):
        if log_u[i] < log_w[i] - log_w[current]:
            current = i
            accepted += 1
        chain[i] = current
    return chain, accepted / (len(log_w) - 1)
