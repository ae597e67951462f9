"""Polarizability from the position gradients of two scalar heads (REANN ``start_table`` 4).

REANN: J1 = ∂E0/∂r + r, J2 = ∂E1/∂r (both [num_atoms, 3]) and

    α = J1ᵀJ2 + (J1ᵀJ2)ᵀ + (Σ_i E2_i) I,

symmetric by construction. The position term Σ_n r_n ⊗ ∂E1/∂r_n uses absolute positions, which
have no meaning in a periodic cell. E1 depends on the positions only through the pair vectors
e_k = r_j − r_i + shift, so ∂E1/∂r_n = Σ_k (δ_{n,j(k)} − δ_{n,i(k)}) ∂E1/∂e_k, and for a molecule

    Σ_n r_n ⊗ ∂E1/∂r_n = Σ_k e_k ⊗ ∂E1/∂e_k,

the virial-like pair form used here (as nequip's stress). It equals REANN's term for molecules
and is well defined, translation invariant and unchanged by moving an atom by a lattice vector
in periodic cells. Both forms are unchanged by a uniform translation since Σ_n ∂E1/∂r_n = 0.
"""

from typing import List, Optional

import torch
from nequip.data import AtomicDataDict
from nequip.nn import GraphModuleMixin, scatter

from .dipole import sum_over_frames
from .edge_vectors import with_edge_vectors


def _edge_gradient(
    potential: torch.Tensor, edge_vectors: torch.Tensor, retain_graph: bool, create_graph: bool
) -> torch.Tensor:
    """∂(Σ potential)/∂e_k: [num_edges, 3]; zero for edges the potential does not reach."""
    grads: List[Optional[torch.Tensor]] = torch.autograd.grad(
        [potential.sum()],
        [edge_vectors],
        retain_graph=retain_graph,
        create_graph=create_graph,
        allow_unused=True,
    )
    gradient = grads[0]
    if gradient is None:
        return torch.zeros_like(edge_vectors)
    return gradient


def _atom_gradient(edge_gradient: torch.Tensor, edge_index: torch.Tensor, num_atoms: int):
    """∂/∂r_n from ∂/∂e_k, with e_k = r_{edge_index[1]} − r_{edge_index[0]} + shift."""
    return scatter(edge_gradient, edge_index[1], dim=0, dim_size=num_atoms) - scatter(
        edge_gradient, edge_index[0], dim=0, dim_size=num_atoms
    )


class PolarizabilityFromGradients(GraphModuleMixin, torch.nn.Module):
    """α = A + Aᵀ + (Σ_i E2_i) I with A = Σ_n ∂E0/∂r_n ⊗ ∂E1/∂r_n + Σ_k e_k ⊗ ∂E1/∂e_k.

    Wraps ``func``, the model of the three per-atom heads (E0 in Å², E1 and E2 in Å³), and
    differentiates E0 and E1 with respect to the edge vectors, as nequip's ``ForceStressOutput``
    differentiates the energy. In training mode the gradients keep their graph so a loss on α
    trains the heads (double backpropagation).

    Writes α [num_frames, 3, 3] in Å³ (a polarizability volume).

    Args:
        func: graph module writing the three heads
        potential_0_field (str): per-atom E0, e.g. ``polarizability_potential_0``
        potential_1_field (str): per-atom E1, e.g. ``polarizability_potential_1``
        isotropic_field (str): per-atom E2, e.g. ``atomic_isotropic_polarizability``
        out_field (str): per-frame α, e.g. ``polarizability``
    """

    potential_0_field: str
    potential_1_field: str
    isotropic_field: str
    out_field: str

    def __init__(
        self,
        func: GraphModuleMixin,
        potential_0_field: str,
        potential_1_field: str,
        isotropic_field: str,
        out_field: str,
    ):
        super().__init__()
        self.func = func
        self.potential_0_field = potential_0_field
        self.potential_1_field = potential_1_field
        self.isotropic_field = isotropic_field
        self.out_field = out_field
        self._init_irreps(
            irreps_in=func.irreps_in.copy(),
            my_irreps_in={potential_0_field: "0e", potential_1_field: "0e", isotropic_field: "0e"},
            irreps_out={**func.irreps_out, out_field: None},
        )

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        # === edge vectors as the variable to differentiate by ===
        data = with_edge_vectors(data)
        edge_vectors = data[AtomicDataDict.EDGE_VECTORS_KEY]
        if not edge_vectors.requires_grad:
            # a fresh leaf: the caller's tensor is left as it was
            edge_vectors = edge_vectors.detach().requires_grad_(True)
        data[AtomicDataDict.EDGE_VECTORS_KEY] = edge_vectors
        if AtomicDataDict.EDGE_LENGTH_KEY in data:
            del data[AtomicDataDict.EDGE_LENGTH_KEY]  # recomputed from the leaf

        # === heads and their gradients ===
        data = self.func(data)
        edge_gradient_0 = _edge_gradient(
            data[self.potential_0_field], edge_vectors, True, self.training
        )  # [num_edges, 3]
        edge_gradient_1 = _edge_gradient(
            data[self.potential_1_field], edge_vectors, self.training, self.training
        )  # [num_edges, 3]

        # === A = Σ_n ∂E0/∂r_n ⊗ ∂E1/∂r_n + Σ_k e_k ⊗ ∂E1/∂e_k, per frame ===
        edge_index = data[AtomicDataDict.EDGE_INDEX_KEY]
        num_atoms = data[AtomicDataDict.POSITIONS_KEY].shape[0]
        atom_gradient_0 = _atom_gradient(edge_gradient_0, edge_index, num_atoms)  # [N, 3]
        atom_gradient_1 = _atom_gradient(edge_gradient_1, edge_index, num_atoms)  # [N, 3]
        gradient_products = atom_gradient_0.unsqueeze(-1) * atom_gradient_1.unsqueeze(-2)
        pair_virials = edge_vectors.unsqueeze(-1) * edge_gradient_1.unsqueeze(-2)  # [E, 3, 3]
        if AtomicDataDict.BATCH_KEY in data:
            num_frames = AtomicDataDict.num_frames(data)
            edge_frames = torch.index_select(data[AtomicDataDict.BATCH_KEY], 0, edge_index[0])
            virial = scatter(pair_virials, edge_frames, dim=0, dim_size=num_frames)
        else:
            virial = pair_virials.sum(dim=0, keepdim=True)
        half = sum_over_frames(data, gradient_products) + virial  # [num_frames, 3, 3]

        # === symmetric part plus the isotropic term ===
        isotropic = sum_over_frames(
            data, data[self.isotropic_field].to(half.dtype)
        )  # [num_frames, 1]
        identity = torch.eye(3, dtype=half.dtype, device=half.device)
        data[self.out_field] = half + half.transpose(-1, -2) + isotropic.unsqueeze(-1) * identity
        return data
