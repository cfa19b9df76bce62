r"""The orthonormal Haar map on the Layout: RG coordinates with no parameters.

The exact holographic mapping of a lattice (Qi, arXiv:1309.6282) as a block kind of the one
bijection contract. On every decimator block each ``2 x 2`` cell ``(a, b; c, d)`` (sites
row-major) is mapped by the orthonormal Hadamard matrix

``u_kept = (a + b + c + d) / 2`` (twice the cell average, stored at the cell's top-left site,
which moves on to the next level), ``(a - b + c - d) / 2``, ``(a + b - c - d) / 2`` and
``(a - b - c + d) / 2`` (the three detail combinations, stored at the other three sites, which
become this level's bulk latents). Disentanglers are the identity. The whole map is orthogonal:
``ln|det| = 0`` in both directions, ``u`` is stored in place like a flow's latents, and
``layout.split(u)`` gives the levels. :func:`rgflow.flows.rgflow.haar_flow` builds it as an
:class:`~rgflow.flows.rgflow.RGFlow` with zero parameters, so "RG coordinates" are always an ``RGFlow``.

With the orthonormal map an isotropic Gaussian in ``u`` is an isotropic Gaussian in ``x``.
"""
from __future__ import annotations

import torch
from nflows.transforms.base import Transform

__all__ = ["HaarBlock", "IdentityBlock"]


class IdentityBlock(Transform):
    """``y = x``, ``ln|det| = 0``: the disentangler of the Haar map."""

    def forward(self, inputs, context=None):
        return inputs, inputs.new_zeros(inputs.shape[0])

    def inverse(self, inputs, context=None):
        return inputs, inputs.new_zeros(inputs.shape[0])

    def feature_major(self, u, inverse=False):
        """Feature-major path (:func:`rgflow.flows.base.block_map`): ``[F, N]`` unchanged."""
        return u, u.new_zeros(u.shape[1])


class HaarBlock(Transform):
    r"""Orthonormal Haar transform of every ``2 x 2`` cell of a ``b x b`` block, per channel.

    Acts on ``[N, C b^2]`` (channel-major features, sites row-major in the block, as
    :class:`~rgflow.flows.base.BlockSublayer` gathers them). The matrix ``H`` (``[C b^2, C b^2]``,
    orthogonal and symmetric, ``H^2 = 1``) is built once; ``forward = inverse = x H``.
    """

    def __init__(self, block_size: int, channels: int = 1):
        super().__init__()
        b = block_size
        if b < 2 or b % 2:
            raise ValueError(f"block_size={b!r} is not allowed for the Haar block: an even integer >= 2")
        cell = 0.5 * torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float64)
        H = torch.zeros(b * b, b * b, dtype=torch.float64)
        for i in range(0, b, 2):
            for j in range(0, b, 2):
                sites = [i * b + j, i * b + j + 1, (i + 1) * b + j, (i + 1) * b + j + 1]  # top-left is kept
                H[sites[0], sites] = cell[0]
                for k in range(1, 4):
                    H[sites[k], sites] = cell[k]
        full = torch.block_diag(*[H] * channels)
        self.register_buffer("matrix", full.T.contiguous(), persistent=False)  # y = x @ H^T

    def _multiply(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return inputs @ self.matrix.to(inputs.dtype), inputs.new_zeros(inputs.shape[0])

    def forward(self, inputs, context=None):
        return self._multiply(inputs)

    def inverse(self, inputs, context=None):  # H is symmetric and orthogonal: its own inverse
        return inputs @ self.matrix.T.to(inputs.dtype), inputs.new_zeros(inputs.shape[0])

    def feature_major(self, u, inverse=False):
        """Feature-major path (:func:`rgflow.flows.base.block_map`): ``u [F, N] -> H u`` (``H^T u`` inverse)."""
        m = self.matrix.to(u.dtype)
        return (m if inverse else m.T) @ u, u.new_zeros(u.shape[1])
