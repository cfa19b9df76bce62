r"""A rational-quadratic spline with linear tails, written for the hot path of the RG flow.

Same function as nflows' ``unconstrained_rational_quadratic_spline(..., tails="linear")``
(Durkan et al. 2019): on ``[-B, B]`` a monotone rational-quadratic spline with ``K`` bins,
knot slopes ``min_d + softplus(d)`` and unit slope at ``+-B``; the identity outside. For
``x`` in bin ``k`` with ``theta = (x - x_k) / w_k``, ``s_k = h_k / w_k``:

    ``y = y_k + h_k (s_k theta^2 + d_k theta (1 - theta)) / (s_k + (d_k + d_{k+1} - 2 s_k) theta (1 - theta))``

and ``dy/dx = s_k^2 (d_{k+1} theta^2 + 2 s_k theta (1 - theta) + d_k (1 - theta)^2) / denom^2``.

Differences from nflows, all about speed (the values agree to rounding, ``tests/flows``):

* **feature-major** tensors: inputs ``[F, N]`` and knot parameters ``[F, P, N]`` (``P`` = the
  ``K`` width, ``K`` height and ``K - 1`` slope logits), so every reduction over the ``K`` bins
  runs over a middle axis with the ``N`` block rows contiguous — vectorised, where nflows'
  softmax over a trailing axis of length 8 is the most expensive op of a training step;
* no boolean-mask indexing, ``nonzero`` or domain checks (host syncs on a GPU, and they block
  compilation): the tails are a ``torch.where`` on a clamped input.
"""
from __future__ import annotations

import functools
import math

import torch

__all__ = ["rq_spline", "MIN_BIN", "MIN_DERIVATIVE", "UNIT_SLOPE_LOGIT"]

MIN_BIN = 1e-3  # nflows' DEFAULT_MIN_BIN_WIDTH = DEFAULT_MIN_BIN_HEIGHT
MIN_DERIVATIVE = 1e-3  # nflows' DEFAULT_MIN_DERIVATIVE
#: ``softplus(UNIT_SLOPE_LOGIT) + MIN_DERIVATIVE = 1``: the slope logit of a unit knot slope.
UNIT_SLOPE_LOGIT = math.log(math.expm1(1 - MIN_DERIVATIVE))


def _knots(logits: torch.Tensor, bound: float) -> torch.Tensor:
    """Bin logits ``[F, K, N]`` -> right ends of the ``K`` bins ``[F, K, N]`` (the last is ``bound`` up to rounding).

    Bin sizes are ``MIN_BIN + (1 - K MIN_BIN) softmax(logits)`` (fractions of ``2 bound``), so the right
    end of bin ``k`` is ``2 bound ((1 - K MIN_BIN) cumsum_k + (k + 1) MIN_BIN) - bound``; the cumulative
    sum is a product with a triangular matrix (fast forward and backward along the bin axis).
    """
    tri, offset, scale = _knot_constants(logits.shape[1], bound, logits.dtype, logits.device)
    return torch.addcmul(offset, torch.matmul(tri, torch.softmax(logits, dim=1)), scale)


@functools.lru_cache(maxsize=64)
def _knot_constants(K: int, bound: float, dtype: torch.dtype, device: torch.device):
    """The lower-triangular ones ``[K, K]``, the offsets ``[1, K, 1]`` and the scale of :func:`_knots`, built once."""
    tri = torch.ones(K, K, dtype=dtype, device=device).tril()
    offset = (torch.arange(1, K + 1, dtype=dtype, device=device) * MIN_BIN * 2 * bound - bound).view(1, -1, 1)
    return tri, offset, torch.tensor(2 * bound * (1 - K * MIN_BIN), dtype=dtype, device=device)


def _edges(ends: torch.Tensor, k: torch.Tensor, n_bins: int, lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Values at the left and right end of bin ``k [F, N]`` (one gather): ``ends [F, P, N]`` holds the
    value at the right end of bin ``j < P``; the left end of bin 0 is ``lo``, the right end of the last
    bin ``n_bins - 1`` is ``hi`` -> two ``[F, N]``."""
    both = ends.gather(1, torch.stack([(k - 1).clamp(min=0), k.clamp(max=ends.shape[1] - 1)], dim=1))
    return torch.where(k == 0, lo, both[:, 0]), torch.where(k == n_bins - 1, hi, both[:, 1])


def rq_spline(x: torch.Tensor, params: torch.Tensor, bound: float, inverse: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Apply the spline (or its inverse) elementwise.

    Args:
        x: ``[F, N]`` inputs (feature-major).
        params: ``[F, 3K - 1, N]``: ``K`` width logits, ``K`` height logits, ``K - 1`` interior
            slope logits per feature and row (nflows' ordering).
        bound: the tail bound ``B``; the map is the identity outside ``[-B, B]``.
        inverse: apply the inverse spline.

    Returns:
        ``(y [F, N], ln|dy/dx| [N])`` (summed over features), with ``ln|dx/dy|`` for ``inverse``.
    """
    K = (params.shape[1] + 1) // 3
    width_logits, height_logits, slope_logits = params.split([K, K, K - 1], dim=1)
    cx, cy = _knots(width_logits, bound), _knots(height_logits, bound)  # [F, K, N] right ends of the bins
    slope = torch.nn.functional.softplus(slope_logits) + MIN_DERIVATIVE  # [F, K-1, N] at the interior knots
    inside = (x >= -bound) & (x <= bound)
    xc = x.clamp(-bound, bound)
    k = (xc.unsqueeze(1) >= (cy if inverse else cx)[:, : K - 1]).sum(dim=1)  # [F, N] bin index
    x0, x1 = _edges(cx, k, K, -bound, bound)
    y0, y1 = _edges(cy, k, K, -bound, bound)
    d0, d1 = _edges(slope, k, K, 1.0, 1.0)  # unit slope at the bounds
    w, h = x1 - x0, y1 - y0
    s = h / w
    c = d0 + d1 - 2 * s
    if inverse:
        dy = xc - y0
        a = dy * c + h * (s - d0)
        b = h * d0 - dy * c
        q = -s * dy
        theta = (2 * q) / (-b - torch.sqrt(b * b - 4 * a * q))
        out = theta * w + x0
    else:
        theta = (xc - x0) / w
    tt = theta * (1 - theta)
    denom = s + c * tt
    if not inverse:
        out = y0 + h * (s * theta * theta + d0 * tt) / denom
    logd = torch.log(s * s * (d1 * theta * theta + 2 * s * tt + d0 * (1 - theta) ** 2)) - 2 * torch.log(denom)
    y = torch.where(inside, out, x)
    logd = torch.where(inside, logd, torch.zeros_like(logd)).sum(0)
    return y, (-logd if inverse else logd)
