r"""The RG hierarchy: which sites each level touches and which become bulk latents.

One :class:`Layout` owns every index of the multiscale (MERA-like) network. The flow, the
probes, the samplers and the demos read indices from it; nobody recomputes them.

MERA layout (Li & Wang 2018; Hu et al. 2020), lattice ``L x L``, blocks ``b x b``
(``b = block_size``, even):

* Level ``l = 0, 1, ...`` acts on the sublattice of spacing ``s = 2^l`` (side ``m = L / 2^l``).
  It applies a *disentangler* sublayer on ``b x b`` blocks of that sublattice shifted by
  ``b/2`` sublattice steps, then a *decimator* sublayer on aligned blocks (``repeats`` times
  each, alternating). Blocks of a sublayer tile the sublattice exactly once (periodically).
* After level ``l`` the sites with even sublattice coordinates (one per ``2 x 2`` cell, i.e.
  ``(b/2)^2`` per block) move on to level ``l + 1``; the others become *level-l bulk latents*,
  kept in place: the latent field ``z`` has the shape of ``x``.
* Levels continue while ``m`` is a multiple of ``b`` (and up to ``depth`` levels); the sites
  still active after the last level are the *top* latents, level ``n_levels``.

For ``L = 8``, ``b = 2``: 48 / 12 / 3 / 1 latents from fine to top.

The TEBD variant (``kind="tebd"``) has no decimation: ``depth`` levels of disentangler and
decimator sublayers, all on the full lattice; every site is a top latent.

Index conventions: sites are flattened row-major, ``i = x * L + y``; a block's sites are
listed row-major in block coordinates; gathering ``x.reshape(B, C, V)[:, :, index]`` gives
``[B, C, n_blocks, b*b]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Layout", "Sublayer"]


@dataclass(frozen=True)
class Sublayer:
    """One sublayer: ``index[n_blocks, b*b]`` flat site indices of the blocks it acts on."""

    level: int
    role: str  # "disentangler" or "decimator"
    spacing: int
    index: torch.Tensor


def _allowed_sizes(block: int) -> str:
    return ", ".join(str(block * k) for k in range(1, 6)) + ", ... (positive multiples of the block size)"


class Layout:
    """RG hierarchy of an ``L x L`` periodic lattice.

    Args:
        L: lattice side, a positive multiple of ``block_size``. The number of levels
            (:attr:`n_levels`) is how often ``L`` halves while staying a multiple of ``block_size``:
            ``L = b 2^n`` gives ``n + 1`` levels and one top site for ``b = 2``.
        block_size: block side ``b`` (even, >= 2). Default 2 (NeuralRG); RG-Flow uses 4.
        kind: ``"mera"`` (default) or ``"tebd"`` (no decimation).
        depth: MERA: at most this many levels (truncation; remaining sites are top latents).
            TEBD: the number of levels (required).
        repeats: disentangler/decimator pairs per level.

    Raises:
        ValueError: naming the bad argument and the allowed values.
    """

    def __init__(self, L: int, block_size: int = 2, kind: str = "mera", depth: int | None = None, repeats: int = 1):
        block = block_size
        if isinstance(block, bool) or not isinstance(block, int) or block < 2 or block % 2:
            raise ValueError(f"block_size={block!r} is not allowed: block_size must be an even integer >= 2 (e.g. 2 or 4)")
        if isinstance(L, bool) or not isinstance(L, int) or L < block or L % block:
            raise ValueError(f"L={L!r} is not allowed for block_size={block}: allowed L = {_allowed_sizes(block)}")
        if kind not in ("mera", "tebd"):
            raise ValueError(f"kind={kind!r} is not allowed; allowed: 'mera', 'tebd'")
        if depth is not None and (not isinstance(depth, int) or depth < 1):
            raise ValueError(f"depth={depth!r} is not allowed: depth must be a positive integer or None")
        if kind == "tebd" and depth is None:
            raise ValueError("depth is required for kind='tebd' (the number of levels), e.g. depth=4")
        if not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats={repeats!r} is not allowed: repeats must be a positive integer")
        self.L, self.block_size, self.kind, self.repeats = L, block, kind, repeats
        self.V = L * L

        spacings = []
        if kind == "mera":
            s = 1
            while (L // s) % block == 0 and (depth is None or len(spacings) < depth):
                spacings.append(s)
                s *= 2
        else:
            spacings = [1] * depth
        self.n_levels = len(spacings)
        self.top_level = self.n_levels

        level = torch.full((L, L), self.top_level, dtype=torch.long)
        sublayers: list[Sublayer] = []
        for lvl, s in enumerate(spacings):
            for _ in range(repeats):
                for role, offset in (("disentangler", block // 2), ("decimator", 0)):
                    sublayers.append(Sublayer(lvl, role, s, self._block_index(s, offset)))
            if kind == "mera":
                active = torch.zeros(L, L, dtype=torch.bool)
                active[::s, ::s] = True
                kept = torch.zeros(L, L, dtype=torch.bool)
                kept[:: 2 * s, :: 2 * s] = True
                level[active & ~kept] = lvl
        self.sublayers: tuple[Sublayer, ...] = tuple(sublayers)
        #: ``[L, L]`` level of the latent stored at each site (``n_levels`` = top).
        self.level_of_site: torch.Tensor = level
        flat = level.flatten()
        #: Flat site indices of the latents of each level, ``n_levels + 1`` entries, row-major order.
        self.level_sites: tuple[torch.Tensor, ...] = tuple(
            torch.nonzero(flat == lvl).flatten() for lvl in range(self.n_levels + 1)
        )

    def _block_index(self, spacing: int, offset: int) -> torch.Tensor:
        """``[n_blocks, b*b]`` flat indices of ``b x b`` blocks on the sublattice of ``spacing``."""
        m, b = self.L // spacing, self.block_size
        corners = (torch.arange(0, m, b) + offset) % m  # sublattice coordinates
        local = torch.arange(b)
        rows = (corners[:, None, None, None] + local[None, None, :, None]) % m  # [nb1, 1, b, 1]
        cols = (corners[None, :, None, None] + local[None, None, None, :]) % m  # [1, nb2, 1, b]
        flat = (rows * spacing) * self.L + cols * spacing
        return flat.reshape(-1, b * b)

    # ------------------------------------------------------------------ per-level views
    @property
    def n_latents(self) -> tuple[int, ...]:
        """Number of latents per level, fine to top (``n_levels + 1`` entries)."""
        return tuple(len(ix) for ix in self.level_sites)

    @property
    def block_sites(self) -> int:
        """Sites per block, ``b * b``."""
        return self.block_size * self.block_size

    @property
    def translation_period(self) -> int:
        """Smallest shift ``a`` such that rolling ``x`` by ``a`` (either axis) permutes the blocks of every
        sublayer among themselves and the latents within each level.

        A flow on this layout with a per-level i.i.d. prior then has ``q(roll(x, a)) = q(x)``:
        ``b 2^{n-1}`` for MERA with ``n`` levels (``2^n`` top-site spacing when that is larger),
        ``b`` for TEBD.
        """
        if self.kind == "tebd" or self.n_levels == 0:
            return self.block_size if self.kind == "tebd" else 1
        top_spacing = 2**self.n_levels
        return max(self.block_size * 2 ** (self.n_levels - 1), top_spacing)

    def decimator_kept(self) -> torch.Tensor:
        """Block-local positions (``[ (b/2)^2 ]``) of the sites that move on after a decimator."""
        local = torch.arange(self.block_sites).reshape(self.block_size, self.block_size)
        return local[::2, ::2].flatten()

    def light_cone(self, mask: torch.Tensor) -> torch.Tensor:
        """Latent sites whose value can change the boundary sites in ``mask``: ``bool [L, L] -> bool [L, L]``.

        Generation applies the sublayers coarse to fine, and a block's outputs depend on all its
        inputs, so the dependency set of ``mask`` grows by every block that meets it, sublayer by
        sublayer from the finest (the causal cone of Hu et al. 2020, O(log L) latents per level
        beyond the mask's own size). Latents outside the cone have ``dx_mask/dz = 0`` exactly; inside it
        the dependence is generic (exact when every block output depends on every block input).
        """
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (self.L, self.L):
            raise ValueError(f"mask must be a bool tensor of shape [{self.L}, {self.L}]")
        cone = mask.flatten().clone()
        for sub in self.sublayers:
            hit = cone[sub.index].any(dim=1)  # [n_blocks]
            cone[sub.index[hit].flatten()] = True
        return cone.reshape(self.L, self.L)

    def bulk_coordinates(self) -> torch.Tensor:
        """``[V, 3]`` rows ``(level, x, y)`` of every latent, in :meth:`split` order."""
        idx = torch.cat(self.level_sites)
        lvl = torch.cat([torch.full_like(ix, k) for k, ix in enumerate(self.level_sites)])
        return torch.stack([lvl, idx // self.L, idx % self.L], dim=1)

    def _check(self, z: torch.Tensor, name: str) -> None:
        if not isinstance(z, torch.Tensor) or z.dim() != 4 or tuple(z.shape[-2:]) != (self.L, self.L):
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"{name} must have shape [B, C, {self.L}, {self.L}] for this layout, got {shape}")

    def split(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Per-level latents: ``[B, C, L, L] -> [[B, C, n_0], ..., [B, C, n_top]]``."""
        self._check(z, "z")
        flat = z.reshape(*z.shape[:2], self.V)
        return [flat[:, :, ix] for ix in self.level_sites]

    def merge(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`split`."""
        if len(levels) != self.n_levels + 1:
            raise ValueError(f"levels must have {self.n_levels + 1} entries (one per level and top), got {len(levels)}")
        for k, (part, n) in enumerate(zip(levels, self.n_latents)):
            if part.dim() != 3 or part.shape[-1] != n:
                raise ValueError(f"levels[{k}] must have shape [B, C, {n}], got {tuple(part.shape)}")
        B, C = levels[0].shape[:2]
        out = levels[0].new_zeros(B, C, self.V)
        out = out.index_copy(2, torch.cat(self.level_sites).to(out.device), torch.cat(levels, dim=2))
        return out.reshape(B, C, self.L, self.L)

    def __repr__(self) -> str:
        return (
            f"Layout(L={self.L}, block_size={self.block_size}, kind={self.kind!r}, n_levels={self.n_levels}, "
            f"repeats={self.repeats}, n_latents={self.n_latents})"
        )
