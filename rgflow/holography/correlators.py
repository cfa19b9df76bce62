r"""Bulk and boundary correlators with errors, organised by the Layout's bulk coordinates.

Bulk latents ``z [S, C, V]`` (``S`` samples in ``B`` contiguous blocks, latents in
:meth:`~rgflow.layout.Layout.split` order, channels summed in every product so that the complex
field's correlators are U(1) invariant):

* connected correlators ``C_ij = sum_c <z_ic z_jc> - <z_ic><z_jc>`` and the Gaussian mutual
  information ``I_ij = -(C/2) ln(1 - rho_ij^2)``, ``rho_ij = C_ij / sqrt(C_ii C_jj)`` (exact for
  Gaussian latents with isotropic channels), averaged over all pairs with the same key
  ``(level, level', |dx|, |dy|)`` (sorted; periodic minimum-image separation of the boundary
  positions); errors by the jackknife over the blocks (each block much longer than tau_int). The
  MI is bias-corrected by the same jackknife, ``I_BC = B I - (B - 1) mean_b I_(-b)``: the sample
  correlation of two independent latents has ``E[rho^2] = 1/(C N_eff)``, so the plain estimate puts
  a floor of ``1 / (2 N_eff)`` nats on every pair, which summed over the ``V^2/2`` pairs of a 32x32 bulk
  is hundreds of nats at the chain lengths of a probe;
* the KSG k-nearest-neighbour estimate of the mutual information (Kraskov, Stoegbauer &
  Grassberger 2004, estimator 1, max-norm) for the nearest pairs of each level pair, a
  non-Gaussian check;
* the boundary correlator ``G(r) = <phi_x . phi_{x+r}> - <phi> . <phi>`` (ensemble means
  subtracted), averaged over sites, both axes and channels, with Gamma-method errors.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from rgflow.stats import gamma_method

__all__ = ["pair_keys", "bulk_correlators", "ksg_mutual_information", "boundary_correlator"]


def pair_keys(coords: torch.Tensor, L: int) -> tuple[list[tuple[int, int, int, int]], torch.Tensor]:
    """Keys ``(l, l', a, b)`` (``l <= l'``, ``a <= b`` the sorted periodic separations) and, for
    every pair ``i < j`` of bulk points ``coords [V, 3]``, its key index (``[V, V]``, -1 elsewhere)."""
    c = coords.long()
    lvl, x, y = c[:, 0], c[:, 1], c[:, 2]
    dx = (x[:, None] - x[None, :]).abs() % L
    dy = (y[:, None] - y[None, :]).abs() % L
    dx, dy = torch.minimum(dx, L - dx), torch.minimum(dy, L - dy)
    a, b = torch.minimum(dx, dy), torch.maximum(dx, dy)
    l1, l2 = torch.minimum(lvl[:, None], lvl[None, :]), torch.maximum(lvl[:, None], lvl[None, :])
    code = ((l1 * 64 + l2) * (L + 1) + a) * (L + 1) + b
    upper = torch.triu(torch.ones_like(code, dtype=torch.bool), diagonal=1)
    uniq, inverse = torch.unique(code[upper], return_inverse=True)
    index = torch.full_like(code, -1)
    index[upper] = inverse
    keys = []
    for u in uniq.tolist():
        u, b_ = divmod(u, L + 1)
        u, a_ = divmod(u, L + 1)
        l1_, l2_ = divmod(u, 64)
        keys.append((l1_, l2_, a_, b_))
    return keys, index


def _block_moments(z: torch.Tensor, n_blocks: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-block sums: counts ``[K]``, first moments ``[K, C, V]``, second moments ``[K, V, V]``."""
    S = z.shape[0]
    edges = np.linspace(0, S, n_blocks + 1).astype(int)
    counts, first, second = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        part = z[lo:hi]
        counts.append(hi - lo)
        first.append(part.sum(0))
        second.append(torch.einsum("scv,scw->vw", part, part))
    return torch.tensor(counts, dtype=z.dtype), torch.stack(first), torch.stack(second)


def _from_moments(n, first, second, index, n_keys, channels):
    mean = first / n
    cov = second / n - torch.einsum("cv,cw->vw", mean, mean)
    var = cov.diagonal()
    rho = cov / torch.sqrt(var[:, None] * var[None, :]).clamp_min(1e-300)
    mi = -0.5 * channels * torch.log1p(-(rho**2).clamp(max=1 - 1e-12))
    ok = index >= 0
    idx = index[ok]
    sizes = torch.bincount(idx, minlength=n_keys).to(cov.dtype)
    c_mean = torch.zeros(n_keys, dtype=cov.dtype).index_add_(0, idx, cov[ok]) / sizes
    mi_mean = torch.zeros(n_keys, dtype=cov.dtype).index_add_(0, idx, mi[ok]) / sizes
    return c_mean, mi_mean, float(mi[ok].sum())


def bulk_correlators(z: torch.Tensor, coords: torch.Tensor, L: int, n_blocks: int = 32) -> dict:
    """Group-averaged bulk correlators and Gaussian mutual information with jackknife errors.

    Args:
        z: bulk samples ``[S, C, V]`` in split order, contiguous blocks of a Markov chain or
            independent samples; coords: ``layout.bulk_coordinates()`` ``[V, 3]``.

    Returns:
        ``{"keys": [(l, l', a, b)], "C": [value], "C_err", "mi", "mi_err", "pairs": [count],
        "total_mi": [value, error], "total_mi_plain": value}`` (``total_mi``: the Gaussian MI summed over
        all pairs, bias-corrected; ``total_mi_plain``: the same without the correction).
    """
    z = z.double()
    keys, index = pair_keys(coords, L)
    K = len(keys)
    n_blocks = max(2, min(n_blocks, z.shape[0] // 2))
    counts, first, second = _block_moments(z, n_blocks)
    C = z.shape[1]
    full = _from_moments(counts.sum(), first.sum(0), second.sum(0), index, K, C)
    loo = [_from_moments(counts.sum() - counts[b], first.sum(0) - first[b], second.sum(0) - second[b], index, K, C)
           for b in range(n_blocks)]

    loo_values = [torch.stack([torch.as_tensor(v[i]) for v in loo]) for i in range(3)]  # [B, ...] per quantity

    def jack(i):
        vals = loo_values[i]
        return torch.sqrt((n_blocks - 1) / n_blocks * ((vals - vals.mean(0)) ** 2).sum(0))

    def unbiased(i):  # the jackknife bias correction B x - (B - 1) mean(x_-b), exact for O(1/N) biases
        return n_blocks * torch.as_tensor(full[i]) - (n_blocks - 1) * loo_values[i].mean(0)

    sizes = torch.bincount(index[index >= 0], minlength=K)
    return {"keys": keys, "C": full[0].tolist(), "C_err": jack(0).tolist(), "mi": unbiased(1).tolist(),
            "mi_err": jack(1).tolist(), "pairs": sizes.tolist(), "total_mi": [float(unbiased(2)), float(jack(2))],
            "total_mi_plain": full[2]}


def _ksg(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """KSG estimator 1 of I(a; b) for samples ``a [N, da]``, ``b [N, db]`` (max-norm).

    Markov chains repeat states (rejected steps): ties are broken by a jitter of 1e-10 standard
    deviations (fixed seed), as scikit-learn does, else a zero k-th distance gives digamma(0)."""
    gen = torch.Generator().manual_seed(0)
    a = a + 1e-10 * a.std() * torch.randn(a.shape, dtype=a.dtype, generator=gen)
    b = b + 1e-10 * b.std() * torch.randn(b.shape, dtype=b.dtype, generator=gen)
    N = a.shape[0]
    da, db = torch.cdist(a, a, p=float("inf")), torch.cdist(b, b, p=float("inf"))
    joint = torch.maximum(da, db)
    joint.fill_diagonal_(math.inf)
    eps = joint.kthvalue(k, dim=1).values
    nx = (da < eps[:, None]).sum(1) - 1
    ny = (db < eps[:, None]).sum(1) - 1
    dg = torch.special.digamma
    k_, n_ = torch.tensor(float(k), dtype=a.dtype), torch.tensor(float(N), dtype=a.dtype)
    return float(dg(k_) + dg(n_) - (dg(nx.to(a.dtype) + 1) + dg(ny.to(a.dtype) + 1)).mean())


def ksg_mutual_information(z: torch.Tensor, pairs: list[tuple[int, int]], k: int = 3, max_samples: int = 2000) -> list:
    """KSG mutual information ``[value, error]`` of latent pairs ``(i, j)`` (``z [S, C, V]``): the
    estimate on up to ``max_samples`` evenly spaced samples, every second one at least (KSG assumes
    independent samples; a Markov chain repeats its state after a rejection), the error from four
    disjoint quarters."""
    z = z.double()
    step = max(2, z.shape[0] // max_samples)
    zs = z[::step][:max_samples]
    out = []
    for i, j in pairs:
        a, b = zs[:, :, i], zs[:, :, j]
        value = _ksg(a, b, k)
        quarters = [_ksg(a[q::4], b[q::4], k) for q in range(4)]
        out.append([value, float(np.std(quarters, ddof=1) / 2)])
    return out


def boundary_correlator(phi: torch.Tensor) -> list[list[float]]:
    """Rows ``[r, G(r), error]`` for ``r = 0 .. L/2`` from chains ``phi [R, n, C, L, L]`` (module docstring)."""
    R, n, C, L, _ = phi.shape
    x = phi.double().reshape(R * n, C, L, L)
    prim = {f"m{c}": x[:, c].mean(dim=(-2, -1)).reshape(R, n).numpy() for c in range(C)}
    rows = []
    for r in range(L // 2 + 1):
        prod = sum((x * torch.roll(x, -r, d)).sum(1).mean(dim=(-2, -1)) for d in (-2, -1)) / (2 * C)
        data = {"A": prod.reshape(R, n).numpy(), **prim}
        res = gamma_method(data, lambda m, C=C: m["A"] - sum(m[f"m{c}"] ** 2 for c in range(C)) / C)
        rows.append([r, res.value, res.error])
    return rows
