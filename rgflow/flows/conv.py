r"""Convolutional coupling levels: every RG level's couplings see the level's whole neighbourhood.

Level ``l`` of a MERA :class:`~rgflow.layout.Layout` acts on the sublattice of spacing ``s = 2^l``,
``y = x[:, :, ::s, ::s]`` (``[B, C, m, m]``, ``m = L / s``). A block flow transforms each ``2x2`` cell
from the cell's own sites; here each of ``n_couplings`` couplings transforms one half of the sublattice,
picked by a period-2 mask ``M`` (checkerboard, even rows, even columns, each followed by its complement),
given the other half through a periodic CNN:

    ``y' = (1 - M) y + M f(y; theta(c))``,  ``c = [(1 - M) y, M, l]``  (``[B, C + 2, m, m]``),

with ``f`` elementwise monotone: a rational-quadratic spline ``g`` (``kind="spline"``, identity tails, knots
from the CNN; :func:`rgflow.flows.spline.rq_spline`), ``y e^{s} + t`` (``kind="affine"``, ``s`` tanh-bounded,
``|s| < 3``), or both, ``t + e^{s} g(y)`` (``kind="spline-affine"``: the shift and scale place each site's
conditional density, the spline shapes it).
The CNN (``layers`` circular 3x3 convolutions of width ``hidden`` with SiLU, then a 3x3 output layer that
starts at zero, so every coupling starts as the identity) sees ``layers + 1`` sublattice sites in each
direction: the neighbouring cells of the level and, through them, the coarse variables (the sites that move
on to level ``l + 1`` are part of the level's sublattice). The Jacobian of a coupling is diagonal given the
conditioning half, so ``ln|det| = sum_M ln f'`` exactly.

**Independent of L.** One stack of couplings (:class:`ConvCouplingStack`) serves every level; the level's
index ``l`` (counted from the finest, so it means the same at every ``L``) is an input channel. The parameter
count does not depend on ``L`` nor on the number of levels, and a flow trained at ``L`` evaluates at ``2L``
(one more level) with the same state dict. The latents of level ``l`` are the sites of the level's
sublattice that do not move on (as for every MERA flow); the CNN sees the level's sublattice only, not the
latents frozen at finer levels (in the generative direction those are still prior noise when level ``l``
runs).

**Symmetries.** Convolutions are periodic and the masks have period 2, so every coupling commutes with
translations by two sublattice sites (``2^{l+1}`` lattice sites); with ``equivariance="z2"`` the map is odd,
``f(-y) = -f(y)``: the CNN is evaluated on ``c`` and on ``c`` with ``y -> -y``, and its even part gives the
log-scales and the knots, its odd part the shifts; the spline is ``b + e^{s} g(y - a)`` (``s = 0`` for
``kind="spline"``) with ``g`` an odd spline (knots mirrored about 0) and ``a, b`` odd shifts. U(1) is not available for these levels.
"""
from __future__ import annotations

import functools

import torch
from nflows.transforms.base import Transform
from torch import nn

from rgflow.flows.base import on_sublattice
from rgflow.flows.spline import UNIT_SLOPE_LOGIT, rq_spline

__all__ = ["ConvCouplingStack", "ConvLevel", "CONV_COUPLINGS", "PeriodicConv3x3", "grid_masks"]

#: elementwise maps of the convolutional couplings
CONV_COUPLINGS = ("spline", "affine", "spline-affine")


def grid_masks(n: int) -> list[tuple[int, int, int]]:
    """The ``n`` period-2 masks as ``(a, b, parity)``: site ``(i, j)`` is transformed iff
    ``(a i + b j) mod 2 == parity`` -- checkerboard ``(1, 1)``, rows ``(1, 0)``, columns ``(0, 1)``, each
    followed by its complement (so every site is transformed by every pair)."""
    patterns = ((1, 1), (1, 0), (0, 1))
    return [(*patterns[(t // 2) % 3], t % 2) for t in range(n)]


class PeriodicConv3x3(nn.Conv2d):
    """A 3x3 convolution on the torus, ``[B, C_in, m, m] -> [B, C_out, m, m]``.

    The same map as ``nn.Conv2d(C_in, C_out, 3, padding=1, padding_mode="circular")`` (and the same state
    dict), with the periodic halo built by two concatenations: the generic circular padding copies nine
    slices forward and zero-fills and scatters them backward, which cost a third of a training step.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[..., -1:, :], x, x[..., :1, :]], dim=-2)
        x = torch.cat([x[..., -1:], x, x[..., :1]], dim=-1)
        return self._conv_forward(x, self.weight, self.bias)


class _Coupling(nn.Module):
    """One coupling on ``[B, C, m, m]``: its CNN and the elementwise map (see the module docstring)."""

    def __init__(self, mask: tuple[int, int, int], channels: int, kind: str, hidden: int, layers: int,
                 num_bins: int, tail_bound: float, odd: bool):
        super().__init__()
        self.mask, self.kind, self.odd = mask, kind, odd
        self.C, self.K, self.bound = channels, num_bins, tail_bound
        # the affine part: shift t and log-scale s ("affine", "spline-affine"); an odd spline's outer shift is t
        self.n_affine = {"spline": 0, "affine": 2, "spline-affine": 1 if odd else 2}[kind]
        if kind == "affine":
            per_site = 2  # shift, log-scale
        elif odd:  # shifts a, b; the log-scale; half the widths, heights, slopes (centre included)
            per_site = 2 + self.n_affine + 3 * num_bins // 2
        else:
            per_site = self.n_affine + 3 * num_bins - 1
        dims = [channels + 2] + [hidden] * layers
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [PeriodicConv3x3(a, b), nn.SiLU()]
        self.out = PeriodicConv3x3(dims[-1], channels * per_site)
        nn.init.zeros_(self.out.weight)
        with torch.no_grad():
            bias = self.out.bias.view(channels, per_site)
            bias.zero_()
            if kind != "affine":  # unit knot slopes: the identity spline
                bias[:, per_site - (num_bins // 2 if odd else num_bins - 1):] = UNIT_SLOPE_LOGIT
        self.body = nn.Sequential(*mods)
        self.per_site = per_site

    def _params(self, y: torch.Tensor, M: torch.Tensor, level: int) -> torch.Tensor:
        """``[B, C, P, m, m]`` coupling parameters (odd/even parts for ``odd``)."""
        B, C, m = y.shape[0], y.shape[1], y.shape[-1]
        const = torch.stack([M, torch.full_like(M, float(level))]).expand(B, 2, m, m)
        # channels-last input: the small-channel 3x3 convolutions run ~1.4x faster forward and backward on a CPU
        net = lambda v: self.out(self.body(torch.cat([v * (1 - M), const], dim=1).contiguous(
            memory_format=torch.channels_last))).view(B, C, self.per_site, m, m)
        if not self.odd:
            return net(y)
        p, q = net(y), net(-y)
        n_shift = 1 if self.kind == "affine" else 2
        return torch.cat([(p[:, :, :n_shift] - q[:, :, :n_shift]) / 2, (p[:, :, n_shift:] + q[:, :, n_shift:]) / 2], 2)

    def forward(self, y: torch.Tensor, level: int, inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        B, C, m = y.shape[0], y.shape[1], y.shape[-1]
        where, sites = _mask(*self.mask, m, y.device)  # [m, m] and its [n] flat indices: the half that moves
        M = where.to(y.dtype)
        # the moving half only, feature-major: parameters [P, N] and values [N], N = B C n (the spline's fast layout)
        params = self._params(y, M, level).flatten(3)[..., sites].permute(2, 0, 1, 3).reshape(self.per_site, -1)
        u = y.flatten(2)[..., sites].reshape(-1)
        moved, logd = self._elementwise(u, params, inverse)
        out = y.flatten(2).index_copy(2, sites, moved.view(B, C, -1)).view_as(y)
        sign = -1.0 if inverse else 1.0
        return out, sign * logd.view(B, -1).sum(1)

    def _elementwise(self, u: torch.Tensor, params: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The monotone map of the moving values ``u [N]`` with parameters ``params [P, N]``: ``(f(u) or
        f^{-1}(u), ln f'`` at the forward map's input ``[N])``. ``f(u) = t + e^s g(u - a)``: ``g`` the spline
        (the identity for ``"affine"``; odd for ``odd``, with its inner shift ``a``, else ``a = 0``), ``t, s``
        (``s = 3 tanh(s_raw / 3)``) present for ``"affine"`` and ``"spline-affine"`` (an odd spline always has
        ``t``)."""
        if self.kind == "affine":
            a, t, log_scale, knots = None, params[0], _log_scale(params[1]), None
        elif self.odd:
            a, t = params[0], params[1]
            log_scale = _log_scale(params[2]) if self.n_affine else None
            knots = self._knots(params[2 + self.n_affine:])
        else:
            a = None
            t, log_scale = (params[0], _log_scale(params[1])) if self.n_affine else (None, None)
            knots = params[self.n_affine:]
        if inverse:  # u = t + e^s g(v - a)
            w = u if t is None else u - t
            w = w if log_scale is None else w * torch.exp(-log_scale)
            if self.kind == "affine":
                v, logd = w, torch.zeros_like(w)
            else:
                v, logd = rq_spline(w.unsqueeze(0), knots.unsqueeze(0), self.bound, inverse=True)
                v, logd = v[0], -logd  # rq_spline gives ln|dv/dw| for the inverse; keep the forward ln g'
            v = v if a is None else v + a
        else:
            w = u if a is None else u - a
            if self.kind == "affine":
                g, logd = w, torch.zeros_like(w)
            else:
                g, logd = rq_spline(w.unsqueeze(0), knots.unsqueeze(0), self.bound)
                g = g[0]
            g = g if log_scale is None else g * torch.exp(log_scale)
            v = g if t is None else g + t
        return v, logd if log_scale is None else logd + log_scale

    def _knots(self, knots: torch.Tensor) -> torch.Tensor:
        """The spline's ``[3K - 1, N]`` knot logits (an odd spline's mirrored from its half)."""
        if not self.odd:
            return knots
        h = self.K // 2
        w, hh, d = knots[:h], knots[h:2 * h], knots[2 * h:]  # d: centre slope, then h - 1 outer ones
        return torch.cat([w.flip(0), w, hh.flip(0), hh, d[1:].flip(0), d], dim=0)


def _log_scale(raw: torch.Tensor) -> torch.Tensor:
    """The bounded log-scale ``s = 3 tanh(raw / 3)``, ``|s| < 3``."""
    return 3.0 * torch.tanh(raw / 3.0)


@functools.lru_cache(maxsize=256)
def _mask(a: int, b: int, parity: int, m: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The sites ``(i, j)`` of an ``m x m`` grid with ``(a i + b j) mod 2 == parity``: ``(where [m, m] bool,
    flat indices [m^2 / 2])``, built once per mask, size and device."""
    i = torch.arange(m)
    where = (a * i[:, None] + b * i[None, :]) % 2 == parity
    return where.to(device), torch.arange(m * m)[where.flatten()].to(device)


class ConvCouplingStack(nn.Module):
    """``n_couplings`` convolutional couplings on a level's sublattice ``[B, C, m, m]``, shared by all levels.

    Args:
        channels: field components ``C``; n_couplings: couplings (masks :func:`grid_masks`).
        kind: ``"spline"``, ``"affine"`` or ``"spline-affine"``; hidden, layers: CNN width and hidden convolutions.
        num_bins, tail_bound: the spline's (``num_bins`` even for ``equivariance="z2"``).
        equivariance: ``None`` or ``"z2"`` (an odd map).
    """

    def __init__(self, channels: int = 1, n_couplings: int = 4, kind: str = "spline", hidden: int = 32, layers: int = 2,
                 num_bins: int = 8, tail_bound: float = 6.0, equivariance: str | None = None):
        super().__init__()
        if kind not in CONV_COUPLINGS:
            raise ValueError(f"kind={kind!r} is not allowed for convolutional couplings; allowed: "
                             f"{', '.join(CONV_COUPLINGS)}")
        if equivariance not in (None, "z2"):
            raise ValueError(f"equivariance={equivariance!r} is not available for block kind 'conv'; allowed: None, 'z2'")
        if equivariance == "z2" and kind != "affine" and num_bins % 2:
            raise ValueError(f"num_bins={num_bins} is not allowed for an odd spline; allowed: even numbers")
        if n_couplings < 1 or layers < 1 or hidden < 1:
            raise ValueError(f"n_couplings, layers and hidden must be >= 1, got {n_couplings}, {layers}, {hidden}")
        self.couplings = nn.ModuleList(
            _Coupling(mask, channels, kind, hidden, layers, num_bins, tail_bound, equivariance == "z2")
            for mask in grid_masks(n_couplings))

    def forward(self, y: torch.Tensor, level: int, inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``y [B, C, m, m] -> (y' [B, C, m, m], ln|det| [B])`` (data -> latent, or the inverse)."""
        total = y.new_zeros(y.shape[0])
        for c in (reversed(self.couplings) if inverse else self.couplings):
            y, ld = c(y, level, inverse)
            total = total + ld
        return y, total


class ConvLevel(Transform):
    """Level ``level`` of a layout as a field transform ``[B, C, L, L] -> ([B, C, L, L], [B])``, moving the
    sites of spacing ``2^level`` through a shared :class:`ConvCouplingStack` (held, not owned: the flow
    registers the stack once, so its state dict does not depend on the number of levels)."""

    role = "conv"

    def __init__(self, layout, level: int, stack: ConvCouplingStack):
        super().__init__()
        if layout.kind != "mera":
            raise ValueError(f"block kind 'conv' needs a MERA layout, got kind={layout.kind!r}")
        if not 0 <= level < layout.n_levels:
            raise ValueError(f"level={level} is not allowed; allowed: 0..{layout.n_levels - 1}")
        self.level = level
        self.spacing = next(sub.spacing for sub in layout.sublayers if sub.level == level)
        self._stack = (stack,)  # a tuple: not a registered submodule

    def _map(self, x: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return on_sublattice(x, self.spacing, lambda y: self._stack[0](y, self.level, inverse))

    def forward(self, inputs, context=None):
        return self._map(inputs, inverse=False)

    def inverse(self, inputs, context=None):
        return self._map(inputs, inverse=True)
