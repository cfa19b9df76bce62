r"""The hierarchical (MERA-like) RG flow: boundary field ``x`` <-> bulk latents ``z``.

``forward`` runs the layout's sublayers fine -> coarse (disentangler, decimator per level),
mapping data to latent; frozen latents stay in place, so ``z`` has ``x``'s shape and
:meth:`rgflow.layout.Layout.split` reads out each level. ``inverse`` generates coarse -> fine.

``ln q(x) = ln p(z) + ln |det dz/dx|``, ``z = forward(x)``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from nflows.transforms.base import Transform
from torch import nn

from rgflow.defaults import FLOW_DEFAULTS, block_defaults, default_block
from rgflow.density import Density
from rgflow.flows.base import BlockSublayer
from rgflow.flows.couplings import make_block
from rgflow.flows.haar import HaarBlock, IdentityBlock
from rgflow.flows.priors import Prior
from rgflow.layout import Layout
from rgflow.physics.fields import check_field

__all__ = ["FieldFlow", "RGFlow", "build_flow", "haar_flow", "FLOW_BLOCK_KINDS", "parse_levels"]

#: block kinds of :func:`build_flow`: the block bijections, ``"ode-cnn"`` (an ODE-CNN layer per level) and
#: ``"conv"`` (convolutional spline couplings per level, one stack shared by all levels)
FLOW_BLOCK_KINDS = ("affine", "spline", "ode", "ode-cnn", "conv")


def parse_levels(spec: str, n_levels: int) -> list[int]:
    """Levels named by ``spec``: ``":"`` (all), ``"2:"``, ``":2"``, ``"1:3"`` (slices) or ``"0,2"`` (a list).

    Raises:
        ValueError: naming the spec and the levels that exist.
    """
    allowed = f"levels 0..{n_levels - 1} as ':', 'a:', ':b', 'a:b' or 'a,b,...'"
    try:
        if ":" in spec:
            a, b = spec.split(":")
            levels = list(range(n_levels))[slice(int(a) if a else None, int(b) if b else None)]
        else:
            levels = sorted({int(v) for v in spec.split(",")})
    except ValueError:
        raise ValueError(f"ode_levels={spec!r} is not allowed; allowed: {allowed}") from None
    if not levels or any(not 0 <= v < n_levels for v in levels):
        raise ValueError(f"ode_levels={spec!r} selects no level or a level that does not exist; allowed: {allowed}")
    return levels


class FieldFlow(Density, Transform):
    """A normalising flow on ``[B, C, L, L]`` fields: a sequence of field bijections and a prior
    (a :class:`~rgflow.density.Density`; ``layout`` is None for the flat flow).

    Args:
        layers: field transforms ``[B, C, L, L] -> ([B, C, L, L], [B])``, applied in order
            data -> latent.
        prior: a :class:`~rgflow.flows.priors.Prior` over the latents.
    """

    def __init__(self, layers: Sequence[Transform], prior: Prior):
        super().__init__()
        self.channels, self.L = prior.channels, prior.L
        self.sublayers = nn.ModuleList(layers)
        self.prior = prior

    def _check(self, t: torch.Tensor, name: str) -> None:
        check_field(t, name=name, channels=self.channels, L=self.L)

    def forward(self, inputs: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Data -> latent: ``x [B, C, L, L] -> (z [B, C, L, L], ln|det dz/dx| [B])``."""
        self._check(inputs, "x")
        return self.apply(inputs)

    def inverse(self, inputs: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent -> data: ``z -> (x, ln|det dx/dz| [B])``."""
        self._check(inputs, "z")
        return self.apply(inputs, inverse=True)

    def apply(self, inputs: torch.Tensor, inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` (or :meth:`inverse`) without validating the input: the hot path for callers
        that already hold well-formed tensors (and inside ``torch.func`` transforms, where a
        data-dependent check cannot run)."""
        x, total = inputs, inputs.new_zeros(inputs.shape[0])
        for layer in (reversed(self.sublayers) if inverse else self.sublayers):
            x, ld = layer.inverse(x) if inverse else layer(x)
            total = total + ld
        return x, total

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``ln q(x)``: ``[B, C, L, L] -> [B]``."""
        z, logdet = self.forward(x)
        return self.prior.log_prob(z) + logdet

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` fields: returns ``(x [n, C, L, L], ln q(x) [n])`` (exact density)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n (number of samples) must be a positive integer, got {n!r}")
        z = self.prior.sample(n, generator=generator)
        x, logdet = self.apply(z, inverse=True)  # z is the prior's own draw: no validation scan
        return x, self.prior.log_prob(z) - logdet


class RGFlow(FieldFlow):
    """The hierarchical flow: one block bijection per sublayer of a :class:`~rgflow.layout.Layout`.

    Args:
        layout: the RG hierarchy.
        blocks: one block bijection per ``layout.sublayers`` entry, each an nflows-compatible
            transform on ``[N, C b^2]`` (block types may differ per level).
        prior: a :class:`~rgflow.flows.priors.Prior` over the latents.
        level_layers: ``{level: field transform}`` that replace all sublayers of those levels (e.g.
            :class:`~rgflow.flows.ode_cnn.ODECNNLevel`); their ``blocks`` entries are ignored.
    """

    def __init__(self, layout: Layout, blocks: Sequence[Transform | None], prior: Prior,
                 level_layers: dict[int, Transform] | None = None):
        if len(blocks) != len(layout.sublayers):
            raise ValueError(f"blocks must have one transform per sublayer ({len(layout.sublayers)}), got {len(blocks)}")
        level_layers = level_layers or {}
        layers: list[Transform] = []
        for s, b in zip(layout.sublayers, blocks):
            if s.level not in level_layers:
                layers.append(BlockSublayer(s, b))
            elif level_layers[s.level] not in layers:
                layers.append(level_layers[s.level])
        super().__init__(layers, prior)
        self._layout = layout

    @property
    def layout(self) -> Layout:
        return self._layout


def build_flow(
    layout: Layout,
    channels: int = 1,
    block: str | None = None,
    n_couplings: int | None = None,
    hidden: int | None = None,
    layers: int = FLOW_DEFAULTS["layers"],
    prior: str = FLOW_DEFAULTS["prior"],
    learn_level_scale: bool | None = None,
    *,
    ode_levels: str | None = None,
    **block_kwargs,
) -> RGFlow:
    """An :class:`RGFlow` with the same block kind on every sublayer (independent weights per sublayer).

    The defaults are :data:`rgflow.defaults.FLOW_DEFAULTS`, the same as ``rgflow train``'s: ``block=None``
    is ``"conv"`` (below) on a MERA layout and ``"spline"`` on a TEBD layout or with ``ode_levels``
    (:func:`rgflow.defaults.default_block`), with couplings and widths by block kind (``n_couplings=None`` and
    ``hidden=None``: 8 couplings of width 16 for ``conv``, 4 of width 32 for the per-cell blocks,
    :func:`rgflow.defaults.block_defaults`), rational-quadratic splines
    (``num_bins``/``tail_bound`` from :func:`rgflow.defaults.spline_range`; pass ``num_bins=12, tail_bound=10``
    for the Ising relaxation as the CLI does). The per-cell blocks (``spline``, ``affine``, ``ode``) get one
    block per sublayer and learned per-level prior scales by default. ``block_kwargs`` go to
    :func:`~rgflow.flows.couplings.make_block` (``num_bins``, ``tail_bound``, ``equivariance``, ODE options).

    ``block="ode-cnn"`` puts an :class:`~rgflow.flows.ode_cnn.ODECNNLevel` (a CNN velocity of width
    ``hidden`` with ``layers`` convolutions, solver ``ode_method``/``ode_steps``, step checkpointing
    ``ode_checkpoint``) on every level;
    ``ode_levels`` (e.g. ``"2:"``) puts one on those levels only and ``block`` blocks on the others.

    ``block="conv"`` puts :class:`~rgflow.flows.conv.ConvLevel` on every level, all moved by one
    :class:`~rgflow.flows.conv.ConvCouplingStack` (``n_couplings`` spline couplings with CNN conditioners of
    width ``hidden`` and ``layers`` hidden convolutions), registered once as ``conv_stack``: the state dict does
    not depend on ``L``; ``conv_finest=True`` gives level 0 a stack of its own (``conv_finest``, also
    independent of ``L``). Its prior has no learned level scales (they would tie the flow to one ``L``).

    With ``equivariance="u1"`` the prior's level scales are tied across channels and the prior must be
    normal, so that the whole density is invariant under global phase rotations.
    """
    block = default_block(layout.kind, ode_levels) if block is None else block
    u1 = block_kwargs.get("equivariance") == "u1"
    if u1 and prior != "normal":
        raise ValueError(f"prior={prior!r} is not allowed with equivariance='u1' (not rotation invariant); "
                         "allowed: 'normal'")
    if block not in FLOW_BLOCK_KINDS and block != "haar":
        raise ValueError(f"block kind {block!r} is not allowed; allowed: {', '.join(FLOW_BLOCK_KINDS)}")
    conv_finest = block_kwargs.pop("conv_finest", False)
    conv_coupling = block_kwargs.pop("conv_coupling", "spline")
    for name, value, plain in (("conv_finest", conv_finest, False), ("conv_coupling", conv_coupling, "spline")):
        if value != plain and block != "conv":
            raise ValueError(f"{name}={value!r} is not allowed with block {block!r}; allowed: block 'conv'")
    defaults = block_defaults(block)
    hidden = defaults["hidden"] if hidden is None else hidden
    n_couplings = defaults["n_couplings"] if n_couplings is None else n_couplings
    if block == "conv":
        return _conv_flow(conv_finest, conv_coupling, layout, channels, n_couplings, hidden, layers, prior,
                          learn_level_scale, ode_levels, **block_kwargs)
    learn_level_scale = defaults["learn_level_scale"] if learn_level_scale is None else learn_level_scale
    ode = parse_levels(ode_levels or ":", layout.n_levels) if (block == "ode-cnn" or ode_levels) else []
    ode_checkpoint = block_kwargs.pop("ode_checkpoint", False)
    if ode:
        from rgflow.flows.ode_cnn import ODECNNLevel

        level_layers = {lvl: ODECNNLevel(layout, lvl, channels, hidden, layers, method=block_kwargs.get("ode_method", "rk4"),
                                         steps=block_kwargs.get("ode_steps", 4),
                                         equivariance=block_kwargs.get("equivariance"),
                                         checkpoint=ode_checkpoint)
                        for lvl in ode}
    else:
        level_layers = {}
    blocks = [
        None if s.level in level_layers else
        make_block(block, layout.block_size, channels, n_couplings, hidden, layers, **block_kwargs)
        for s in layout.sublayers
    ]
    return RGFlow(layout, blocks, Prior(layout, channels, prior, learn_level_scale, tie_channels=u1), level_layers)


def _conv_flow(conv_finest: bool, conv_coupling: str, layout: Layout, channels: int, n_couplings: int, hidden: int,
               layers: int, prior: str, learn_level_scale: bool | None, ode_levels: str | None, num_bins: int | None = None,
               tail_bound: float | None = None, equivariance: str | None = None, ode_method: str | None = None,
               ode_steps: int | None = None, ode_checkpoint: bool = False) -> RGFlow:
    """:func:`build_flow` for ``block="conv"`` (the ``ode_*`` solver options are accepted and do not apply;
    any other keyword is a ``TypeError``, as for the other block kinds)."""
    from rgflow.defaults import spline_range
    from rgflow.flows.conv import ConvCouplingStack, ConvLevel

    if learn_level_scale:
        raise ValueError("learn_level_scale=True is not allowed with block 'conv' (per-level prior scales would tie "
                         "the flow to one L); allowed: False")
    if ode_levels:
        raise ValueError(f"ode_levels={ode_levels!r} is not allowed with block 'conv'; allowed: None (ODE levels "
                         "combine with the per-cell blocks: block 'spline')")
    bins, bound = spline_range()
    stack = ConvCouplingStack(channels, n_couplings, conv_coupling, hidden, layers, num_bins or bins, tail_bound or bound,
                              equivariance)
    finest = ConvCouplingStack(channels, n_couplings, conv_coupling, hidden, layers, num_bins or bins, tail_bound or bound,
                               equivariance) if conv_finest else stack
    levels = {lvl: ConvLevel(layout, lvl, finest if lvl == 0 else stack) for lvl in range(layout.n_levels)}
    flow = RGFlow(layout, [None] * len(layout.sublayers), Prior(layout, channels, prior), levels)
    flow.conv_stack = stack
    if conv_finest:
        flow.conv_finest = finest
    return flow


def haar_flow(layout, channels: int = 1):
    """The Haar map on ``layout`` as an :class:`~rgflow.flows.rgflow.RGFlow` with zero parameters
    and a standard normal prior (identity on disentanglers, :class:`HaarBlock` on decimators)."""
    if layout.kind != "mera":
        raise ValueError(f"the Haar map needs a MERA layout (decimation), got kind={layout.kind!r}")
    blocks = [HaarBlock(layout.block_size, channels) if s.role == "decimator" else IdentityBlock()
              for s in layout.sublayers]
    return RGFlow(layout, blocks, Prior(layout, channels))
