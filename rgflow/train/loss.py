r"""Reverse-KL loss as a module (so it can be called through a DDP wrapper).

``F_var = E_{x~q}[ln q(x) + S(x)] = -ln Z + KL(q || p) >= -ln Z``, the variational free
energy of the action's frame; ``ln q`` includes the prior term ``ln p(z)``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from rgflow.flows.rgflow import FieldFlow

__all__ = ["ReverseKL", "ForwardKL"]


class _LogProb(nn.Module):
    def __init__(self, flow: FieldFlow):
        super().__init__()
        self.flow = flow

    def forward(self, x):
        return self.flow.log_prob(x)


class ReverseKL(nn.Module):
    """``forward(batch_size) -> loss``, the Monte Carlo estimate of ``F_var``.

    Args:
        flow: the sampler ``q``: any model with a reparametrised ``sample(n, generator) -> (x, ln q)``
            and ``log_prob`` (a flow, a symmetrised flow); action: callable ``S: [B, C, L, L] -> [B]``.
        path_gradient: use the "sticking the landing" estimator (Roeder et al. 2017;
            Vaitl et al. 2022): ``ln q`` is re-evaluated at the sampled ``x`` with the
            parameters detached, so the gradient flows only through the sample path. Same
            expectation, lower variance near convergence, one extra forward pass.

    ``generator`` is the sampling stream (default: the global torch RNG). With
    ``kinetic_weight > 0`` the RNODE penalty ``kinetic_weight * E[sum_blocks int |f|^2 dt]`` of
    the flow's neural-ODE blocks is added (Finlay et al. 2020), with ``jacobian_weight > 0`` the
    Jacobian penalty ``jacobian_weight * E[sum_blocks int ||df/dx||_F^2 dt]``; they bias nothing
    that is reported, since ``ln q`` stays exact.
    After each call ``self.last_log_w`` holds the detached log importance weights
    ``-S - ln q`` of the batch.
    """

    def __init__(self, flow: FieldFlow, action, path_gradient: bool = False, generator: torch.Generator | None = None,
                 kinetic_weight: float = 0.0, jacobian_weight: float = 0.0):
        super().__init__()
        from rgflow.flows.ode import ODEBlock
        from rgflow.flows.ode_cnn import ODECNNLevel

        self.kinetic_weight, self.jacobian_weight = kinetic_weight, jacobian_weight
        self._ode_blocks = [m for m in flow.modules() if isinstance(m, (ODEBlock, ODECNNLevel))]
        self.flow = flow
        self.generator = generator
        self.action = action
        self.path_gradient = path_gradient
        self._log_prob = _LogProb(flow)
        self.last_log_w: torch.Tensor | None = None

    def forward(self, batch_size: int) -> torch.Tensor:
        x, log_q = self.flow.sample(batch_size, generator=self.generator)
        # the RNODE penalties of the sampling pass (the path-gradient re-evaluation below runs the
        # ODE blocks again with detached parameters and would overwrite them)
        penalty = self._rnode(batch_size) if self._ode_blocks else None
        if self.path_gradient:
            detached = {"flow." + k: v.detach() for k, v in self.flow.named_parameters()}
            log_q = functional_call(self._log_prob, detached, (x,), strict=False)
        S = self.action(x)
        self.last_log_w = (-S - log_q).detach()
        loss = (log_q + S).mean()
        if penalty is not None:
            loss = loss + penalty
        return loss

    def _rnode(self, batch_size: int) -> torch.Tensor | None:
        """The weighted RNODE penalties from the ODE blocks' last pass (``None`` if both weights are 0)."""
        terms = [(w, name) for w, name in ((self.kinetic_weight, "kinetic"), (self.jacobian_weight, "jacobian")) if w > 0]
        if not terms:
            return None
        return sum(w * sum(getattr(b, name).reshape(batch_size, -1).sum(1) for b in self._ode_blocks).mean()
                   for w, name in terms)


class ForwardKL(nn.Module):
    """Maximum likelihood: ``forward(batch_size) -> -E_data[ln q(x)]`` on minibatches ``batches(batch_size)``
    (a :class:`~rgflow.ensemble.FieldBatches` of an ensemble's training split). Its minimum over
    ``q`` is the data's entropy, ``KL(p_data || q) = loss - H(p_data) >= 0``."""

    def __init__(self, flow: FieldFlow, batches):
        super().__init__()
        self.flow, self.batches = flow, batches
        self._log_prob = _LogProb(flow)

    def forward(self, batch_size: int) -> torch.Tensor:
        x = self.batches(batch_size)
        return -self._log_prob(x).mean()
