r"""Symmetrised flows: the exact mixture of a flow over a finite symmetry group of the action.

For a group ``G`` of volume-preserving field maps (sign flip, lattice rotations and reflections)
under which the action is invariant, ``S(g x) = S(x)``,

    ``q_G(x) = |G|^{-1} sum_{g in G} q(g x)``

is a normalised density (each ``x -> g x`` has ``|det| = 1``) invariant under ``G``, and

    ``KL(q_G || p) <= KL(q || p)``

(convexity), with equality only when ``q`` is already invariant. A flow that has collapsed onto one
sector of a spontaneously broken (or nearly broken) Z2 symmetry misses ``ln 2`` of ``ln Z``; its
Z2-symmetrised mixture covers both sectors. Sampling: ``x_0 ~ q``, then ``x = g x_0`` with ``g``
uniform; because ``{h g} = G``, ``ln q_G(x) = logsumexp_h ln q(h x_0) - ln |G|`` needs ``|G| - 1``
extra density evaluations, and it carries gradients (reverse-KL training of the mixture).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from rgflow.density import Density

__all__ = ["SymmetrizedFlow", "SYMMETRY_GROUPS", "group_elements", "check_invariance"]


def _identity(x):
    return x


def _d4() -> list[Callable]:
    """The 8 rotations and reflections of the square lattice (identity first)."""
    out = []
    for k in range(4):
        for flip in (False, True):
            def g(x, k=k, flip=flip):
                y = torch.rot90(x, k, dims=(-2, -1)) if k else x
                return y.transpose(-2, -1) if flip else y
            out.append(g)
    out[0] = _identity
    return out


def _z2() -> list[Callable]:
    return [_identity, torch.neg]


def _z2xd4() -> list[Callable]:
    return [g if s is _identity else (lambda x, g=g: -g(x)) for s in _z2() for g in _d4()]


#: group name -> its elements (callables on ``[B, C, L, L]``, identity first)
SYMMETRY_GROUPS: dict[str, Callable[[], list[Callable]]] = {"z2": _z2, "d4": _d4, "z2xd4": _z2xd4}


def group_elements(group: str) -> list[Callable]:
    """The elements of a named group as field maps ``[B, C, L, L] -> [B, C, L, L]`` (identity first)."""
    if group not in SYMMETRY_GROUPS:
        raise ValueError(f"mixture={group!r} is not allowed; allowed: {', '.join(SYMMETRY_GROUPS)}")
    return SYMMETRY_GROUPS[group]()


def check_invariance(action, group: str, L: int, channels: int, scale: float = 1.5) -> None:
    """Refuse (``ValueError``) a group under which ``action`` is not invariant, tested on random fields."""
    x = scale * torch.randn(8, channels, L, L, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    S = action(x)
    for k, g in enumerate(group_elements(group)):
        if not torch.allclose(action(g(x)), S, rtol=1e-9, atol=1e-9):
            raise ValueError(f"mixture={group!r}: the action {action.name} is not invariant under element {k} "
                             f"of the group; allowed only for symmetries of the action")


class SymmetrizedFlow(Density):
    r"""``q_G(x) = |G|^{-1} sum_g q(g x)`` for a :class:`~rgflow.flows.rgflow.FieldFlow` ``q`` and a group ``G``.

    A :class:`~rgflow.density.Density`: :meth:`sample` ``(n) -> (x, ln q_G(x))`` and
    :meth:`log_prob` ``(x) -> ln q_G(x)``, both exact (``|G|`` flow evaluations per field).
    ``prior``, ``layout``, ``forward``/``inverse``/``apply`` are the underlying flow's (the latent
    samplers and probes use the bijection itself).

    Args:
        flow: the flow ``q``.
        group: ``"z2"`` (sign flip), ``"d4"`` (rotations and reflections of the lattice) or
            ``"z2xd4"`` (both, 16 elements).
    """

    def __init__(self, flow: nn.Module, group: str = "z2"):
        super().__init__()
        self.elements = group_elements(group)
        self.group, self.flow = group, flow
        self.channels, self.L = flow.channels, flow.L

    @property
    def prior(self):
        return self.flow.prior

    @property
    def layout(self):
        return self.flow.layout

    def forward(self, inputs, context=None):
        """The underlying flow's bijection, data -> latent (not the mixture)."""
        return self.flow(inputs)

    def inverse(self, inputs, context=None):
        """The underlying flow's bijection, latent -> data (not the mixture)."""
        return self.flow.inverse(inputs)

    def apply(self, inputs, inverse: bool = False):
        return self.flow.apply(inputs, inverse=inverse)

    def _mix(self, log_qs: list[torch.Tensor]) -> torch.Tensor:
        return torch.logsumexp(torch.stack(log_qs), dim=0) - math.log(len(self.elements))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``ln q_G(x)``: ``[B, C, L, L] -> [B]``."""
        return self._mix([self.flow.log_prob(g(x)) for g in self.elements])

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x = g x_0`` with ``x_0 ~ q`` and ``g`` uniform in ``G``: ``(x [n, C, L, L], ln q_G(x) [n])``."""
        x0, log_q0 = self.flow.sample(n, generator=generator)
        images = [g(x0) for g in self.elements[1:]]
        log_q = self._mix([log_q0] + [self.flow.log_prob(y) for y in images])
        pick = torch.randint(len(self.elements), (n,), generator=generator, device=x0.device)
        x = x0
        for k, y in enumerate(images, start=1):
            x = torch.where((pick == k).view(-1, 1, 1, 1), y, x)
        return x, log_q
