r"""The bijection contract and the sublayer that applies one block bijection to every block.

Contract (shared with nflows, whose ``Transform`` every rgflow bijection subclasses):

* ``forward(x) -> (z, logabsdet)`` maps **data -> latent** and returns
  ``logabsdet = ln |det dz/dx|`` per batch row, shape ``[B]``;
* ``inverse(z) -> (x, logabsdet)`` maps latent -> data with ``ln |det dx/dz|``,
  so ``forward`` and ``inverse`` log-dets of corresponding points sum to zero.

The density of the data under a flow with prior ``p`` is therefore
``ln q(x) = ln p(z) + logabsdet_forward(x)``.
"""
from __future__ import annotations

import torch
from nflows.transforms.base import Transform

from rgflow.layout import Sublayer

__all__ = ["Transform", "BlockSublayer", "block_map", "device_of", "on_sublattice"]


def device_of(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module with neither)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def on_sublattice(x: torch.Tensor, spacing: int, fn) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a field map ``fn: y [B, C, m, m] -> (y', ln|det| [B])`` to the sites of spacing ``spacing``
    (``y = x[:, :, ::s, ::s]``, ``m = L / s``), the other sites unchanged: ``x -> (x', ln|det| [B])``."""
    y, logdet = fn(x[:, :, ::spacing, ::spacing])
    if spacing == 1:
        return y, logdet
    out = x.clone()
    out[:, :, ::spacing, ::spacing] = y
    return out, logdet


def block_map(transform: Transform, u: torch.Tensor, inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a block bijection to feature-major blocks ``u [F, N] -> (v [F, N], ln|det| [N])``.

    Uses the transform's own ``feature_major`` path where it has one (couplings, stacks, Haar), else
    its nflows ``forward``/``inverse`` on ``u.T``.
    """
    fast = getattr(transform, "feature_major", None)
    if fast is not None:
        return fast(u, inverse)
    v, logdet = (transform.inverse if inverse else transform)(u.T)
    return v.T, logdet


class BlockSublayer(Transform):
    r"""Apply one block bijection ``f: R^{C b^2} -> R^{C b^2}`` to all blocks of a sublayer.

    The same weights act on every block (translation invariance at the block stride).
    Block features are ordered channel-major: feature ``c * b^2 + j`` is channel ``c`` of the
    block's ``j``-th site (row-major in the block).

    Args:
        sublayer: the :class:`~rgflow.layout.Sublayer` (its ``index: [n_blocks, b^2]``).
        transform: an nflows-compatible transform on ``[N, C b^2]`` with per-row log-det.

    Shapes: ``x: [B, C, L, L] -> (y: [B, C, L, L], logabsdet: [B])``.
    """

    def __init__(self, sublayer: Sublayer, transform: Transform):
        super().__init__()
        self.level, self.role = sublayer.level, sublayer.role
        self.register_buffer("index", sublayer.index.clone(), persistent=False)
        sites = sublayer.index.flatten()  # blocks tile the sublattice once: distinct sites
        #: the sublayer touches every site (the finest level): write back by a permutation, not into a copy
        self.full = len(sites) == int(sites.max()) + 1
        self.register_buffer("sites", sites, persistent=False)
        self.register_buffer("unsort", torch.argsort(sites), persistent=False)
        self.transform = transform

    def _map(self, x: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        B, C = x.shape[:2]
        n_blocks, k = self.index.shape
        flat = x.reshape(B, C, -1)
        # feature-major blocks: u[c * k + j, b * n_blocks + n] = x[b, c, index[n, j]]
        u = flat.index_select(2, self.sites).view(B, C, n_blocks, k).permute(1, 3, 0, 2).reshape(C * k, B * n_blocks)
        v, logdet = block_map(self.transform, u, inverse)
        v = v.view(C, k, B, n_blocks).permute(2, 0, 3, 1).reshape(B, C, n_blocks * k)
        out = v.index_select(2, self.unsort) if self.full else flat.index_copy(2, self.sites, v)
        return out.reshape(x.shape), logdet.view(B, n_blocks).sum(1)

    def forward(self, inputs: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._map(inputs, inverse=False)

    def inverse(self, inputs: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._map(inputs, inverse=True)
