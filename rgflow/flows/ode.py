r"""Neural-ODE block bijection with an exact log-determinant (torchdiffeq).

The block map is the time-1 flow of ``dx/dt = f_theta(x, t)`` on the ``D = C b^2`` features of
one RG block. ``forward`` (data -> latent) integrates ``t: 0 -> 1``, ``inverse`` integrates
backwards ``t: 1 -> 0``. Along the way

    ``d/dt ln |det dx(t)/dx(0)| = tr(df/dx)(x(t), t)``,

and the trace is computed **exactly** with ``D`` vector-Jacobian products (the blocks are small),
never with a Hutchinson estimate, so ``ln q`` can feed importance weights, ESS and Metropolis
tests. Log-det accuracy is that of the ODE solver: fixed-step ``rk4`` (default, deterministic)
or adaptive ``dopri5`` with ``rtol``/``atol``.

Equivariance (``equivariance=``):

* ``"z2"``: ``f(x,t) = g(x,t) - g(-x,t)`` is odd, so the map is odd, ``phi(-x) = -phi(x)``, and
  ``ln q(-x) = ln q(x)`` for a symmetric prior.
* ``"u1"`` (two channels, ``x = (Re psi, Im psi)`` channel-major): ``f_j(psi) = sum_m A_jm psi_m``
  with complex ``A`` an MLP of the U(1) invariants ``|psi_j|^2``, ``psi_j^* psi_m`` and ``t``,
  so ``f(e^{i a} psi) = e^{i a} f(psi)`` and ``ln q(e^{i a} psi) = ln q(psi)`` for a
  rotation-invariant prior.

Optional RNODE regularisation (Finlay et al. 2020): after each call ``kinetic`` holds
``int_0^1 |f|^2 dt`` and ``jacobian`` holds ``int_0^1 ||df/dx||_F^2 dt`` per sample (exact here:
the sum of the squared vector-Jacobian products of the trace), which a trainer may penalise.
"""
from __future__ import annotations

import torch
from nflows.transforms.base import Transform
from torch import nn
from torchdiffeq import odeint, odeint_adjoint

__all__ = ["ODEBlock", "ODETransform", "AugmentedDynamics", "ODE_METHODS", "EQUIVARIANCES", "integrate"]

ODE_METHODS = ("rk4", "euler", "midpoint", "dopri5")
EQUIVARIANCES = (None, "z2", "u1")


def _mlp(n_in: int, n_out: int, hidden: int, layers: int, out_bias: bool = True) -> nn.Sequential:
    """Tanh MLP whose last layer starts at zero (so the velocity, and the flow, start as identity)."""
    dims = [n_in] + [hidden] * layers
    mods: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        mods += [nn.Linear(a, b), nn.Tanh()]
    out = nn.Linear(dims[-1], n_out, bias=out_bias)
    nn.init.zeros_(out.weight)
    if out_bias:
        nn.init.zeros_(out.bias)
    return nn.Sequential(*mods, out)


class _Velocity(nn.Module):
    """Time-conditioned velocity ``f(x, t)``, plain, odd (Z2) or U(1)-equivariant."""

    def __init__(self, features: int, hidden: int, layers: int, equivariance: str | None):
        super().__init__()
        self.equivariance = equivariance
        if equivariance == "u1":
            if features % 2:
                raise ValueError(f"equivariance='u1' needs two channels (an even number of features), got {features}")
            k = features // 2
            iu = torch.triu_indices(k, k, offset=1)
            self.register_buffer("pairs", iu, persistent=False)
            self.net = _mlp(k + 2 * iu.shape[1] + 1, 2 * k * k, hidden, layers)
            self.k = k
        else:  # an output bias would cancel in g(x) - g(-x): leave it out for z2
            self.net = _mlp(features + 1, features, hidden, layers, out_bias=equivariance != "z2")

    def _g(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t.expand(x.shape[0], 1)], dim=1))

    def _u1(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        re, im = x[:, : self.k], x[:, self.k :]
        j, m = self.pairs
        inv = torch.cat([re**2 + im**2, re[:, j] * re[:, m] + im[:, j] * im[:, m],
                         re[:, j] * im[:, m] - im[:, j] * re[:, m], t.expand(x.shape[0], 1)], dim=1)
        A = self.net(inv).reshape(-1, 2, self.k, self.k)
        ar, ai = A[:, 0], A[:, 1]
        fr = torch.einsum("njm,nm->nj", ar, re) - torch.einsum("njm,nm->nj", ai, im)
        fi = torch.einsum("njm,nm->nj", ar, im) + torch.einsum("njm,nm->nj", ai, re)
        return torch.cat([fr, fi], dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.equivariance == "u1":
            return self._u1(x, t)
        if self.equivariance == "z2":
            return self._g(x, t) - self._g(-x, t)
        return self._g(x, t)


class AugmentedDynamics(nn.Module):
    """The augmented state ``(x, ln|det|, kinetic, Jacobian penalty)`` that :func:`integrate` solves, for
    any velocity: a subclass gives ``divergence(x, t) -> (v, tr dv/dx [B], penalty [B])``, exactly.
    ``create_graph`` is False when the caller runs without gradients (then the outputs are detached)."""

    def __init__(self, velocity: nn.Module):
        super().__init__()
        self.velocity = velocity
        self.create_graph = True

    def divergence(self, x: torch.Tensor, t: torch.Tensor):
        raise NotImplementedError

    def forward(self, t, state):
        v, trace, penalty = self.divergence(state[0], t)
        out = (v, trace, (v**2).flatten(1).sum(1), penalty)
        return out if self.create_graph else tuple(o.detach() for o in out)


class _Dynamics(AugmentedDynamics):
    """MLP velocity on ``[B, D]``: the exact trace by one vector-Jacobian product per feature."""

    def divergence(self, x, t):
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            v = self.velocity(x, t.reshape(1, 1).to(x))
            trace = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            frobenius = torch.zeros_like(trace)
            D = x.shape[1]
            for i in range(D):  # row i of J
                (gi,) = torch.autograd.grad(v[:, i].sum(), x, create_graph=self.create_graph,
                                            retain_graph=self.create_graph or i < D - 1)
                trace = trace + gi[:, i]
                frobenius = frobenius + (gi**2).sum(1)
        return v, trace, frobenius


def integrate(dynamics: nn.Module, x: torch.Tensor, t0: float, t1: float, method: str, steps: int, rtol: float,
              atol: float, adjoint: bool, checkpoint: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve the augmented ODE ``(x, ln|det|, kinetic, Frobenius)`` of ``dynamics`` from ``t0`` to ``t1``:
    returns ``(x(t1), ln|det dx(t1)/dx(t0)| [B], |int |f|^2 dt| [B], |int ||J||_F^2 dt| [B])``.

    ``dynamics(t, (x, ., ., .)) -> (f, tr df/dx, |f|^2, ||df/dx||_F^2)`` with a ``create_graph`` flag
    (set here: graphs only when gradients are on). Fixed-step solvers take ``steps`` steps; torchdiffeq
    runs a decreasing time grid by flipping time, so the step stays positive. ``adjoint`` solves for
    the gradients backwards in time (memory independent of the number of steps). ``checkpoint``
    (fixed-step solvers) keeps only each step's input state for the backward pass and recomputes the
    step's graph there: the same numbers, memory of one step's graph instead of all of them.
    """
    zeros = x.new_zeros(x.shape[0])
    state = (x, zeros, zeros, zeros)
    dynamics.create_graph = torch.is_grad_enabled()
    if checkpoint and method == "dopri5":
        raise ValueError("checkpoint=True needs a fixed-step method; allowed: rk4, euler, midpoint")
    if checkpoint and dynamics.create_graph:
        h = (t1 - t0) / steps
        params = tuple(p for p in dynamics.parameters() if p.requires_grad)
        for k in range(steps):
            times = torch.tensor([t0 + k * h, t0 + (k + 1) * h], dtype=x.dtype, device=x.device)
            state = _CheckpointedStep.apply(dynamics, times, method, abs(h), len(state), *state, *params)
    else:
        times = torch.tensor([t0, t1], dtype=x.dtype, device=x.device)
        options = {"step_size": abs(t1 - t0) / steps} if method != "dopri5" else None
        solve = odeint_adjoint if adjoint else odeint
        extra = {"adjoint_params": tuple(dynamics.parameters())} if adjoint else {}
        state = tuple(s[-1] for s in solve(dynamics, state, times, method=method, rtol=rtol, atol=atol,
                                           options=options, **extra))
    x, logdet, kinetic, frobenius = state
    return x, logdet, kinetic.abs(), frobenius.abs()


def _one_step(dynamics, state, times, method, h):
    """One fixed step of size ``h`` over ``times = [t_k, t_k+1]``; graphs only when gradients are on."""
    dynamics.create_graph = torch.is_grad_enabled()
    return tuple(s[-1] for s in odeint(dynamics, state, times, method=method, options={"step_size": h}))


class _CheckpointedStep(torch.autograd.Function):
    """One solver step that keeps only its input state: the forward pass runs without a graph, the
    backward pass re-runs the step with one and back-propagates through it (to the state and to the
    parameters that require gradients). The step itself takes gradients (the exact trace), so this is
    written out rather than ``torch.utils.checkpoint``, whose saved-tensor hooks do not free them."""

    @staticmethod
    def forward(ctx, dynamics, times, method, h, n_state, *tensors):
        state = tensors[:n_state]  # the parameters follow, passed only so that autograd routes their gradients here
        ctx.dynamics, ctx.times, ctx.method, ctx.h = dynamics, times, method, h
        ctx.save_for_backward(*state)
        with torch.no_grad():
            return _one_step(dynamics, tuple(state), times, method, h)

    @staticmethod
    def backward(ctx, *grad_out):
        state = tuple(s.detach().requires_grad_(True) for s in ctx.saved_tensors)
        params = tuple(p for p in ctx.dynamics.parameters() if p.requires_grad)
        with torch.enable_grad():
            out = _one_step(ctx.dynamics, state, ctx.times, ctx.method, ctx.h)
            pairs = [(o, g) for o, g in zip(out, grad_out) if g is not None and o.requires_grad]
            grads = torch.autograd.grad([o for o, _ in pairs], state + params, [g for _, g in pairs],
                                        allow_unused=True)
        return (None, None, None, None, None, *grads)


class ODETransform(Transform):
    """What the neural-ODE bijections share: :meth:`_solve` integrates their ``dynamics`` (an
    :class:`AugmentedDynamics`) with ``method``/``steps``/``rtol``/``atol`` (and ``adjoint`` or
    ``checkpoint``) and keeps the RNODE penalties of the last call in ``kinetic`` and ``jacobian``."""

    adjoint: bool = False
    checkpoint: bool = False

    def _solve(self, x: torch.Tensor, t0: float, t1: float) -> tuple[torch.Tensor, torch.Tensor]:
        x, logdet, self.kinetic, self.jacobian = integrate(self.dynamics, x, t0, t1, self.method, self.steps,
                                                           self.rtol, self.atol, self.adjoint, self.checkpoint)
        return x, logdet


class ODEBlock(ODETransform):
    """Neural-ODE bijection on ``[N, D]`` with exact ``ln |det|`` (see module docstring).

    Args:
        features: ``D``; hidden, layers: velocity MLP width and depth.
        method: torchdiffeq solver (``rk4`` fixed-step by default, or ``dopri5`` adaptive).
        steps: fixed-step solvers' number of steps on ``[0, 1]``.
        rtol, atol: adaptive solvers' tolerances.
        adjoint: use the adjoint method (constant memory; gradients by a backward solve).
        equivariance: ``None``, ``"z2"`` (odd map) or ``"u1"`` (phase-equivariant, two channels).
    """

    def __init__(self, features: int, hidden: int = 32, layers: int = 2, method: str = "rk4", steps: int = 8,
                 rtol: float = 1e-6, atol: float = 1e-8, adjoint: bool = False, equivariance: str | None = None):
        super().__init__()
        if method not in ODE_METHODS:
            raise ValueError(f"method={method!r} is not allowed; allowed: {', '.join(ODE_METHODS)}")
        if equivariance not in EQUIVARIANCES:
            raise ValueError(f"equivariance={equivariance!r} is not allowed; allowed: None, 'z2', 'u1'")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.features = features
        self.dynamics = _Dynamics(_Velocity(features, hidden, layers, equivariance))
        self.method, self.steps, self.rtol, self.atol, self.adjoint = method, steps, rtol, atol, adjoint
        self.kinetic: torch.Tensor | None = None
        self.jacobian: torch.Tensor | None = None

    def forward(self, inputs, context=None):
        return self._solve(inputs, 0.0, 1.0)

    def inverse(self, inputs, context=None):
        return self._solve(inputs, 1.0, 0.0)
