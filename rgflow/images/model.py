r"""8-bit images as continuous data: dequantisation, the logit pre-transform, bits per dimension.

An 8-bit image ``x in {0..255}^D`` becomes ``u = (x + v) / 256`` with ``v ~ U[0, 1)^D`` (uniform
dequantisation). :class:`ImageFlow` maps ``u`` to the bulk latents in two steps, data -> latent:

``y = logit(s)``, ``s = alpha + (1 - 2 alpha) u``, with
``ln|det dy/du| = sum_i [ln(1 - 2 alpha) - ln s_i - ln(1 - s_i)]``, then ``z = F(y)`` (any
:class:`~rgflow.flows.rgflow.FieldFlow`). So ``ln p(u) = ln p_Z(z) + ln|det dz/dy| + ln|det dy/du|``.

Bits per dimension in the original 8-bit space (Theis et al. 2016; the dequantised density bounds
the discrete likelihood): ``bpd(x) = (-ln p(u) + D ln 256) / (D ln 2)``.
"""
from __future__ import annotations

import math

import torch
from nflows.transforms.base import Transform

from rgflow.density import Density
from rgflow.flows.rgflow import FieldFlow

__all__ = ["ImageFlow", "logit_transform", "dequantize", "bits_per_dim"]


def logit_transform(u: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``u [B, C, H, W] in (0, 1) -> (y = logit(alpha + (1 - 2 alpha) u), ln|det dy/du| [B])``."""
    s = alpha + (1 - 2 * alpha) * u
    y = torch.log(s) - torch.log1p(-s)
    logdet = (math.log(1 - 2 * alpha) - torch.log(s) - torch.log1p(-s)).flatten(1).sum(1)
    return y, logdet


def _sigmoid_transform(y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`logit_transform`: ``(u, ln|det du/dy|)``."""
    s = torch.sigmoid(y)
    u = (s - alpha) / (1 - 2 * alpha)
    logdet = (torch.nn.functional.logsigmoid(y) + torch.nn.functional.logsigmoid(-y) - math.log(1 - 2 * alpha))
    return u, logdet.flatten(1).sum(1)


class ImageFlow(Density, Transform):
    """A flow on dequantised images ``u [B, C, L, L]`` in ``(0, 1)``: logit, then ``flow``.

    Follows the rgflow bijection contract (``forward``: data ``u`` -> latent ``z`` with
    ``ln|det dz/du|``; ``inverse``: latent -> data) and is a :class:`~rgflow.density.Density`
    (``log_prob``, ``sample(n) -> (u, ln q)``). ``layout`` and ``prior`` are the wrapped flow's.

    Args:
        flow: the flow in logit space (an :class:`~rgflow.flows.rgflow.RGFlow` or the flat baseline).
        alpha: logit margin, ``0 < alpha < 1/2``.
    """

    def __init__(self, flow: FieldFlow, alpha: float = 0.05):
        super().__init__()
        if not 0 < alpha < 0.5:
            raise ValueError(f"alpha={alpha!r} is not allowed: the logit margin must lie in (0, 0.5)")
        self.flow, self.alpha = flow, alpha
        self.channels, self.L = flow.channels, flow.L

    @property
    def prior(self):
        return self.flow.prior

    @property
    def layout(self):
        return self.flow.layout

    def forward(self, inputs: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        y, ld_logit = logit_transform(inputs, self.alpha)
        z, ld_flow = self.flow.forward(y)
        return z, ld_logit + ld_flow

    def inverse(self, inputs: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        y, ld_flow = self.flow.inverse(inputs)
        u, ld_sigmoid = _sigmoid_transform(y, self.alpha)
        return u, ld_flow + ld_sigmoid

    def log_prob(self, u: torch.Tensor) -> torch.Tensor:
        """``ln p(u)``: ``[B, C, L, L] -> [B]``."""
        z, logdet = self.forward(u)
        return self.prior.log_prob(z) + logdet

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u [n, C, L, L], ln p(u) [n])``; ``(u * 256).floor()`` is the 8-bit image."""
        z = self.prior.sample(n, generator=generator)
        u, logdet = self.inverse(z)
        return u, self.prior.log_prob(z) - logdet


def dequantize(images: torch.Tensor, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
    """``uint8 [B, C, H, W] -> u = (x + v) / 256``, ``v ~ U[0, 1)`` (drawn from ``generator``)."""
    noise = torch.rand(images.shape, generator=generator, dtype=dtype, device=images.device)
    return (images.to(dtype) + noise) / 256.0


@torch.no_grad()
def bits_per_dim(model: ImageFlow, images: torch.Tensor, generator: torch.Generator | None = None,
                 batch_size: int = 512) -> torch.Tensor:
    """Bits per dimension of each 8-bit image under ``model`` (one dequantisation draw): ``[N]``
    (float64). The mean over a held-out set is the figure of merit; its standard error is
    ``std / sqrt(N)``."""
    dtype = model.prior.log_scale.dtype
    D = images[0].numel()
    out = []
    for i in range(0, len(images), batch_size):
        u = dequantize(images[i:i + batch_size], generator, dtype)
        out.append((-model.log_prob(u).double() + D * math.log(256.0)) / (D * math.log(2.0)))
    return torch.cat(out)
