r"""Networks of a diffusion stage: ``G(h [B, cin, M, M], c_noise [B]) -> [B, cout, M, M]``.

Every network's last layer starts at zero, so an untrained model is the exact Gaussian of its
ensemble (:mod:`rgflow.diffusion.gaussian`); the network learns only the non-Gaussian rest.

* :class:`LocalNet` (``--net local``) -- ``depth`` periodic 3x3 convolutions with residual SiLU
  blocks, FiLM-conditioned on the noise level: translation-equivariant on the stage's grid, no
  normalisation, no pooling, a receptive field of ``depth`` sites in every direction
  (:attr:`LocalNet.radius`). Its Jacobian is sparse, so exact densities cost a number of
  Jacobian-vector products independent of ``L`` (:mod:`rgflow.diffusion.jacobian`).
* :class:`UNet` (``--net unet``) -- EDM-style U-Net with GroupNorm, average-pool down and
  nearest-neighbour up (``depth`` stages, fewer on small grids): dense Jacobian.
* :class:`MLPNet` -- for a handful of flattened variables (the flow-latent hybrid).
* :class:`Odd` -- ``G(h) -> (G(h) - G(-h)) / 2``: exactly odd under ``phi -> -phi`` (Z2 actions).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["NoiseEmbedding", "LocalNet", "UNet", "MLPNet", "Odd", "NET_KINDS", "make_net"]

NET_KINDS = ("local", "unet")


def _conv(cin: int, cout: int, kernel: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, padding=kernel // 2, padding_mode="circular")


def _zero(layer: nn.Module) -> nn.Module:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class NoiseEmbedding(nn.Module):
    """``c_noise [B] -> [B, dim]``: Fourier features ``sin/cos(2^k c)``, ``k = 0..7``, and an MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("freq", 2.0 ** torch.arange(8), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(17, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        a = c[:, None] * self.freq.to(c)
        return self.mlp(torch.cat([c[:, None], torch.sin(a), torch.cos(a)], dim=1))


class LocalNet(nn.Module):
    """Local convolutional network (module docstring): ``depth >= 2`` convolutions of ``width`` channels
    (on a ``1 x 1`` grid, where a periodic 3x3 kernel only ever sees its sum, 1x1 kernels)."""

    def __init__(self, cin: int, cout: int, width: int = 32, depth: int = 4, grid: int = 8):
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth={depth!r} is not allowed for the local net: at least 2 convolutions")
        k = 1 if grid == 1 else 3
        self.embed = NoiseEmbedding(2 * width)
        self.inp = _conv(cin, width, k)
        self.films = nn.ModuleList([nn.Linear(2 * width, 2 * width) for _ in range(depth - 2)])
        self.convs = nn.ModuleList([_conv(width, width, k) for _ in range(depth - 2)])
        self.out = _zero(_conv(width, cout, k))
        self.radius = depth * (k // 2)

    def forward(self, h: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        e = self.embed(c_noise)
        h = self.inp(h)
        for film, conv in zip(self.films, self.convs):
            scale, shift = film(e)[:, :, None, None].chunk(2, dim=1)
            h = h + conv(F.silu(h * (1 + scale) + shift))
        return self.out(F.silu(h))


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cond: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(math.gcd(8, cin), cin), _conv(cin, cout)
        self.norm2, self.conv2 = nn.GroupNorm(math.gcd(8, cout), cout), _conv(cout, cout)
        self.film = nn.Linear(cond, 2 * cout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class UNet(nn.Module):
    """U-Net on an ``M x M`` grid: ``depth`` down/up stages (at most ``log2`` of the largest power of
    two dividing ``M``; 0 on odd grids: then one residual block)."""

    def __init__(self, cin: int, cout: int, width: int = 32, depth: int = 3, grid: int = 8):
        super().__init__()
        self.depth = max(0, min(depth, int(math.log2(grid & -grid))))
        emb = 4 * width
        self.embed = NoiseEmbedding(emb)
        self.inp = _conv(cin, width)
        self.down = nn.ModuleList([_ResBlock(width, width, emb) for _ in range(self.depth)])
        self.mid = _ResBlock(width, width, emb)
        self.up = nn.ModuleList([_ResBlock(2 * width, width, emb) for _ in range(self.depth)])
        self.out = _zero(_conv(width, cout))

    def forward(self, h: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        emb = self.embed(c_noise)
        h = self.inp(h)
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
    """``G(h [B, D], c_noise [B]) -> [B, D_out]``: ``depth`` SiLU layers of ``width`` units."""

    def __init__(self, cin: int, cout: int, width: int = 128, depth: int = 3):
        super().__init__()
        self.embed = NoiseEmbedding(32)
        dims = [cin + 32] + [width] * depth
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.body, self.out = nn.Sequential(*layers), _zero(nn.Linear(width, cout))

    def forward(self, h: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(torch.cat([h, self.embed(c_noise)], dim=1)))


class Odd(nn.Module):
    """``(G(h, c) - G(-h, c)) / 2``: odd in its input (one call of ``G`` on the doubled batch)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    @property
    def radius(self) -> int | None:
        return getattr(self.net, "radius", None)

    def forward(self, h: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        both = self.net(torch.cat([h, -h]), torch.cat([c_noise, c_noise]))
        plus, minus = both.chunk(2)
        return 0.5 * (plus - minus)


def make_net(kind: str, cin: int, cout: int, grid: int, width: int, depth: int, odd: bool) -> nn.Module:
    """The network of one stage on an ``grid x grid`` lattice (``kind`` in :data:`NET_KINDS`)."""
    if kind == "local":
        net = LocalNet(cin, cout, width, depth, grid)
    elif kind == "unet":
        net = UNet(cin, cout, width, depth, grid)
    else:
        raise ValueError(f"net={kind!r} is not allowed; allowed: {', '.join(NET_KINDS)}")
    return Odd(net) if odd else net
