"""The record every sampler returns: per-chain time series of primaries, acceptance and cost."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from rgflow.physics.observables import primaries

__all__ = ["ChainResult", "SeriesRecorder"]


class SeriesRecorder:
    """Collects the primaries of each recorded state of ``chains`` chains; ``stacked()`` -> ``[chains, n]``."""

    def __init__(self):
        self._series: dict[str, list] = {}

    def record(self, field: torch.Tensor) -> None:
        with torch.no_grad():
            for key, value in primaries(field).items():
                self._series.setdefault(key, []).append(value)

    def stacked(self) -> dict[str, np.ndarray]:
        return {k: np.stack(v, axis=1) for k, v in self._series.items()}


@dataclass
class ChainResult:
    """Output of a sampler run over ``chains`` independent chains of ``n_steps`` recorded steps.

    ``series`` maps primary names (:func:`rgflow.physics.observables.primaries`) to ``[chains, n]``.
    Costs are totals per chain over the recorded steps (warm-up excluded): ``grad_evals``
    (gradients of the action or of the latent effective action), ``action_evals`` (action
    evaluations, a sweep of local updates counts as one), ``seconds`` (wall time for all chains
    together).
    """

    sampler: str
    series: dict[str, np.ndarray]
    acceptance: float
    seconds: float
    n_steps: int
    chains: int
    grad_evals: int = 0
    action_evals: int = 0
    step_size: float | None = None
    final: torch.Tensor | None = field(default=None, repr=False)

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.n_steps

    @property
    def grad_evals_per_step(self) -> float:
        return self.grad_evals / self.n_steps
