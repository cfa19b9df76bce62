r"""The denoiser: a periodic U-Net with EDM preconditioning per site (Karras et al. 2022).

In EDM variables ``v = y + sigma eps`` (``y`` the scaled RG coordinates, unit scale, so
``sigma_data = 1``) the denoiser is, site by site with that site's level noise ``sigma``,

``D(v) = c_skip v + c_out R_net(F(R_net^{-1}(c_in v), c_noise))``,
``c_skip = 1/(sigma^2 + 1)``, ``c_out = sigma / sqrt(sigma^2 + 1)``, ``c_in = 1/sqrt(sigma^2 + 1)``,
``c_noise = ln(sigma) / 4`` (one number per level, fed to every block by FiLM).

``F`` is a U-Net of 3x3 circular convolutions (periodic lattice), average-pool down and
nearest-neighbour up by 2, GroupNorm and SiLU; it is equivariant under lattice shifts by
``2^depth``. It works in *field* space (``R_net`` = the coordinates' map back to the lattice,
for the linear Haar map: a standard image denoiser whose input noise is coloured by level) or in
*latent* space (``R_net`` = identity, the in-place latents plus a one-hot level map as input;
for trained, nonlinear coordinates). :class:`EMA` keeps the exponential moving average used for
sampling.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["UNet", "MLPNet", "Denoiser", "EMA", "NET_SPACES"]

NET_SPACES = ("field", "latent")


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, padding_mode="circular")


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cond: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(min(8, cin), cin), _conv(cin, cout)
        self.norm2, self.conv2 = nn.GroupNorm(min(8, cout), cout), _conv(cout, cout)
        self.film = nn.Linear(cond, 2 * cout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class UNet(nn.Module):
    """``F(x [B, cin, L, L], cond [B, n_cond]) -> [B, cout, L, L]``, ``depth`` down/up stages."""

    def __init__(self, cin: int, cout: int, n_cond: int, width: int = 32, depth: int = 3):
        super().__init__()
        self.depth = depth
        emb = 4 * width
        self.embed = nn.Sequential(nn.Linear(n_cond, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = _conv(cin, width)
        self.down = nn.ModuleList([_ResBlock(width, width, emb) for _ in range(depth)])
        self.mid = _ResBlock(width, width, emb)
        self.up = nn.ModuleList([_ResBlock(2 * width, width, emb) for _ in range(depth)])
        self.out = _conv(width, cout)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        emb = self.embed(cond)
        h = self.inp(x)
        skips = []
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
            h = F.avg_pool2d(h, 2)
        h = self.mid(h, emb)
        for block in self.up:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


class MLPNet(nn.Module):
    """``F(h [B, D], cond [B, n_cond]) -> [B, D]`` for a few diffused coarse latents (``levels > 0``):
    ``depth`` SiLU layers of ``width`` units on ``(h, cond)``, the last layer zero-initialised."""

    def __init__(self, dim: int, n_cond: int, width: int = 128, depth: int = 3):
        super().__init__()
        dims = [dim + n_cond] + [width] * depth
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.body, self.out = nn.Sequential(*layers), nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(torch.cat([h, cond], dim=1)))


class Denoiser(nn.Module):
    """EDM-preconditioned ``D(v, sigma_levels)`` on scaled RG coordinates (module docstring).

    Args:
        coords: the :class:`~rgflow.diffusion.coords.RGCoordinates` (levels, map to the field).
        width, depth: U-Net width and number of down/up stages (at most ``log2(L) - 1``); when only
            the coarse levels are diffused (``coords.levels > 0``) an :class:`MLPNet` of ``4 width`` units
            and ``depth`` layers on the flattened diffused latents.
        net_space: ``"field"`` or ``"latent"`` (U-Net only).
    """

    def __init__(self, coords, width: int = 32, depth: int = 3, net_space: str = "field"):
        super().__init__()
        if net_space not in NET_SPACES:
            raise ValueError(f"net_space={net_space!r} is not allowed; allowed: {', '.join(NET_SPACES)}")
        L, C = coords.layout.L, coords.flow.channels
        self.coords, self.net_space = coords, net_space
        n_lev = coords.n_levels
        if coords.levels > 0:
            self.depth = depth
            self.net = MLPNet(math.prod(coords.shape), n_lev, 4 * width, depth)
            return
        max_depth = int(math.log2(L & -L)) - 1  # pooling by 2 while the side stays even and >= 2
        self.depth = max(1, min(depth, max_depth))
        extra = n_lev if net_space == "latent" else 0
        self.net = UNet(C + extra, C, n_lev, width, self.depth)

    def forward(self, v: torch.Tensor, sigma_levels: torch.Tensor) -> torch.Tensor:
        """``v [B, C, L, L]``, ``sigma_levels [B, n_levels]`` -> ``D(v) [B, C, L, L]``."""
        sigma = self.coords.sigma_map(sigma_levels)  # [B, 1, L, L]
        c_in = 1 / torch.sqrt(sigma**2 + 1)
        c_skip, c_out = 1 / (sigma**2 + 1), sigma * c_in
        cond = torch.log(sigma_levels) / 4
        h = c_in * v
        if self.coords.levels > 0:
            out = self.net(h.flatten(1), cond).reshape(v.shape)
        elif self.net_space == "field":
            out = self.coords.flow.apply(h, inverse=True)[0]
            out = self.coords.flow.apply(self.net(out, cond))[0]
        else:
            onehot = F.one_hot(self.coords.level_of_site, self.coords.n_levels).permute(2, 0, 1).to(v)
            out = self.net(torch.cat([h, onehot.expand(len(v), -1, -1, -1)], dim=1), cond)
        return c_skip * v + c_out * out

    def loss(self, y: torch.Tensor, sigma_levels: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """EDM's weighted denoising loss ``|F - (y - c_skip v) / c_out|^2`` per sample: ``[B]``
        (``lambda(sigma) |D(v) - y|^2`` with ``lambda = 1 / c_out^2``)."""
        sigma = self.coords.sigma_map(sigma_levels)
        v = y + sigma * eps
        c_out = sigma / torch.sqrt(sigma**2 + 1)
        return (((self(v, sigma_levels) - y) / c_out) ** 2).flatten(1).mean(1)


class EMA:
    """Exponential moving average of a module's parameters: ``ema <- d ema + (1 - d) theta``."""

    def __init__(self, module: nn.Module, decay: float = 0.999):
        if not 0 <= decay < 1:
            raise ValueError(f"ema={decay!r} is not allowed: must be in [0, 1)")
        self.decay, self.module = decay, module
        self.shadow = copy.deepcopy(module).requires_grad_(False)

    @torch.no_grad()
    def update(self) -> None:
        for e, p in zip(self.shadow.parameters(), self.module.parameters()):
            e.lerp_(p.detach(), 1 - self.decay)
        for e, b in zip(self.shadow.buffers(), self.module.buffers()):
            e.copy_(b)
