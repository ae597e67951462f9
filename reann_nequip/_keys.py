"""Field names this package adds to nequip's, registered with nequip when imported.

nequip 0.19 already registers ``dipole`` as a *per-atom* field, so a frame's dipole is
``total_dipole`` and an atom's contribution to it ``atomic_dipole``.
"""

from typing import Final

from nequip.data import register_fields

# === per frame: the targets of the tensor models ===
TOTAL_DIPOLE_KEY: Final[str] = "total_dipole"  # [num_frames, 3], e·Å
POLARIZABILITY_KEY: Final[str] = "polarizability"  # [num_frames, 3, 3], symmetric, Å³
TRANSITION_DIPOLE_KEY: Final[str] = "transition_dipole"  # [num_frames, 3], e·Å

# === per atom: what the tensor models build them from ===
# μ_i = Σ_{j∈N(i)} q_j r_ij, the contribution of atom i to the frame's dipole
ATOMIC_DIPOLE_KEY: Final[str] = "atomic_dipole"  # [num_atoms, 3], e·Å
# q_j, REANN's per-atom output of the dipole model
DIPOLE_CHARGE_KEY: Final[str] = "dipole_charge"  # [num_atoms, 1], e
# (a_j, b_j, c_j), REANN's three per-atom outputs of the transition-dipole model
TRANSITION_DIPOLE_HEADS_KEY: Final[str] = "transition_dipole_heads"  # [num_atoms, 3]
# E0, E1: per-atom scalars whose position gradients J1, J2 give the anisotropic polarizability
POLARIZABILITY_POTENTIAL_0_KEY: Final[str] = "polarizability_potential_0"  # [num_atoms, 1], Å²
POLARIZABILITY_POTENTIAL_1_KEY: Final[str] = "polarizability_potential_1"  # [num_atoms, 1], Å³
# E2: atom i's contribution to the isotropic term (Σ E2)·I
ATOMIC_ISOTROPIC_POLARIZABILITY_KEY: Final[str] = "atomic_isotropic_polarizability"  # [N, 1], Å³

register_fields(
    graph_fields=[TOTAL_DIPOLE_KEY, POLARIZABILITY_KEY, TRANSITION_DIPOLE_KEY],
    node_fields=[
        ATOMIC_DIPOLE_KEY,
        DIPOLE_CHARGE_KEY,
        TRANSITION_DIPOLE_HEADS_KEY,
        POLARIZABILITY_POTENTIAL_0_KEY,
        POLARIZABILITY_POTENTIAL_1_KEY,
        ATOMIC_ISOTROPIC_POLARIZABILITY_KEY,
    ],
    cartesian_tensor_fields={POLARIZABILITY_KEY: "ij=ji"},
)
