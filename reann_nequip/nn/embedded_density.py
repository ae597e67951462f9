"""REANN's embedded density: Cartesian orbitals of the neighbours, mixed and squared.

For centre i, orbital channel m and the orbital coefficients c_j (K per atom):

    ρ_im = Σ_L Σ_{a ∈ {x,y,z}^L} ( Σ_k W[L]_km Σ_j c_jk f_c(d_ij) g_k(d_ij) Π_{l≤L} (r_ij)_{a_l} )²

REANN enumerates all 3^L ordered Cartesian products. Products with the same multiset of axes
are equal, so we keep the (L+1)(L+2)/2 distinct monomials x^a y^b z^c and weight each by the
square root of its multiplicity L!/(a! b! c!); the sum of squares is unchanged
(13 → 10 components at L_max = 2).
"""

import math
from typing import List, Tuple

import torch


def cartesian_exponents(l_max: int) -> List[List[int]]:
    """Distinct exponent triples (a, b, c), a + b + c = L, for L = 0 … l_max, ordered by L."""
    return [
        [a, b, order - a - b]
        for order in range(l_max + 1)
        for a in range(order, -1, -1)
        for b in range(order - a, -1, -1)
    ]


class CartesianMonomials(torch.nn.Module):
    """Multiplicity-weighted distinct monomials sqrt(L!/(a!b!c!)) · x^a y^b z^c of edge vectors.

    Args:
        l_max (int): highest order L (REANN ``nipsin``)
    """

    def __init__(self, l_max: int):
        super().__init__()
        exponents = cartesian_exponents(l_max)
        weights = [
            math.sqrt(
                math.factorial(a + b + c)
                / (math.factorial(a) * math.factorial(b) * math.factorial(c))
            )
            for a, b, c in exponents
        ]
        self.l_max = l_max
        self.num_components = len(exponents)
        self.register_buffer("exponents", torch.tensor(exponents, dtype=torch.long))  # [C, 3]
        self.register_buffer("weights", torch.tensor(weights))  # [C]
        self.register_buffer("order", torch.tensor([sum(e) for e in exponents]))  # [C], L of each

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        """``vectors``: [num_edges, 3] in Å → [num_edges, C]."""
        powers = [torch.ones_like(vectors)]
        for _ in range(self.l_max):
            powers.append(powers[-1] * vectors)
        powers_t = torch.stack(powers, dim=0)  # [l_max + 1, num_edges, 3]
        x = torch.index_select(powers_t[:, :, 0], 0, self.exponents[:, 0])  # [C, num_edges]
        y = torch.index_select(powers_t[:, :, 1], 0, self.exponents[:, 1])
        z = torch.index_select(powers_t[:, :, 2], 0, self.exponents[:, 2])
        return (x * y * z * self.weights.unsqueeze(-1)).t().contiguous()


def neighbor_slots(center: torch.Tensor, num_atoms: int) -> Tuple[torch.Tensor, int]:
    """Where every edge goes in dense per-centre neighbour blocks.

    Each centre i gets a row of ``max_neighbors`` slots holding its edges in input order, padded
    at the end; edge e goes to flat slot ``center[e] * max_neighbors + (rank of e among the
    edges of center[e])``.

    Args:
        center: [num_edges] centre atom of each edge
        num_atoms: number of atoms (rows)

    Returns:
        the flat slot of every edge [num_edges], and ``max_neighbors``
    """
    num_edges = center.shape[0]
    neighbors_per_atom = torch.bincount(center, minlength=num_atoms)  # [num_atoms]
    # a rank of a parallel run may own no atoms
    max_neighbors = int(neighbors_per_atom.max()) if num_atoms > 0 else 0
    by_center = torch.argsort(center, stable=True)  # [num_edges]
    first_edge = torch.cumsum(neighbors_per_atom, 0) - neighbors_per_atom  # [num_atoms]
    sorted_center = torch.index_select(center, 0, by_center)
    rank = torch.arange(num_edges, device=center.device) - torch.index_select(
        first_edge, 0, sorted_center
    )
    slot = torch.empty_like(center).index_copy_(0, by_center, sorted_center * max_neighbors + rank)
    return slot, max_neighbors


def to_neighbor_blocks(
    edge_values: torch.Tensor, slot: torch.Tensor, num_atoms: int, max_neighbors: int
) -> torch.Tensor:
    """[num_edges, F] → [num_atoms, max_neighbors, F], zero in the padding slots."""
    blocks = torch.zeros(
        num_atoms * max_neighbors,
        edge_values.shape[1],
        dtype=edge_values.dtype,
        device=edge_values.device,
    )
    blocks = torch.index_copy(blocks, 0, slot, edge_values)
    return blocks.view(num_atoms, max_neighbors, edge_values.shape[1])


def embedded_density(
    angular: torch.Tensor,
    radial: torch.Tensor,
    neighbor: torch.Tensor,
    coefficients: torch.Tensor,
    pair_mixing: torch.Tensor,
    pairs: torch.Tensor,
    order: torch.Tensor,
) -> torch.Tensor:
    """The REANN density for given orbital coefficients, from dense neighbour blocks.

    The neighbour sum Σ_j of every centre is one small matrix product, [C, max_neighbors] ·
    [max_neighbors, K], so no [num_edges, C, K] tensor is ever formed; padding slots have zero
    radial functions and add nothing. The squared mixing is expanded as a quadratic form,
    ρ_m = Σ_L Σ_{k≤k'} G[L]_kk' Q[L]_kk'm with G[L]_kk' = Σ_{c of order L} b_ck b_ck' (the
    orbitals b) and Q[L]_kk'm = (2 − δ_kk') W[L]_km W[L]_k'm, so the only per-atom tensors are
    [C, K] and [L + 1, K(K + 1)/2] instead of [C, M].

    Args:
        angular: [num_atoms, C, max_neighbors] weighted Cartesian monomials of the edge vectors
        radial: [num_atoms, max_neighbors, K] cutoff × Gaussians of the neighbour's species
        neighbor: [num_atoms * max_neighbors] neighbour atom in each slot (any atom in padding)
        coefficients: [num_atoms, K] orbital coefficients c_j
        pair_mixing: [(L_max + 1) · P, M] Q, P = K(K + 1)/2 pairs k ≤ k'
        pairs: [2, P] the (k, k') of each pair
        order: [C] L of each component

    Returns:
        [num_atoms, M] density ρ
    """
    num_atoms = radial.shape[0]
    neighbor_coefficients = torch.index_select(coefficients, 0, neighbor).view_as(radial)
    orbitals = torch.bmm(angular, radial * neighbor_coefficients)  # [num_atoms, C, K]
    products = torch.index_select(orbitals, 2, pairs[0]) * torch.index_select(
        orbitals, 2, pairs[1]
    )  # [num_atoms, C, P]
    gram = torch.zeros(
        num_atoms,
        pair_mixing.shape[0] // pairs.shape[1],
        pairs.shape[1],
        dtype=products.dtype,
        device=products.device,
    ).index_add_(1, order, products)  # [num_atoms, L_max + 1, P]
    return torch.mm(gram.flatten(1), pair_mixing)
