r"""Exact Jacobians of network steps: graph colouring for local maps, log-determinants dense or sparse LU.

A map ``f: [B, c_in, M, M] -> [B, c_out, M, M]`` is *local with radius r* on the periodic grid when
output site ``y`` depends only on input sites within Chebyshev distance ``r`` of ``y`` (a
:class:`~rgflow.diffusion.nets.LocalNet` of ``r`` 3x3 convolutions). Input sites further than
``2r`` apart never touch the same output, so one Jacobian-vector product with the indicator of
a *colour* (a set of such sites, one input channel) reads off all their columns at once
(Curtis, Powell & Reid 1974). :func:`colouring` covers the torus with about ``(2r + 1)^2``
colours (at most ``(2r + 2)^2`` once ``M >= (2r + 1)(2r + 2)``), so the Jacobian costs
``c_in (2r + 1)^2`` products or so, independent of ``L``; :func:`local_jacobian` assembles it
exactly (no estimator).

:func:`dense_jacobian` is the general fallback (one vector-Jacobian product per input variable).
:func:`logabsdet` is a batched dense ``slogdet``; :func:`sparse_logabsdet` a sparse LU
(scipy's SuperLU) for the large, sparse step Jacobians of fine levels; both return the sign, which
the exact sampler requires to be positive.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

__all__ = ["colouring", "local_jacobian", "to_dense", "dense_jacobian", "logabsdet", "sparse_logabsdet"]


def _ring_colouring(M: int, p: int) -> list[int]:
    """Colours of the cycle of length ``M`` such that equal colours are ``>= p`` apart: ``floor(M / p)``
    blocks of near-equal length ``>= p``, the colour being the position within the block."""
    n = M // p
    if n == 0:
        return list(range(M))
    sizes = [M // n + (b < M % n) for b in range(n)]
    return [k for size in sizes for k in range(size)]


def _greedy_colouring(M: int, radius: int) -> list[int]:
    colour = [-1] * (M * M)
    for site in range(M * M):
        i, j = divmod(site, M)
        used = {colour[((i + di) % M) * M + (j + dj) % M]
                for di in range(-2 * radius, 2 * radius + 1) for dj in range(-2 * radius, 2 * radius + 1)}
        g = 0
        while g in used:
            g += 1
        colour[site] = g
    return colour


@functools.lru_cache(maxsize=64)
def colouring(M: int, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A distance-``2 radius`` colouring of the periodic ``M x M`` grid: the fewer colours of a product
    of two ring colourings (``ceil(M / floor(M / (2 radius + 1)))^2`` colours, ``(2 radius + 1)^2``
    when that divides ``M``) and a greedy row-by-row one.

    Returns ``(colour [M*M], owner [n_colours, M*M])``: ``owner[g, y]`` is the one site of colour
    ``g`` within distance ``radius`` of ``y`` (``-1``: none).
    """
    ring = _ring_colouring(M, 2 * radius + 1)
    width = max(ring) + 1
    product = [ring[i] * width + ring[j] for i in range(M) for j in range(M)]
    greedy = _greedy_colouring(M, radius)
    colour = product if max(product) <= max(greedy) else greedy
    owner = torch.full((max(colour) + 1, M * M), -1, dtype=torch.long)
    near = sorted({d % M for d in range(-radius, radius + 1)})  # offsets within the radius (periodic)
    for site, g in enumerate(colour):
        i, j = divmod(site, M)
        for di in near:
            for dj in near:
                owner[g, ((i + di) % M) * M + (j + dj) % M] = site
    return torch.tensor(colour), owner


def local_jacobian(fn, h: torch.Tensor, radius: int, chunk: int | None = None):
    """Exact ``d fn(h) / dh`` per sample of a local map with ``radius``, as a sparse matrix shared by
    the batch: ``(rows [nnz], cols [nnz], values [B, nnz])`` of the ``[c_out M^2, c_in M^2]`` Jacobian
    (channel-major, sites row-major), from ``c_in * n_colours`` Jacobian-vector products batched
    with ``torch.func.vmap`` (``chunk`` at a time). :func:`to_dense` assembles it."""
    B, c_in, M, _ = h.shape
    colour, owner = colouring(M, radius)
    n_col, V = owner.shape
    colour, owner = colour.to(h.device), owner.to(h.device)
    onehot = (colour[None, :] == torch.arange(n_col, device=h.device)[:, None]).to(h.dtype)  # [n_col, V]
    eye = torch.eye(c_in, dtype=h.dtype, device=h.device)
    probes = (onehot[:, None, None, :] * eye[None, :, :, None]).reshape(n_col * c_in, c_in, M, M)

    def jvp(p):
        return torch.func.jvp(fn, (h,), (p.expand_as(h),))[1]

    out = torch.func.vmap(jvp, chunk_size=chunk)(probes)  # [n_col * c_in, B, c_out, M, M]
    c_out = out.shape[2]
    out = out.reshape(n_col, c_in, B, c_out, V)
    # entry (g, ci, co, y) with owner[g, y] >= 0 is J[(co, y), (ci, owner[g, y])]
    g, y = torch.nonzero(owner >= 0, as_tuple=True)
    ci = torch.arange(c_in, device=h.device)[:, None, None]
    co = torch.arange(c_out, device=h.device)[None, :, None]
    rows = (co * V + y).expand(c_in, c_out, -1).reshape(-1)
    cols = (ci * V + owner[g, y]).expand(c_in, c_out, -1).reshape(-1)
    values = out[g, :, :, :, y].permute(2, 1, 3, 0).reshape(B, -1)  # [B, c_in, c_out, nnz_site]
    return rows, cols, values


def to_dense(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``[B, *shape]`` from the sparse triplets of :func:`local_jacobian`."""
    J = values.new_zeros(len(values), shape[0] * shape[1])
    J[:, rows * shape[1] + cols] = values
    return J.reshape(len(values), *shape)


def dense_jacobian(fn, z: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """``d fn(z) / dz`` per sample (``fn`` maps batches to batches, rows independent): ``[B, D_out, D]``."""
    D = z[0].numel()

    def single(u):
        return fn(u[None])[0]

    with torch.enable_grad():
        return torch.func.vmap(torch.func.jacrev(single, chunk_size=chunk))(z).reshape(len(z), -1, D)


def logabsdet(J: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sign, ln |det J|)`` of ``[B, D, D]``."""
    return torch.linalg.slogdet(J)


def _permutation_sign(perm: np.ndarray) -> int:
    seen, sign = np.zeros(len(perm), bool), 1
    for i in range(len(perm)):
        if not seen[i]:
            j, length = i, 0
            while not seen[j]:
                seen[j], j, length = True, perm[j], length + 1
            if length % 2 == 0:
                sign = -sign
    return sign


def sparse_logabsdet(J) -> tuple[float, float]:
    """``(sign, ln |det J|)`` of one scipy sparse matrix by SuperLU (``J = Pr^T L U Pc^T``, ``L`` unit lower)."""
    from scipy.sparse.linalg import splu

    lu = splu(J.tocsc(), permc_spec="COLAMD", diag_pivot_thresh=1.0)
    d = lu.U.diagonal()
    sign = _permutation_sign(lu.perm_r) * _permutation_sign(lu.perm_c) * int(np.prod(np.sign(d)))
    return float(sign), float(np.log(np.abs(d)).sum()) if np.all(d != 0) else -math.inf
