r"""Neural-ODE CNN level: a local, translation-equivariant velocity field on one RG level's sublattice.

Level ``l`` of a :class:`~rgflow.layout.Layout` acts on the sublattice of spacing ``s = 2^l``
(side ``m = L / s``). This layer moves those sites, ``y = x[:, :, ::s, ::s]`` (``[B, C, m, m]``),
along ``dy/dt = v_theta(y, t)`` for ``t: 0 -> 1`` (data -> latent), with ``v`` a periodic CNN
(``n_conv`` 3x3 circular convolutions, tanh, time as an input channel, last layer zero so the map
starts as the identity). So the map is exactly equivariant under the sublattice's translations and
local: ``dv_i/dy_j = 0`` unless ``i`` and ``j`` are within ``r = n_conv`` sites in both axes.
``equivariance="z2"`` makes ``v(-y) = -v(y)`` (an odd map). ``equivariance="u1"`` (two channels,
``psi = y_0 + i y_1``) makes ``v(e^{ia} psi) = e^{ia} v(psi)``: the CNN sees only the local U(1)
invariants ``|psi_i|^2`` and ``psi_i^* psi_{i+e}`` (``e`` = one site right / down) and returns
complex coefficients ``c_{i,d}`` (components in ``(-1, 1)``, so ``v`` grows at most linearly) with
``v_i = sum_{d in {0, +-x, +-y}} c_{i,d} psi_{i+d}``
(radius ``r = n_conv + 1``).

**Exact divergence at a cost independent of L** (the colouring probe): give site ``(a, b)`` the
colour ``(a mod p, b mod p)`` with ``p > r`` dividing ``m``. For the probe ``e_c`` (one on the sites
of colour ``c`` and channel ``k``), ``(e_c^T J)_i = sum_{j in c} J_ji``; at a site ``i`` of colour
``c`` every other ``j`` of that colour is ``>= p > r`` sites away, so it picks ``J_ii`` exactly.
Hence ``tr J = sum_c <e_c, e_c^T J>``: ``p^2 C`` vector-Jacobian products, computed in one
batched (``vmap``) backward pass. A sublattice with no such ``p < m`` uses
``p = m`` (one probe per site: the full trace). ``ln |det|`` is then exact to the solver's accuracy
(``d/dt ln|det dy/dy_0| = tr J``), never a stochastic estimate.

The same probes give the RNODE Jacobian penalty: ``sum_c |e_c^T J|^2 = ||J||_F^2`` exactly when
``p > 2r`` (then no two sites of one colour reach the same ``j``); for ``r < p <= 2r`` it adds the
cross terms ``2 J_ij J_i'j`` of same-colour pairs ``i, i'`` -- a deterministic regulariser either way,
never part of ``ln q``.

Solvers (torchdiffeq): fixed-step ``rk4`` (default), ``dopri5``. Gradients go through the solver
(no adjoint: torchdiffeq's adjoint fails on this layer's probe VJPs inside a multi-level flow);
``checkpoint=True`` bounds the memory instead: only each step's input is kept for the backward
pass and the step's graph is recomputed there (same numbers; about one step's graph in memory).
"""
from __future__ import annotations

import functools

import torch
from torch import nn
from rgflow.flows.base import on_sublattice
from rgflow.flows.ode import ODE_METHODS, AugmentedDynamics, ODETransform

__all__ = ["ODECNNLevel", "colour_period", "colour_probes"]


def colour_period(m: int, radius: int) -> int:
    """The smallest ``p > radius`` dividing ``m`` (``m`` itself if none is smaller)."""
    for p in range(radius + 1, m):
        if m % p == 0:
            return p
    return m


@functools.lru_cache(maxsize=32)
def colour_probes(m: int, p: int, channels: int, dtype=None, device=None) -> torch.Tensor:
    """``[p^2 C, C, m, m]`` probes: probe ``(k, a, b)`` is one on channel ``k`` at sites ``= (a, b) mod p``
    (built once per shape, dtype and device; treat as read-only)."""
    idx = torch.arange(m, device=device) % p
    colour = (idx[:, None] * p + idx[None, :])  # [m, m] in 0..p^2-1
    onehot = (colour[None] == torch.arange(p * p, device=device)[:, None, None]).to(dtype or torch.get_default_dtype())
    probes = torch.zeros(channels, p * p, channels, m, m, dtype=onehot.dtype, device=device)
    for k in range(channels):
        probes[k, :, k] = onehot
    return probes.reshape(channels * p * p, channels, m, m)


#: the U(1) velocity's offsets ``d`` as rolls (rows, columns) of the sublattice: the site and its four neighbours
_U1_SHIFTS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))


class _CNNVelocity(nn.Module):
    """``v(y, t)``: circular 3x3 convolutions ``n_in + 1 -> hidden -> ... -> n_out`` (tanh), last layer zero;
    ``n_in, n_out = C, C`` (plain, z2) or ``5, 10`` (u1: invariants in, complex coefficients out)."""

    def __init__(self, channels: int, hidden: int, n_conv: int, equivariance: str | None):
        super().__init__()
        if equivariance == "u1" and channels != 2:
            raise ValueError(f"equivariance='u1' needs a two-channel (complex) field, got channels={channels}")
        n_in, n_out = (5, 2 * len(_U1_SHIFTS)) if equivariance == "u1" else (channels, channels)
        dims = [n_in + 1] + [hidden] * (n_conv - 1)
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [nn.Conv2d(a, b, 3, padding=1, padding_mode="circular"), nn.Tanh()]
        out = nn.Conv2d(dims[-1], n_out, 3, padding=1, padding_mode="circular", bias=equivariance != "z2")
        nn.init.zeros_(out.weight)
        if out.bias is not None:
            nn.init.zeros_(out.bias)
        self.net = nn.Sequential(*mods, out)
        self.equivariance = equivariance
        self.radius = n_conv + (equivariance == "u1")

    def _g(self, y, t):
        return self.net(torch.cat([y, t.expand(y.shape[0], 1, *y.shape[2:])], dim=1))

    def _u1(self, y, t):
        re, im = y[:, :1], y[:, 1:]
        re_x, im_x, re_y, im_y = (torch.roll(c, -1, dims=d) for d in (-1, -2) for c in (re, im))
        inv = torch.cat([re**2 + im**2, re * re_x + im * im_x, re * im_x - im * re_x,
                         re * re_y + im * im_y, re * im_y - im * re_y], dim=1)  # |psi|^2, psi^* psi_{+x}, psi^* psi_{+y}
        coef = torch.tanh(self._g(inv, t))  # [B, 10, m, m]: (Re c_d, Im c_d) per offset d, bounded: no blow-up
        v = torch.zeros_like(y)
        for k, (dy, dx) in enumerate(_U1_SHIFTS):
            psi = torch.roll(y, (dy, dx), dims=(-2, -1)) if dy or dx else y
            a, b = coef[:, 2 * k : 2 * k + 1], coef[:, 2 * k + 1 : 2 * k + 2]
            v = v + torch.cat([a * psi[:, :1] - b * psi[:, 1:], a * psi[:, 1:] + b * psi[:, :1]], dim=1)
        return v

    def forward(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.equivariance == "u1":
            return self._u1(y, t)
        return self._g(y, t) - self._g(-y, t) if self.equivariance == "z2" else self._g(y, t)


class _Dynamics(AugmentedDynamics):
    """CNN velocity on a level's sublattice: the divergence exact by colouring probes."""

    def divergence(self, y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(v [B, C, m, m], tr dv/dy [B], sum_c |e_c^T J|^2 [B])``, the trace exact by colouring probes."""
        t = t.reshape(1, 1, 1, 1).to(y)
        B, C, m = y.shape[0], y.shape[1], y.shape[-1]
        probes = colour_probes(m, colour_period(m, self.velocity.radius), C, y.dtype, y.device)  # [P, C, m, m]
        P = probes.shape[0]
        e = probes.unsqueeze(1).expand(P, B, C, m, m)
        with torch.enable_grad():
            yy = y.detach().requires_grad_(True) if not y.requires_grad else y
            v = self.velocity(yy, t)
            (g,) = torch.autograd.grad(v, yy, e, create_graph=self.create_graph, is_grads_batched=True)  # [P, B, ...]
        return v, (g * e).sum(dim=(0, 2, 3, 4)), (g**2).sum(dim=(0, 2, 3, 4))


class ODECNNLevel(ODETransform):
    """The ODE-CNN map of one level's sublattice, on whole fields ``[B, C, L, L] -> ([B, C, L, L], [B])``.

    Args:
        layout: the RG layout; level: which level's sublattice (spacing ``2^level``) it moves.
        channels: field components ``C``; hidden: CNN width; n_conv: convolutions (radius ``r = n_conv``).
        method, steps, rtol, atol: solver (see the module docstring).
        equivariance: ``None``, ``"z2"`` (odd velocity, odd map) or ``"u1"`` (phase-equivariant, ``C = 2``).
        checkpoint: recompute each solver step's graph in the backward pass (fixed-step methods).

    After each call ``kinetic`` and ``jacobian`` hold the RNODE penalties ``int |v|^2 dt`` and
    ``int sum_c |e_c^T J|^2 dt`` per sample.
    """

    role = "ode"

    def __init__(self, layout, level: int, channels: int = 1, hidden: int = 16, n_conv: int = 2, method: str = "rk4",
                 steps: int = 4, rtol: float = 1e-6, atol: float = 1e-8, equivariance: str | None = None,
                 checkpoint: bool = False):
        super().__init__()
        if method not in ODE_METHODS:
            raise ValueError(f"method={method!r} is not allowed; allowed: {', '.join(ODE_METHODS)}")
        if equivariance not in (None, "z2", "u1"):
            raise ValueError(f"equivariance={equivariance!r} is not allowed for ode-cnn levels; "
                             "allowed: None, 'z2', 'u1'")
        if checkpoint and method == "dopri5":
            raise ValueError("checkpoint=True needs a fixed-step method; allowed: rk4, euler, midpoint")
        if not 0 <= level < layout.n_levels:
            raise ValueError(f"level={level} is not allowed; allowed: 0..{layout.n_levels - 1}")
        if n_conv < 1 or steps < 1:
            raise ValueError(f"n_conv and steps must be >= 1, got {n_conv}, {steps}")
        self.level = level
        self.spacing = next(sub.spacing for sub in layout.sublayers if sub.level == level)
        self.dynamics = _Dynamics(_CNNVelocity(channels, hidden, n_conv, equivariance))
        self.method, self.steps, self.rtol, self.atol = method, steps, rtol, atol
        self.checkpoint = checkpoint
        self.kinetic: torch.Tensor | None = None
        self.jacobian: torch.Tensor | None = None

    def _map(self, x: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return on_sublattice(x, self.spacing, lambda y: self._solve(y, *((1.0, 0.0) if inverse else (0.0, 1.0))))

    def forward(self, inputs, context=None):
        return self._map(inputs, inverse=False)

    def inverse(self, inputs, context=None):
        return self._map(inputs, inverse=True)
