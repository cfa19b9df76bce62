r"""The density type every model family implements: flows, symmetrised mixtures, image flows,
diffusion models and the flow-diffusion hybrid.

A :class:`Density` is a normalised probability density over fields ``x [B, C, L, L]`` that can be
sampled with the exact log-density of each sample:

* ``sample(n, generator=None) -> (x [n, C, L, L], ln q(x) [n])``;
* ``log_prob(x [B, C, L, L]) -> ln q(x) [B]`` (the same ``ln q`` for the sampler's own samples);
* ``channels``, ``L`` and ``layout``: the field's components and side, and the RG hierarchy
  (:class:`~rgflow.layout.Layout`) the model lives on (``None`` for models without one, such as the
  flat flow).

The evaluator (:func:`rgflow.train.diagnostics.evaluate`: ESS, ``ln Z``, ``F_var``, IMH,
reweighting), the IMH sampler and the reports are written once against this type; one contract test
(``tests/test_density_contract.py``) runs over every family.
"""
from __future__ import annotations

import abc

import torch
from torch import nn

__all__ = ["Density"]


class Density(nn.Module, metaclass=abc.ABCMeta):
    """Abstract base of every model family (module docstring)."""

    channels: int
    L: int

    @property
    def layout(self):
        """The RG hierarchy the model lives on (``None``: none)."""
        return None

    @abc.abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` fields and their exact ``ln q``: ``(x [n, C, L, L], ln q [n])``."""

    @abc.abstractmethod
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``ln q(x)``: ``[B, C, L, L] -> [B]``."""
