r"""A flat, non-hierarchical baseline: checkerboard affine couplings with circular CNNs.

This is the flow of the lattice-field-theory tutorial of Albergo et al. (2021): ``n_layers``
affine couplings alternating the checkerboard parity, each conditioner a stack of 3x3 circular
convolutions ``C -> 8 -> 8 -> 2C`` with LeakyReLU and a final Tanh, default PyTorch init.

Generation (latent -> data, :meth:`inverse`) is the tutorial's map
``x_a = z_a e^{s(z_f)} + t(z_f)`` on the active sites ``a`` given the frozen ones ``f``.
"""
from __future__ import annotations

import torch
from nflows.transforms.base import Transform
from torch import nn

from rgflow.flows.priors import Prior
from rgflow.flows.rgflow import FieldFlow

__all__ = ["CheckerboardConvCoupling", "build_flat_flow"]


class CheckerboardConvCoupling(Transform):
    """Affine coupling on a checkerboard sublattice with a translation-equivariant CNN conditioner.

    Args:
        L: lattice side; parity: which checkerboard sublattice is frozen (0 or 1).
        channels: field components; hidden: CNN widths; kernel: odd kernel size.
    """

    def __init__(self, L: int, parity: int, channels: int = 1, hidden=(8, 8), kernel: int = 3):
        super().__init__()
        x, y = torch.meshgrid(torch.arange(L), torch.arange(L), indexing="ij")
        self.register_buffer("frozen", ((x + y) % 2 == parity).to(torch.get_default_dtype()), persistent=False)
        dims = [channels, *hidden]
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [nn.Conv2d(a, b, kernel, padding=kernel // 2, padding_mode="circular"), nn.LeakyReLU()]
        mods += [nn.Conv2d(dims[-1], 2 * channels, kernel, padding=kernel // 2, padding_mode="circular"), nn.Tanh()]
        self.net = nn.Sequential(*mods)
        self.channels = channels

    def _s_t(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        frozen = self.frozen.to(x.dtype)
        out = self.net(x * frozen)
        active = 1 - frozen
        return out[:, : self.channels] * active, out[:, self.channels :] * active, active

    def forward(self, inputs, context=None):
        s, t, active = self._s_t(inputs)
        z = inputs + active * ((inputs - t) * torch.exp(-s) - inputs)
        return z, -s.sum(dim=(1, 2, 3))

    def inverse(self, inputs, context=None):
        s, t, active = self._s_t(inputs)
        x = inputs + active * (inputs * torch.exp(s) + t - inputs)
        return x, s.sum(dim=(1, 2, 3))


def build_flat_flow(L: int, channels: int = 1, n_layers: int = 16, hidden=(8, 8), kernel: int = 3) -> FieldFlow:
    """The tutorial baseline: ``n_layers`` checkerboard couplings and a standard normal prior."""
    layers = [CheckerboardConvCoupling(L, i % 2, channels, hidden, kernel) for i in range(n_layers)]
    return FieldFlow(layers, Prior(L, channels))
