"""Named lattice models: an action with bound couplings, its channel count and exact references.

``make_action("phi4", m2=-4, lam=8)`` returns an :class:`Action`, a callable
``[B, C, L, L] -> [B]`` that the trainer, the samplers and the CLI share. ``ln Z`` values
are reported in a model's *reporting frame*: the action exactly as its docstring writes it,
except for the Ising relaxation, where the frame is the Ising model itself
(``ln Z_Ising = ln Z_relax + lnZ_offset(L)``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from rgflow.physics import actions as A
from rgflow.physics.exact import free_field_lnZ, ising_lnZ_exact
from rgflow.physics.fields import check_coupling, check_field
from rgflow.physics.observables import ising_spins

__all__ = ["Action", "make_action", "ACTION_PARAMS"]

#: Action name -> (its couplings with defaults, number of channels).
ACTION_PARAMS: dict[str, tuple[dict[str, float], int]] = {
    "free": ({"m2": 1.0}, 1),
    "phi4": ({"m2": -4.0, "lam": 8.0}, 1),
    "phi4-hopping": ({"kappa": 0.27, "lam": 0.022}, 1),
    "complex-phi4": ({"t": 1.0, "mu": -2.0, "lam": 1.0}, 2),
    "ising": ({"T": 2.269185314213022, "shift": 0.1}, 1),
}

_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "free": A.free_action,
    "phi4": A.phi4_action,
    "phi4-hopping": A.phi4_hopping_action,
    "complex-phi4": A.complex_phi4_action,
    "ising": A.ising_relaxed_action,
}

_POSITIVE = {"free": ("m2",), "phi4-hopping": ("kappa",), "ising": ("T", "shift")}
_NONNEGATIVE = {"phi4": ("lam",), "phi4-hopping": ("lam",), "complex-phi4": ("lam",)}


@dataclass(frozen=True)
class Action:
    """A model: ``S(phi) = fn(phi, **params)`` with ``channels`` field components."""

    name: str
    params: dict[str, float] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return ACTION_PARAMS[self.name][1]

    def __call__(self, phi: torch.Tensor) -> torch.Tensor:
        check_field(phi, channels=self.channels)
        return self.evaluate(phi)

    def evaluate(self, phi: torch.Tensor) -> torch.Tensor:
        """``S(phi)`` without input validation, for hot loops that validated once (a non-finite
        field gives a non-finite action instead of an error)."""
        return _FUNCTIONS[self.name](phi, **self.params, check=False)

    def local_form(self) -> tuple[float, float, float] | None:
        """Coefficients ``(a, b, c)`` of the terms of ``S`` that involve one site ``x``:

        ``e(phi_x) = a |phi_x|^2 + b |phi_x|^4 - c phi_x . h_x``, ``h_x = sum_{+-mu} phi(x +- mu)``,
        so a change of ``phi_x`` alone changes ``S`` by ``e(new) - e(old)``. ``None`` for the
        non-local Ising relaxation.
        """
        p = self.params
        if self.name == "free":
            return 2.0 + 0.5 * p["m2"], 0.0, 1.0
        if self.name == "phi4":
            return 4.0 + p["m2"], p["lam"], 2.0
        if self.name == "phi4-hopping":
            return 1.0 - 2.0 * p["lam"], p["lam"], 2.0 * p["kappa"]
        if self.name == "complex-phi4":
            return p["mu"], p["lam"], 2.0 * p["t"]
        return None

    def lnZ_offset(self, L: int) -> float:
        """Constant added to ``ln Z`` of ``exp(-S)`` to reach the reporting frame."""
        if self.name == "ising":
            return A.ising_lnZ_offset(L, self.params["T"], self.params["shift"])
        return 0.0

    def lnZ_exact(self, L: int) -> float | None:
        """Exact ``ln Z`` in the reporting frame, where one is known (free field, Ising)."""
        if self.name == "free":
            return free_field_lnZ(L, self.params["m2"], channels=self.channels)
        if self.name == "ising":
            return ising_lnZ_exact(L, self.params["T"])
        return None

    def measurement_field(self, phi: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The field observables are measured on: ``phi`` itself, or Ising spins drawn from ``P(s|x)``."""
        return ising_spins(phi, generator) if self.name == "ising" else phi


def make_action(name: str, **params: float) -> Action:
    """Build a named action; unspecified couplings take the defaults in :data:`ACTION_PARAMS`.

    Raises:
        ValueError: unknown ``name`` or coupling, or a coupling outside its allowed range.
    """
    if name not in ACTION_PARAMS:
        raise ValueError(f"unknown action {name!r}; allowed: {', '.join(ACTION_PARAMS)}")
    defaults, _ = ACTION_PARAMS[name]
    unknown = set(params) - set(defaults)
    if unknown:
        raise ValueError(
            f"action {name!r} has no coupling {', '.join(sorted(unknown))}; its couplings: {', '.join(defaults)}"
        )
    bound = {}
    for key, default in defaults.items():
        value = params.get(key, default)
        bound[key] = check_coupling(
            f"{key} (action {name})",
            value,
            positive=key in _POSITIVE.get(name, ()),
            nonnegative=key in _NONNEGATIVE.get(name, ()),
        )
    return Action(name, bound)
