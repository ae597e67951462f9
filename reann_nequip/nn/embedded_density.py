"""REANN's embedded density: Cartesian orbitals of the neighbours, mixed and squared.

For centre i, orbital channel m and the orbital coefficients c_j (K per atom):

    ρ_im = Σ_L Σ_{a ∈ {x,y,z}^L} ( Σ_k W[L]_km Σ_j c_jk f_c(d_ij) g_k(d_ij) Π_{l≤L} (r_ij)_{a_l} )²

REANN enumerates all 3^L ordered Cartesian products. Products with the same multiset of axes
are equal, so we keep the (L+1)(L+2)/2 distinct monomials x^a y^b z^c and weight each by the
square root of its multiplicity L!/(a! b! c!); the sum of squares is unchanged
(13 → 10 components at L_max = 2).
"""

import math
from typing import List

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


def embedded_density(
    angular: torch.Tensor,
    radial: torch.Tensor,
    coefficients: torch.Tensor,
    mixing: torch.Tensor,
    center: torch.Tensor,
    neighbor: torch.Tensor,
    num_atoms: int,
) -> torch.Tensor:
    """The REANN density for given orbital coefficients.

    Args:
        angular: [num_edges, C] weighted Cartesian monomials of the edge vectors
        radial: [num_edges, K] cutoff × Gaussians of the neighbour's species
        coefficients: [num_atoms, K] orbital coefficients c_j
        mixing: [C, K, M] channel mixing W[L(c)] expanded over components
        center, neighbor: [num_edges] atom indices of each edge
        num_atoms: number of atoms

    Returns:
        [num_atoms, M] density ρ
    """
    num_components = angular.shape[1]
    num_gaussians = radial.shape[1]
    weighted = radial * torch.index_select(coefficients, 0, neighbor)  # [num_edges, K]
    orbitals = (angular.unsqueeze(2) * weighted.unsqueeze(1)).reshape(
        -1, num_components * num_gaussians
    )
    summed = torch.zeros(
        num_atoms, num_components * num_gaussians, dtype=orbitals.dtype, device=orbitals.device
    ).index_add_(0, center, orbitals)  # [num_atoms, C * K]
    summed = summed.view(num_atoms, num_components, num_gaussians).transpose(0, 1)
    mixed = torch.bmm(summed, mixing)  # [C, num_atoms, M]
    return mixed.square().sum(0)
