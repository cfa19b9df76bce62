r"""Coupling bijections on one RG block (``C b^2`` features), identity at initialisation.

* :class:`AffineCoupling` -- ``y_T = x_T * exp(s(x_I)) + t(x_I)`` with a tanh-bounded
  log-scale ``s = s_max tanh(s_raw / s_max)`` (Dinh et al. 2017); built on nflows'
  ``CouplingTransform`` masking.
* :func:`spline_coupling` -- nflows' rational-quadratic spline coupling (Durkan et al. 2019)
  with linear tails, its conditioner initialised so the spline is exactly the identity.
* :func:`make_block` -- a stack of couplings with alternating masks (checkerboard, rows,
  columns, and channels when ``C > 1``), or neural-ODE blocks (:mod:`rgflow.flows.ode`).
* :class:`Z2Conditioner` -- makes an affine coupling odd, ``f(-x) = -f(x)``: shifts odd and
  log-scales even in the conditioning variables.
* :class:`OddSplineCoupling` -- an odd rational-quadratic spline ``y = b + sign(u) g(|u|)``,
  ``u = x - a``, odd shifts and even knots: an exactly Z2-symmetric coupling that, unlike the
  odd affine one, can turn a unimodal marginal into a symmetric bimodal one.

All conditioners are small MLPs whose last layer starts at zero (identity at init).
"""
from __future__ import annotations

import math

import torch
from nflows.transforms.base import CompositeTransform, Transform
from nflows.transforms.coupling import CouplingTransform, PiecewiseRationalQuadraticCouplingTransform
from nflows.transforms.splines.rational_quadratic import (
    DEFAULT_MIN_DERIVATIVE,
    rational_quadratic_spline,
    unconstrained_rational_quadratic_spline,
)
from torch import nn

from rgflow.defaults import deprecated, spline_range

__all__ = [
    "ConditionerMLP", "Z2Conditioner", "AffineCoupling", "SplineCoupling", "OddSplineCoupling",
    "spline_coupling", "block_masks",
    "make_block", "BLOCK_KINDS",
]

BLOCK_KINDS = ("affine", "spline", "ode")


class ConditionerMLP(nn.Module):
    """``in -> hidden -> ... -> out`` MLP with SiLU; last layer zero (output = bias at init)."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 32, layers: int = 2):
        super().__init__()
        dims = [in_features] + [hidden] * layers
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [nn.Linear(a, b), nn.SiLU()]
        self.out = nn.Linear(dims[-1], out_features)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.body = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor, context=None) -> torch.Tensor:
        return self.out(self.body(x))


class Z2Conditioner(nn.Module):
    """``(t, s)(x) -> ((t(x) - t(-x)) / 2, (s(x) + s(-x)) / 2)``: odd shifts, even log-scales.

    With it, ``y_T = x_T e^{s} + t`` is odd in ``x`` and its log-det even.
    """

    def __init__(self, net: nn.Module, n_shift: int):
        super().__init__()
        self.net, self.n_shift = net, n_shift

    def forward(self, x: torch.Tensor, context=None) -> torch.Tensor:
        a, b = self.net(x), self.net(-x)
        n = self.n_shift
        return torch.cat([(a[:, :n] - b[:, :n]) / 2, (a[:, n:] + b[:, n:]) / 2], dim=1)


class AffineCoupling(CouplingTransform):
    r"""Affine coupling ``y_T = x_T e^{s} + t``, ``(t, s_raw) = NN(x_I)``, ``s = s_max tanh(s_raw/s_max)``.

    ``forward`` log-det ``= sum s``; exactly the identity while the conditioner outputs zero.
    """

    def __init__(self, mask, transform_net_create_fn, scale_max: float = 3.0):
        self.scale_max = scale_max
        super().__init__(mask, transform_net_create_fn)

    def _transform_dim_multiplier(self) -> int:
        return 2

    def _shift_log_scale(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.num_transform_features
        return params[:, :n], self.scale_max * torch.tanh(params[:, n:] / self.scale_max)

    def _coupling_transform_forward(self, inputs, transform_params):
        shift, log_scale = self._shift_log_scale(transform_params)
        return inputs * torch.exp(log_scale) + shift, log_scale.sum(1)

    def _coupling_transform_inverse(self, inputs, transform_params):
        shift, log_scale = self._shift_log_scale(transform_params)
        return (inputs - shift) * torch.exp(-log_scale), -log_scale.sum(1)


class SplineCoupling(PiecewiseRationalQuadraticCouplingTransform):
    """nflows' rational-quadratic spline coupling with linear tails, calling nflows' spline directly.

    nflows rescales the bin logits by ``1/sqrt(hidden)`` (and warns when it cannot); our
    conditioners start at exactly zero output, so no rescaling is needed or done.
    """

    def _piecewise_cdf(self, inputs, transform_params, inverse=False):
        K = self.num_bins
        return unconstrained_rational_quadratic_spline(
            inputs,
            transform_params[..., :K],
            transform_params[..., K : 2 * K],
            transform_params[..., 2 * K :],
            inverse=inverse,
            tails="linear",
            tail_bound=self.tail_bound,
            min_bin_width=self.min_bin_width,
            min_bin_height=self.min_bin_height,
            min_derivative=self.min_derivative,
        )


class OddSplineCoupling(CouplingTransform):
    r"""Odd spline coupling ``y_T = b + sign(u) g_theta(|u|)``, ``u = x_T - a``, exactly Z2-symmetric.

    ``a, b`` (shifts) are odd and the knots ``theta`` even functions of ``x_I``
    (:class:`Z2Conditioner`); ``g`` is a monotone rational-quadratic spline (Durkan et al. 2019,
    nflows' implementation) on ``[0, B]`` with ``g(0) = 0``, ``g(B) = B`` and unit slope at ``B``,
    the identity for ``|u| > B``. Per transformed feature the conditioner gives the two shifts,
    ``K`` bin widths, ``K`` heights and ``K`` knot derivatives (the slope at 0 and the ``K - 1``
    interior knots): ``3K + 2`` numbers. Then ``y(-x) = -y(x)`` and the log-det
    ``sum ln g'(|u|)`` is even. Unlike the odd affine coupling it can make a unimodal marginal
    symmetric-bimodal; unlike a shift-free odd spline it can also correlate ``x_T`` with ``x_I``.
    """

    def __init__(self, mask, transform_net_create_fn, num_bins: int = 8, tail_bound: float = 4.0):
        self.num_bins, self.tail_bound = num_bins, tail_bound
        super().__init__(mask, transform_net_create_fn)

    def _transform_dim_multiplier(self) -> int:
        return 3 * self.num_bins + 2

    def _spline(self, inputs, transform_params, inverse):
        K, B, n = self.num_bins, self.tail_bound, self.num_transform_features
        pre, post = transform_params[:, :n], transform_params[:, n : 2 * n]
        knots = transform_params[:, 2 * n :].reshape(inputs.shape[0], n, 3 * K)
        unit_slope = knots.new_full(knots.shape[:-1] + (1,), _UNIT_SLOPE)
        derivatives = torch.cat([knots[..., 2 * K :], unit_slope], dim=-1)
        u = inputs - post if inverse else inputs - pre
        a = u.abs()
        inside = a < B
        g, logdet = rational_quadratic_spline(
            torch.where(inside, a, torch.zeros_like(a)), knots[..., :K], knots[..., K : 2 * K], derivatives,
            inverse=inverse, left=0.0, right=B, bottom=0.0, top=B,
        )
        v = torch.where(inside, torch.sign(u) * g, u)
        return v + (pre if inverse else post), torch.where(inside, logdet, torch.zeros_like(logdet)).sum(1)

    def _coupling_transform_forward(self, inputs, transform_params):
        return self._spline(inputs, transform_params, inverse=False)

    def _coupling_transform_inverse(self, inputs, transform_params):
        return self._spline(inputs, transform_params, inverse=True)


_UNIT_SLOPE = math.log(math.expm1(1 - DEFAULT_MIN_DERIVATIVE))  # softplus(b) + min_derivative = 1


def spline_coupling(mask, hidden: int, layers: int, num_bins: int = 8, tail_bound: float = 4.0,
                    symmetry: str | None = None):
    """nflows rational-quadratic spline coupling, linear tails, identity at initialisation.

    The conditioner's output bias puts every knot derivative at exactly 1
    (``softplus(b) + min_derivative = 1``) with uniform bins. ``symmetry="z2"`` gives the
    odd :class:`OddSplineCoupling` (odd shifts, even knots via :class:`Z2Conditioner`).
    """
    odd = symmetry == "z2"
    n_transformed = int(mask.sum())

    def create(in_features: int, out_features: int) -> nn.Module:
        net = ConditionerMLP(in_features, out_features, hidden, layers)
        with torch.no_grad():
            if odd:  # [pre-shifts, post-shifts | knots (3K per feature)]
                net.out.bias[2 * n_transformed :].view(n_transformed, -1)[:, 2 * num_bins :] = _UNIT_SLOPE
                return Z2Conditioner(net, 2 * n_transformed)
            net.out.bias.view(n_transformed, -1)[:, 2 * num_bins :] = _UNIT_SLOPE
        return net

    if odd:
        return OddSplineCoupling(mask, create, num_bins=num_bins, tail_bound=tail_bound)
    return SplineCoupling(mask, create, num_bins=num_bins, tails="linear", tail_bound=tail_bound)


def block_masks(block: int, channels: int, n: int) -> list[torch.Tensor]:
    """``n`` alternating coupling masks over ``channels * block^2`` features (1 = transformed).

    Cycles through checkerboard, rows, columns (and channel halves if ``channels > 1``), each
    followed by its complement, so every feature is transformed conditioned on several others.
    """
    i, j = torch.meshgrid(torch.arange(block), torch.arange(block), indexing="ij")
    site_patterns = [((i + j) % 2).flatten(), (i < block // 2).long().flatten(), (j < block // 2).long().flatten()]
    patterns = [p.repeat(channels) for p in site_patterns]
    if channels > 1:
        patterns.append((torch.arange(channels) < channels // 2).long().repeat_interleave(block * block))
    masks = []
    for t in range(n):
        p = patterns[(t // 2) % len(patterns)]
        masks.append(p if t % 2 == 0 else 1 - p)
    return masks


def make_block(
    kind: str,
    block_size: int,
    channels: int = 1,
    n_couplings: int = 4,
    hidden: int = 32,
    layers: int = 2,
    num_bins: int | None = None,
    tail_bound: float | None = None,
    symmetry: str | None = None,
    ode_method: str = "rk4",
    ode_steps: int = 8,
    *,
    couplings: int | None = None,
) -> Transform:
    """A block bijection on ``[N, channels * block_size^2]``.

    Args:
        kind: ``"affine"``, ``"spline"``, ``"ode"`` (trainable) or ``"haar"`` (the fixed orthonormal
            Haar map of :mod:`rgflow.flows.haar`; decimators only, other arguments ignored).
        block_size: block side ``b``; channels: field components ``C``.
        n_couplings: number of coupling layers (masks alternate, see :func:`block_masks`); for
            ``"ode"`` the number of stacked ODE blocks. (``couplings=`` is its deprecated name.)
        hidden, layers: conditioner / velocity MLP width and depth.
        num_bins, tail_bound: spline parameters (``kind="spline"``; default
            :func:`rgflow.defaults.spline_range`, 8 bins on ``[-6, 6]``).
        symmetry: ``None``, ``"z2"`` (odd block: affine, spline or ode) or ``"u1"`` (ode, two channels).
        ode_method, ode_steps: solver of ``kind="ode"`` (see :class:`rgflow.flows.ode.ODEBlock`).
    """
    from rgflow.flows.ode import ODEBlock

    if kind == "haar":  # the fixed orthonormal Haar map (rgflow.flows.haar): no parameters
        from rgflow.flows.haar import HaarBlock

        return HaarBlock(block_size, channels)
    if couplings is not None:
        deprecated("make_block(couplings=...)", "make_block(n_couplings=...)")
        n_couplings = couplings
    default_bins, default_bound = spline_range()
    num_bins = default_bins if num_bins is None else num_bins
    tail_bound = default_bound if tail_bound is None else tail_bound
    block = block_size
    if kind not in BLOCK_KINDS:
        raise ValueError(f"block kind {kind!r} is not allowed; allowed: {', '.join(BLOCK_KINDS)}")
    if n_couplings < 1:
        raise ValueError(f"n_couplings must be >= 1, got {n_couplings}")
    allowed = {"affine": (None, "z2"), "spline": (None, "z2"), "ode": (None, "z2", "u1")}[kind]
    if symmetry not in allowed:
        raise ValueError(f"symmetry={symmetry!r} is not available for block kind {kind!r}; allowed: {allowed}")
    features = channels * block * block
    if kind == "ode":
        return CompositeTransform([ODEBlock(features, hidden, layers, ode_method, ode_steps, symmetry=symmetry)
                                   for _ in range(n_couplings)])
    layers_ = []
    for mask in block_masks(block, channels, n_couplings):
        if kind == "affine":
            n_shift = int(mask.sum())

            def create(i, o, n_shift=n_shift):
                net = ConditionerMLP(i, o, hidden, layers)
                return Z2Conditioner(net, n_shift) if symmetry == "z2" else net

            layers_.append(AffineCoupling(mask, create))
        else:
            layers_.append(spline_coupling(mask, hidden, layers, num_bins, tail_bound, symmetry))
    return CompositeTransform(layers_)
