"""Validation of lattice field batches.

Every public function of :mod:`rgflow` that takes a field uses the layout ``[B, C, L, L]``:
batch, channels (1 for a real scalar, 2 for a complex field stored as real and imaginary
parts), and a square periodic lattice of side ``L``. Bad input is refused here with a message
that names the argument and what is allowed, rather than deep inside torch.
"""
from __future__ import annotations

import math

import torch

__all__ = ["check_field", "check_coupling"]


def check_field(
    phi: torch.Tensor,
    name: str = "phi",
    channels: int | None = None,
    L: int | None = None,
    finite: bool = True,
) -> torch.Tensor:
    """Check that ``phi`` is a floating field batch ``[B, C, L, L]`` and return it.

    Args:
        phi: the tensor to check.
        name: the argument's name, used in the error message.
        channels: the required channel count ``C`` (None: any).
        L: the required lattice side (None: any).
        finite: refuse NaN and infinite entries.

    Raises:
        ValueError: naming ``name``, the shape or dtype found and what is allowed.
    """
    if not isinstance(phi, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape [B, C, L, L], got {type(phi).__name__}")
    if phi.dim() != 4:
        raise ValueError(f"{name} must have shape [B, C, L, L] (4 dims), got shape {tuple(phi.shape)}")
    if not phi.is_floating_point():
        raise ValueError(f"{name} must be float32 or float64, got dtype {phi.dtype}")
    if phi.shape[-1] != phi.shape[-2]:
        raise ValueError(f"{name} must be on a square lattice [B, C, L, L], got {tuple(phi.shape)}")
    if channels is not None and phi.shape[1] != channels:
        raise ValueError(f"{name} must have C={channels} channel(s), got shape {tuple(phi.shape)}")
    if L is not None and phi.shape[-1] != L:
        raise ValueError(f"{name} must have lattice side L={L}, got shape {tuple(phi.shape)}")
    if finite and not bool(torch.isfinite(phi).all()):
        bad = int((~torch.isfinite(phi)).flatten(1).any(1).sum())
        raise ValueError(f"{name} contains NaN or infinite values (in {bad} of {phi.shape[0]} configurations)")
    return phi


def check_coupling(name: str, value, positive: bool = False, nonnegative: bool = False) -> float:
    """Return ``value`` as a finite float, or raise ``ValueError`` naming the coupling."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if positive and v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    if nonnegative and v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v
