"""Bijective RG blocks, priors and the hierarchical flow (one contract: nflows ``Transform``)."""
from rgflow.flows.base import BlockSublayer, Transform
from rgflow.flows.couplings import (
    BLOCK_KINDS,
    AffineCoupling,
    ConditionerMLP,
    OddSplineCoupling,
    SplineCoupling,
    Z2Conditioner,
    block_masks,
    make_block,
    spline_coupling,
)
from rgflow.flows.conv import ConvCouplingStack, ConvLevel
from rgflow.flows.haar import HaarBlock, IdentityBlock
from rgflow.flows.ode_cnn import ODECNNLevel
from rgflow.flows.priors import PRIOR_KINDS, Prior
from rgflow.flows.rgflow import FLOW_BLOCK_KINDS, RGFlow, build_flow, haar_flow
from rgflow.flows.symmetrize import SYMMETRY_GROUPS, SymmetrizedFlow
from rgflow.flows.transfer import grow_flow

__all__ = [
    "Transform", "BlockSublayer", "AffineCoupling", "SplineCoupling", "OddSplineCoupling", "ConditionerMLP",
    "Z2Conditioner", "spline_coupling", "block_masks", "make_block", "BLOCK_KINDS", "Prior",
    "PRIOR_KINDS", "RGFlow", "build_flow", "HaarBlock", "IdentityBlock", "haar_flow", "ODECNNLevel",
    "ConvCouplingStack", "ConvLevel",
    "FLOW_BLOCK_KINDS", "SymmetrizedFlow", "SYMMETRY_GROUPS", "grow_flow",
]
