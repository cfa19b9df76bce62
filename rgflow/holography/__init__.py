"""Holographic probes of a trained flow: bulk correlators and mutual information, boundary
correlator, emergent geometry (H^3 against flat), from samples of the exact target."""
from rgflow.holography.correlators import boundary_correlator, bulk_correlators, ksg_mutual_information, pair_keys
from rgflow.holography.geometry import GeometryFit, fit_geometry, flat_distance, hyperbolic_distance
from rgflow.holography.probe import fit_boundary, probe

__all__ = ["probe", "bulk_correlators", "boundary_correlator", "ksg_mutual_information", "pair_keys",
           "fit_geometry", "GeometryFit", "hyperbolic_distance", "flat_distance", "fit_boundary"]
