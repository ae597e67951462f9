"""Dipoles from per-atom scalars and pair vectors (REANN's "atomic dipole" form).

μ_i = Σ_{j∈N(i)} q_j r_ij with r_ij = r_i − r_j + shift, the vector from neighbour j's image to
atom i. A frame's dipole Σ_i μ_i is translation invariant (it only sees pair vectors) and
defined in periodic cells, where the pair vectors carry the cell shifts.

The neighbour sum has no cutoff factor, as in REANN: μ jumps by q_j r_ij when a pair crosses
``r_max``. Molecules smaller than ``r_max`` never see the jump.
"""

import torch
from nequip.data import AtomicDataDict
from nequip.nn import GraphModuleMixin, scatter

from .edge_vectors import with_edge_vectors


def atomic_pair_dipoles(data: AtomicDataDict.Type, weights: torch.Tensor) -> torch.Tensor:
    """μ_i^(k) = Σ_{j∈N(i)} w_j^(k) r_ij for each column k of ``weights``.

    ``weights``: [num_atoms, K] → [num_atoms, K, 3], in the dtype of the edge vectors.
    """
    edge_index = data[AtomicDataDict.EDGE_INDEX_KEY]
    # nequip's edge vectors point from the centre edge_index[0] to the neighbour edge_index[1]:
    # r_j − r_i + shift, i.e. −r_ij in REANN's convention
    edge_vectors = data[AtomicDataDict.EDGE_VECTORS_KEY]  # [num_edges, 3]
    neighbour_weights = torch.index_select(weights, 0, edge_index[1]).to(edge_vectors.dtype)
    pair_dipoles = -neighbour_weights.unsqueeze(-1) * edge_vectors.unsqueeze(1)  # [E, K, 3]
    return scatter(pair_dipoles, edge_index[0], dim=0, dim_size=weights.shape[0])


def sum_over_frames(data: AtomicDataDict.Type, per_atom: torch.Tensor) -> torch.Tensor:
    """[num_atoms, ...] → [num_frames, ...]."""
    if AtomicDataDict.BATCH_KEY in data:
        return scatter(
            per_atom,
            data[AtomicDataDict.BATCH_KEY],
            dim=0,
            dim_size=AtomicDataDict.num_frames(data),
        )
    return per_atom.sum(dim=0, keepdim=True)


class DipoleFromCharges(GraphModuleMixin, torch.nn.Module):
    """μ = Σ_i Σ_{j∈N(i)} q_j r_ij (REANN ``start_table`` 2).

    Reads q [num_atoms, 1]; writes μ_i [num_atoms, 3] (what REANN's exported dipole model
    returns) and μ [num_frames, 3], in e·Å when q is in e and positions in Å.

    Args:
        charge_field (str): per-atom q_j, e.g. ``dipole_charge``
        atomic_dipole_field (str): per-atom μ_i, e.g. ``atomic_dipole``
        total_dipole_field (str): per-frame μ, e.g. ``total_dipole``
    """

    charge_field: str
    atomic_dipole_field: str
    total_dipole_field: str

    def __init__(
        self,
        charge_field: str,
        atomic_dipole_field: str,
        total_dipole_field: str,
        irreps_in=None,
    ):
        super().__init__()
        self.charge_field = charge_field
        self.atomic_dipole_field = atomic_dipole_field
        self.total_dipole_field = total_dipole_field
        self._init_irreps(
            irreps_in=irreps_in,
            my_irreps_in={charge_field: "0e"},
            irreps_out={atomic_dipole_field: "1o", total_dipole_field: "1o"},
        )

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        data = with_edge_vectors(data)
        atomic_dipole = atomic_pair_dipoles(data, data[self.charge_field]).squeeze(1)
        data[self.atomic_dipole_field] = atomic_dipole  # [num_atoms, 3]
        data[self.total_dipole_field] = sum_over_frames(data, atomic_dipole)  # [num_frames, 3]
        return data


class TransitionDipoleFromHeads(GraphModuleMixin, torch.nn.Module):
    """TDM = μ_a + μ_b + s (μ_a × μ_b) (REANN ``start_table`` 3).

    μ_a = Σ_i Σ_{j∈N(i)} a_j r_ij and μ_b likewise from b; s = Σ_j c_j. REANN builds μ_a, μ_b from
    centre-of-mass-centred positions (Σ_j a_j r_j), which is neither translation invariant nor
    defined in a periodic cell; the pair form here is both, like the dipole model's.

    μ_a × μ_b is a pseudovector: the TDM rotates with proper rotations only, which suits a
    quantity whose overall sign is a phase convention anyway.

    Reads (a, b, c) [num_atoms, 3]; writes the TDM [num_frames, 3].

    Args:
        heads_field (str): per-atom (a_j, b_j, c_j), e.g. ``transition_dipole_heads``
        out_field (str): per-frame TDM, e.g. ``transition_dipole``
    """

    heads_field: str
    out_field: str

    def __init__(self, heads_field: str, out_field: str, irreps_in=None):
        super().__init__()
        self.heads_field = heads_field
        self.out_field = out_field
        self._init_irreps(
            irreps_in=irreps_in,
            my_irreps_in={heads_field: "3x0e"},
            irreps_out={out_field: None},
        )

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        data = with_edge_vectors(data)
        heads = data[self.heads_field]  # [num_atoms, 3]
        partial_dipoles = atomic_pair_dipoles(data, heads[:, :2])  # [num_atoms, 2, 3]
        dipoles = sum_over_frames(data, partial_dipoles)  # [num_frames, 2, 3]
        scale = sum_over_frames(data, heads[:, 2:].to(dipoles.dtype))  # [num_frames, 1]
        dipole_a, dipole_b = dipoles[:, 0], dipoles[:, 1]
        data[self.out_field] = (
            dipole_a + dipole_b + scale * torch.linalg.cross(dipole_a, dipole_b, dim=-1)
        )
        return data
