r"""Reverse-KL loss as a module (so it can be called through a DDP wrapper).

``F_var = E_{x~q}[ln q(x) + S(x)] = -ln Z + KL(q || p) >= -ln Z``, the variational free
energy of the action's frame; ``ln q`` includes the prior term ``ln p(z)``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from rgflow.flows.rgflow import FieldFlow

__all__ = ["ReverseKL"]


class _LogProb(nn.Module):
    def __init__(self, flow: FieldFlow):
        super().__init__()
        self.flow = flow

    def forward(self, x):
        return self.flow.log_prob(x)


class ReverseKL(nn.Module):
    """``forward(batch_size) -> loss``, the Monte Carlo estimate of ``F_var``.

    Args:
        flow: the sampler ``q``; action: callable ``S: [B, C, L, L] -> [B]``.
        path_gradient: use the "sticking the landing" estimator (Roeder et al. 2017;
            Vaitl et al. 2022): ``ln q`` is re-evaluated at the sampled ``x`` with the
            parameters detached, so the gradient flows only through the sample path. Same
            expectation, lower variance near convergence, one extra forward pass.

    After each call ``self.last_log_w`` holds the detached log importance weights
    ``-S - ln q`` of the batch.
    """

    def __init__(self, flow: FieldFlow, action, path_gradient: bool = False):
        super().__init__()
        self.flow = flow
        self.action = action
        self.path_gradient = path_gradient
        self._log_prob = _LogProb(flow)
        self.last_log_w: torch.Tensor | None = None

    def forward(self, batch_size: int) -> torch.Tensor:
        z = self.flow.prior.sample(batch_size)
        x, logdet = self.flow.inverse(z)
        if self.path_gradient:
            detached = {"flow." + k: v.detach() for k, v in self.flow.named_parameters()}
            log_q = functional_call(self._log_prob, detached, (x,), strict=False)
        else:
            log_q = self.flow.prior.log_prob(z) - logdet
        S = self.action(x)
        self.last_log_w = (-S - log_q).detach()
        return (log_q + S).mean()
