"""REANN's embedded density: Cartesian orbitals of the neighbours, mixed and squared.

For centre i, orbital channel m and the orbital coefficients c_j (K per atom):

    ρ_im = Σ_L Σ_{a ∈ {x,y,z}^L} ( Σ_k W[L]_km Σ_j c_jk f_c(d_ij) g_k(d_ij) Π_{l≤L} (r_ij)_{a_l} )²

REANN enumerates all 3^L ordered Cartesian products. Products with the same multiset of axes
are equal, so we keep the (L+1)(L+2)/2 distinct monomials x^a y^b z^c and weight each by the
square root of its multiplicity L!/(a! b! c!); the sum of squares is unchanged
(13 → 10 components at L_max = 2).

Two forms of the same numbers (see :mod:`~reann_nequip.nn.forms`):

- torch form (:func:`edge_orbitals`, :func:`direct_embedded_density`): the orbitals
  b_ck = Σ_j A_c(r_ij) R_jk c_jk summed edge by edge, then ρ_m = Σ_c (Σ_k b_ck W[L(c)]_km)²;
- kernel form (:func:`neighbor_blocks`, ``reann::orbital_gram``): the edges placed in dense
  per-centre neighbour blocks, and per centre the Gram matrices of the orbitals of each order,
  G[L]_kk' = Σ_{c of order L} b_ck b_ck' for k ≤ k', in which the density is linear:
  ρ = G Q with Q[L]_kk'm = (2 − δ_kk') W[L]_km W[L]_k'm (:func:`pair_mixing`).
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
        return cartesian_monomials(vectors, self.exponents, self.weights, self.l_max)


def cartesian_monomials(
    vectors: torch.Tensor, exponents: torch.Tensor, weights: torch.Tensor, l_max: int
) -> torch.Tensor:
    """Weighted monomials w_c x^a y^b z^c of edge vectors: [num_edges, 3] (Å) → [num_edges, C].

    Args:
        vectors: the edge vectors
        exponents: [C, 3] (a, b, c) of each component
        weights: [C] w_c
        l_max: the largest a + b + c
    """
    powers = [torch.ones_like(vectors)]
    for _ in range(l_max):
        powers.append(powers[-1] * vectors)
    powers_t = torch.stack(powers, dim=1)  # [num_edges, l_max + 1, 3]
    x = torch.index_select(powers_t[:, :, 0], 1, exponents[:, 0])  # [num_edges, C]
    y = torch.index_select(powers_t[:, :, 1], 1, exponents[:, 1])
    z = torch.index_select(powers_t[:, :, 2], 1, exponents[:, 2])
    return x * y * z * weights.to(vectors.dtype)


def edge_orbitals(
    angular: torch.Tensor,
    radial: torch.Tensor,
    edge_index: torch.Tensor,
    coefficients: torch.Tensor,
    num_atoms: int,
) -> torch.Tensor:
    """The orbitals b_ck = Σ_j A_c(r_ij) R_jk c_jk of every centre, summed edge by edge (torch
    form).

    Args:
        angular: [num_edges, C], radial: [num_edges, K], edge_index: [2, num_edges]
        coefficients: [num_atoms_all, K]
        num_atoms: number of centres

    Returns:
        [num_atoms, C, K]
    """
    num_components, num_gaussians = angular.shape[1], radial.shape[1]
    weighted = radial * torch.index_select(coefficients, 0, edge_index[1])  # [num_edges, K]
    per_edge = (angular.unsqueeze(2) * weighted.unsqueeze(1)).flatten(1)  # [num_edges, C * K]
    summed = torch.zeros(
        num_atoms, num_components * num_gaussians, dtype=per_edge.dtype, device=per_edge.device
    ).index_add_(0, edge_index[0], per_edge)
    return summed.view(num_atoms, num_components, num_gaussians)


def direct_embedded_density(orbitals: torch.Tensor, mixing: torch.Tensor) -> torch.Tensor:
    """ρ_m = Σ_c (Σ_k b_ck W[L(c)]_km)² (torch form).

    Inductor (torch 2.13) compiles the Gram form G Q into multithreaded CPU kernels that corrupt
    memory; this form compiles correctly.

    Args:
        orbitals: [num_atoms, C, K] b
        mixing: [C, K, M] W[L(c)] of every component

    Returns:
        [num_atoms, M] density ρ
    """
    return torch.bmm(orbitals.transpose(0, 1), mixing).square().sum(0)


def neighbor_blocks(
    vectors: torch.Tensor, radial: torch.Tensor, edge_index: torch.Tensor, num_centers: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The edges as dense per-centre neighbour blocks (kernel form), by
    ``reann::neighbor_slots`` and ``reann::to_blocks``: centre i holds its edges, in input order,
    in the first of its ``max_neighbors`` slots.

    Args:
        vectors: [num_edges, 3] edge vectors in Å
        radial: [num_edges, K] radial functions
        edge_index: [2, num_edges] (centre, neighbour); every centre below ``num_centers``
        num_centers: number of block rows

    Returns:
        vectors [num_centers, 3, J] and radial functions [num_centers, J, K] (zero in padding
        slots), and the neighbour atom of each slot [num_centers · J] (atom 0 in padding)
    """
    slot, max_neighbors = torch.ops.reann.neighbor_slots(edge_index[0], num_centers)
    neighbors = torch.ops.reann.to_blocks(
        edge_index[1].unsqueeze(1), slot, num_centers, max_neighbors, False
    )
    return (
        torch.ops.reann.to_blocks(vectors, slot, num_centers, max_neighbors, True),
        torch.ops.reann.to_blocks(radial, slot, num_centers, max_neighbors, False),
        neighbors.view(-1),
    )


def pair_mixing(mixing: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Q [(L_max + 1) · P, M] with ρ = G Q: Q[L]_kk'm = (2 − δ_kk') W[L]_km W[L]_k'm for the pairs
    k ≤ k' (``pairs`` [2, P], row by row), from W = ``mixing`` [L_max + 1, K, M]."""
    multiplicity = (2 - (pairs[0] == pairs[1]).to(mixing.dtype)).view(1, -1, 1)  # [1, P, 1]
    products = torch.index_select(mixing, 1, pairs[0]) * torch.index_select(
        mixing, 1, pairs[1]
    )  # [L_max + 1, P, M]
    return (products * multiplicity).view(-1, mixing.shape[2])
