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

import torch
from nflows.transforms.base import CompositeTransform, Transform
from nflows.transforms.coupling import CouplingTransform, PiecewiseRationalQuadraticCouplingTransform
from nflows.transforms.splines.rational_quadratic import rational_quadratic_spline
from torch import nn

from rgflow.defaults import spline_range
from rgflow.flows.base import block_map
from rgflow.flows.spline import UNIT_SLOPE_LOGIT, rq_spline

__all__ = [
    "ConditionerMLP", "Z2Conditioner", "AffineCoupling", "SplineCoupling", "OddSplineCoupling",
    "spline_coupling", "block_masks",
    "make_block", "BLOCK_KINDS", "BlockStack",
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

    def feature_major(self, x: torch.Tensor) -> torch.Tensor:
        """The same map on transposed tensors, ``[in, N] -> [out, N]`` (``W x + b`` per layer)."""
        for layer in self.body:
            x = torch.addmm(layer.bias[:, None], layer.weight, x) if isinstance(layer, nn.Linear) else layer(x)
        return torch.addmm(self.out.bias[:, None], self.out.weight, x)


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

    def feature_major(self, x: torch.Tensor) -> torch.Tensor:
        """The same map on transposed tensors, ``[in, N] -> [out, N]``."""
        a, b = self.net.feature_major(x), self.net.feature_major(-x)
        n = self.n_shift
        return torch.cat([(a[:n] - b[:n]) / 2, (a[n:] + b[n:]) / 2], dim=0)


class FeatureMajorCoupling:
    """Mixin: the coupling on feature-major blocks ``u [F, N]`` (``F = C b^2`` features, ``N`` blocks).

    :class:`~rgflow.flows.base.BlockSublayer` gathers every block of a sublayer straight into this
    layout, so the conditioner's matrix products and the spline's reductions over bins run with the
    ``N`` rows contiguous and no per-coupling gather/scatter of rows. The public ``forward``/``inverse``
    on ``[N, F]`` (nflows' contract) stay; both paths compute the same function.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # rows [identity | transformed] -> feature order (not saved: derived from the mask)
        self.register_buffer("feature_order", torch.argsort(torch.cat([self.identity_features, self.transform_features])),
                             persistent=False)

    def feature_major(self, u: torch.Tensor, inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``u [F, N] -> (v [F, N], ln|det| [N])`` (forward, or inverse with ``inverse=True``)."""
        ident = u.index_select(0, self.identity_features)
        params = self.transform_net.feature_major(ident)
        moved, logdet = self._feature_major_transform(u.index_select(0, self.transform_features), params, inverse)
        return torch.cat([ident, moved], dim=0).index_select(0, self.feature_order), logdet


class AffineCoupling(FeatureMajorCoupling, CouplingTransform):
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

    def _feature_major_transform(self, x, params, inverse):
        n = self.num_transform_features
        shift, log_scale = params[:n], self.scale_max * torch.tanh(params[n:] / self.scale_max)
        if inverse:
            return (x - shift) * torch.exp(-log_scale), -log_scale.sum(0)
        return x * torch.exp(log_scale) + shift, log_scale.sum(0)


class SplineCoupling(FeatureMajorCoupling, PiecewiseRationalQuadraticCouplingTransform):
    """nflows' rational-quadratic spline coupling with linear tails, computed by :func:`rgflow.flows.spline.rq_spline`.

    Parameters, masks and state-dict keys are nflows'; the spline is rgflow's feature-major one
    (no boolean-mask indexing, vectorised over bins). nflows rescales the bin logits by
    ``1/sqrt(hidden)`` (and warns when it cannot); our conditioners start at exactly zero output,
    so no rescaling is needed or done.
    """

    def _feature_major_transform(self, x, params, inverse):
        return rq_spline(x, params.view(x.shape[0], 3 * self.num_bins - 1, x.shape[1]), self.tail_bound, inverse)

    def _coupling_transform(self, inputs, transform_params, inverse=False):
        params = transform_params.reshape(inputs.shape[0], inputs.shape[1], -1).permute(1, 2, 0)
        y, logdet = rq_spline(inputs.T, params, self.tail_bound, inverse)
        return y.T, logdet


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
        unit_slope = knots.new_full(knots.shape[:-1] + (1,), UNIT_SLOPE_LOGIT)
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


def spline_coupling(mask, hidden: int, layers: int, num_bins: int = 8, tail_bound: float = 4.0,
                    equivariance: str | None = None):
    """nflows rational-quadratic spline coupling, linear tails, identity at initialisation.

    The conditioner's output bias puts every knot derivative at exactly 1
    (``softplus(b) + min_derivative = 1``) with uniform bins. ``equivariance="z2"`` gives the
    odd :class:`OddSplineCoupling` (odd shifts, even knots via :class:`Z2Conditioner`).
    """
    odd = equivariance == "z2"
    n_transformed = int(mask.sum())

    def create(in_features: int, out_features: int) -> nn.Module:
        net = ConditionerMLP(in_features, out_features, hidden, layers)
        with torch.no_grad():
            if odd:  # [pre-shifts, post-shifts | knots (3K per feature)]
                net.out.bias[2 * n_transformed :].view(n_transformed, -1)[:, 2 * num_bins :] = UNIT_SLOPE_LOGIT
                return Z2Conditioner(net, 2 * n_transformed)
            net.out.bias.view(n_transformed, -1)[:, 2 * num_bins :] = UNIT_SLOPE_LOGIT
        return net

    if odd:
        return OddSplineCoupling(mask, create, num_bins=num_bins, tail_bound=tail_bound)
    return SplineCoupling(mask, create, num_bins=num_bins, tails="linear", tail_bound=tail_bound)


class BlockStack(CompositeTransform):
    """nflows' ``CompositeTransform`` of block bijections, with the feature-major path of
    :func:`rgflow.flows.base.block_map` (same state-dict keys, so saved runs load unchanged)."""

    def feature_major(self, u: torch.Tensor, inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``u [F, N] -> (v [F, N], ln|det| [N])`` through every member in order (reversed for ``inverse``)."""
        total = u.new_zeros(u.shape[1])
        for t in (reversed(self._transforms) if inverse else self._transforms):
            u, logdet = block_map(t, u, inverse)
            total = total + logdet
        return u, total


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
    equivariance: str | None = None,
    ode_method: str = "rk4",
    ode_steps: int = 8,
) -> Transform:
    """A block bijection on ``[N, channels * block_size^2]``.

    Args:
        kind: ``"affine"``, ``"spline"``, ``"ode"`` (trainable) or ``"haar"`` (the fixed orthonormal
            Haar map of :mod:`rgflow.flows.haar`; decimators only, other arguments ignored).
        block_size: block side ``b``; channels: field components ``C``.
        n_couplings: number of coupling layers (masks alternate, see :func:`block_masks`); for
            ``"ode"`` the number of stacked ODE blocks.
        hidden, layers: conditioner / velocity MLP width and depth.
        num_bins, tail_bound: spline parameters (``kind="spline"``; default
            :func:`rgflow.defaults.spline_range`, 8 bins on ``[-6, 6]``).
        equivariance: ``None``, ``"z2"`` (odd block: affine, spline or ode) or ``"u1"`` (ode, two channels).
        ode_method, ode_steps: solver of ``kind="ode"`` (see :class:`rgflow.flows.ode.ODEBlock`).
    """
    from rgflow.flows.ode import ODEBlock

    if kind == "haar":  # the fixed orthonormal Haar map (rgflow.flows.haar): no parameters
        from rgflow.flows.haar import HaarBlock

        return HaarBlock(block_size, channels)
    default_bins, default_bound = spline_range()
    num_bins = default_bins if num_bins is None else num_bins
    tail_bound = default_bound if tail_bound is None else tail_bound
    block = block_size
    if kind not in BLOCK_KINDS:
        raise ValueError(f"block kind {kind!r} is not allowed; allowed: {', '.join(BLOCK_KINDS)}")
    if n_couplings < 1:
        raise ValueError(f"n_couplings must be >= 1, got {n_couplings}")
    allowed = {"affine": (None, "z2"), "spline": (None, "z2"), "ode": (None, "z2", "u1")}[kind]
    if equivariance not in allowed:
        raise ValueError(f"equivariance={equivariance!r} is not available for block kind {kind!r}; allowed: {allowed}")
    features = channels * block * block
    if kind == "ode":
        return BlockStack([ODEBlock(features, hidden, layers, ode_method, ode_steps, equivariance=equivariance)
                                   for _ in range(n_couplings)])
    layers_ = []
    for mask in block_masks(block, channels, n_couplings):
        if kind == "affine":
            n_shift = int(mask.sum())

            def create(i, o, n_shift=n_shift):
                net = ConditionerMLP(i, o, hidden, layers)
                return Z2Conditioner(net, n_shift) if equivariance == "z2" else net

            layers_.append(AffineCoupling(mask, create))
        else:
            layers_.append(spline_coupling(mask, hidden, layers, num_bins, tail_bound, equivariance))
    return BlockStack(layers_)
