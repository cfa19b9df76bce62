"""rgflow: the renormalization group as a learned bijection.

A hierarchical (MERA-like) stack of local invertible blocks maps a lattice field (boundary) to
multiscale latent variables (bulk). The :class:`~rgflow.layout.Layout` owns the hierarchy,
:mod:`rgflow.flows` the bijections, :mod:`rgflow.physics` the actions and exact references.
"""
from rgflow.flows import RGFlow, build_flow
from rgflow.layout import Layout
from rgflow.physics import make_action

__version__ = "0.1.0"
__all__ = ["Layout", "RGFlow", "build_flow", "make_action", "__version__"]
