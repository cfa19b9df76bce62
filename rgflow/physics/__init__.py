"""Lattice physics: actions (pure functions of ``[B, C, L, L]``), exact references, observables."""
from rgflow.physics.actions import (
    complex_phi4_action,
    free_action,
    hopping_to_standard,
    ising_lnZ_offset,
    ising_relaxed_action,
    phi4_action,
    phi4_hopping_action,
    standard_to_hopping,
)
from rgflow.physics.exact import ISING_TC, free_field_lnZ, free_field_two_point, ising_lnZ_exact
from rgflow.physics.fields import check_field
from rgflow.physics.models import ACTION_PARAMS, Action, make_action
from rgflow.physics.observables import (
    OBSERVABLE_NAMES,
    abs_magnetization,
    estimate_observables,
    ising_spins,
    link_energy,
    magnetization,
    primaries,
    second_moment_xi,
    time_slice_correlator,
    two_point,
)

__all__ = [
    "free_action", "phi4_action", "phi4_hopping_action", "complex_phi4_action", "ising_relaxed_action",
    "hopping_to_standard", "standard_to_hopping", "ising_lnZ_offset",
    "ISING_TC", "free_field_lnZ", "free_field_two_point", "ising_lnZ_exact",
    "check_field", "Action", "make_action", "ACTION_PARAMS",
    "OBSERVABLE_NAMES", "magnetization", "abs_magnetization", "link_energy", "two_point",
    "time_slice_correlator", "second_moment_xi", "ising_spins", "primaries", "estimate_observables",
]
