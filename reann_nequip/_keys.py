"""Field names this package adds to nequip's, registered with nequip when imported.

nequip 0.19 already registers ``dipole`` as a *per-atom* field, so a frame's dipole is
``total_dipole``.
"""

from typing import Final

from nequip.data import register_fields

TOTAL_DIPOLE_KEY: Final[str] = "total_dipole"  # [num_frames, 3], e·Å
POLARIZABILITY_KEY: Final[str] = "polarizability"  # [num_frames, 3, 3], symmetric

register_fields(
    graph_fields=[TOTAL_DIPOLE_KEY, POLARIZABILITY_KEY],
    cartesian_tensor_fields={POLARIZABILITY_KEY: "ij=ji"},
)
