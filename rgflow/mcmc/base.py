"""The record every sampler returns: per-chain time series of primaries, acceptance and cost."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["ChainResult", "SeriesRecorder"]


class SeriesRecorder:
    """Collects the primaries of each recorded state of ``chains`` chains, and every
    ``keep_every``-th configuration (0: none).

    ``record(values, field)``: the primaries ``{name: [chains]}`` of the state (of the field or of
    Ising spins drawn from it); the kept configuration is ``field [chains, C, L, L]`` (may be None
    when nothing is kept). ``stacked()`` -> ``{name: [chains, n]}``, ``kept()`` ->
    ``[chains, n_kept, C, L, L]`` float32 or None.
    """

    def __init__(self, keep_every: int = 0):
        if keep_every < 0:
            raise ValueError(f"keep_every must be >= 0 (0 keeps no configurations), got {keep_every}")
        self.keep_every = keep_every
        self._series: dict[str, list] = {}
        self._kept: list[torch.Tensor] = []
        self._count = 0

    def record(self, values: dict[str, np.ndarray], field: torch.Tensor | None) -> None:
        for key, value in values.items():
            self._series.setdefault(key, []).append(value)
        if self.keep_every and self._count % self.keep_every == 0:
            self._kept.append(field.detach().to("cpu", torch.float32))
        self._count += 1

    def stacked(self) -> dict[str, np.ndarray]:
        return {k: np.stack(v, axis=1) for k, v in self._series.items()}

    def kept(self) -> torch.Tensor | None:
        return torch.stack(self._kept, dim=1) if self._kept else None

    def result(self, sampler: str, acceptance: float, seconds: float, **costs) -> "ChainResult":
        """The :class:`ChainResult` of what was recorded (series, kept configurations, n, chains)."""
        series = self.stacked()
        chains = next(iter(series.values())).shape[0]
        return ChainResult(sampler, series, acceptance, seconds, self._count, chains, configs=self.kept(),
                           keep_every=self.keep_every, **costs)


@dataclass
class ChainResult:
    """Output of a sampler run over ``chains`` independent chains of ``n_steps`` recorded steps.

    ``series`` maps primary names (:func:`rgflow.physics.observables.primaries`) to ``[chains, n]``.
    Costs are totals per chain over the recorded steps (warm-up excluded): ``grad_evals``
    (gradients of the action or of the latent effective action), ``action_evals`` (action
    evaluations, a sweep of local updates counts as one), ``seconds`` (wall time for all chains
    together), ``divergences`` (rejected divergent HMC trajectories, summed over chains). ``configs``: every ``keep_every``-th field configuration, ``[chains, n_kept, C, L, L]``
    (None when none were kept).
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
    divergences: int = 0
    configs: torch.Tensor | None = field(default=None, repr=False)
    keep_every: int = 0

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.n_steps

    @property
    def grad_evals_per_step(self) -> float:
        return self.grad_evals / self.n_steps
