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

from .kernels import load_kernels


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
    return x * y * z * weights


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
    # one spare bin, always empty: a rank of a parallel run may own no atoms, a graph no edges
    counts = torch.bincount(center, minlength=num_atoms + 1)
    neighbors_per_atom = counts[:num_atoms]  # [num_atoms]
    max_neighbors = int(counts.max())
    first_edge = torch.cumsum(neighbors_per_atom, 0) - neighbors_per_atom  # [num_atoms]
    edge_order = torch.arange(num_edges, device=center.device)
    if bool((center[1:] >= center[:-1]).all()):
        # edges already in centre order (pair_reann's, and most neighbour lists'): no sort
        rank = edge_order - torch.index_select(first_edge, 0, center)
        return center * max_neighbors + rank, max_neighbors
    by_center = torch.argsort(center, stable=True)  # [num_edges]
    sorted_center = torch.index_select(center, 0, by_center)
    rank = edge_order - torch.index_select(first_edge, 0, sorted_center)
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
    ).index_copy_(0, slot, edge_values)
    return blocks.view(num_atoms, max_neighbors, edge_values.shape[1])


def to_feature_blocks(
    edge_values: torch.Tensor, slot: torch.Tensor, num_atoms: int, max_neighbors: int
) -> torch.Tensor:
    """[num_edges, F] → [num_atoms, F, max_neighbors], zero in the padding slots: each feature a
    contiguous row over the neighbours, as the contraction over neighbours reads it."""
    blocks = to_neighbor_blocks(edge_values, slot, num_atoms, max_neighbors)
    return blocks.transpose(1, 2).contiguous()


def neighbor_blocks(
    edge_features: torch.Tensor, radial: torch.Tensor, edge_index: torch.Tensor, num_centers: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The edges as dense per-centre neighbour blocks (slots of :func:`neighbor_slots`), by torch
    operations.

    Args:
        edge_features: [num_edges, F] per-edge geometry (monomials or vectors)
        radial: [num_edges, K] radial functions
        edge_index: [2, num_edges] (centre, neighbour); every centre below ``num_centers``
        num_centers: number of block rows

    Returns:
        features [num_centers, F, J], radial functions [num_centers, J, K] (zero in padding
        slots) and the neighbour atom of each slot [num_centers · J] (atom 0 in padding)
    """
    slot, max_neighbors = neighbor_slots(edge_index[0], num_centers)
    neighbors = to_neighbor_blocks(edge_index[1].unsqueeze(1), slot, num_centers, max_neighbors)
    return (
        to_feature_blocks(edge_features, slot, num_centers, max_neighbors),
        to_neighbor_blocks(radial, slot, num_centers, max_neighbors),
        neighbors.view(-1),
    )


def fused_neighbor_blocks(
    edge_features: torch.Tensor, radial: torch.Tensor, edge_index: torch.Tensor, num_centers: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`neighbor_blocks` by the C++ kernels ``torch.ops.reann.neighbor_slots`` and
    ``to_blocks`` (CPU tensors, the kernel library loaded): one pass over the edges per tensor,
    forward and backward, instead of a sort, zero fills, ``index_copy_`` and a transposing
    copy."""
    slot, max_neighbors = torch.ops.reann.neighbor_slots(edge_index[0], num_centers)
    neighbors = torch.ops.reann.to_blocks(
        edge_index[1].unsqueeze(1), slot, num_centers, max_neighbors, False
    )
    return (
        torch.ops.reann.to_blocks(edge_features, slot, num_centers, max_neighbors, True),
        torch.ops.reann.to_blocks(radial, slot, num_centers, max_neighbors, False),
        neighbors.view(-1),
    )


def block_orbitals(
    angular: torch.Tensor, radial: torch.Tensor, neighbor: torch.Tensor, coefficients: torch.Tensor
) -> torch.Tensor:
    """The orbitals b_ck = Σ_j A_c(r_ij) R_k(r_ij) c_jk of every centre from dense neighbour
    blocks: one small matrix product per centre, [C, max_neighbors] · [max_neighbors, K], so no
    [num_edges, C, K] tensor is formed; padding slots have zero radial functions.

    Args:
        angular: [num_atoms, C, max_neighbors] weighted Cartesian monomials of the edge vectors
        radial: [num_atoms, max_neighbors, K] cutoff × Gaussians of the neighbour's species
        neighbor: [num_atoms * max_neighbors] neighbour atom in each slot (any atom in padding)
        coefficients: [num_atoms_all, K] orbital coefficients c_j

    Returns:
        [num_atoms, C, K]
    """
    neighbor_coefficients = torch.index_select(coefficients, 0, neighbor).view_as(radial)
    return torch.bmm(angular, radial * neighbor_coefficients)


def edge_orbitals(
    angular: torch.Tensor,
    radial: torch.Tensor,
    edge_index: torch.Tensor,
    coefficients: torch.Tensor,
    num_atoms: int,
) -> torch.Tensor:
    """The orbitals of :func:`block_orbitals` summed edge by edge, for graph capture
    (``nequip-compile``), where the data-dependent block width is not allowed.

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


class OrbitalGram(torch.nn.Module):
    """Per-order Gram matrices of the orbitals of every centre, from its neighbour blocks.

    G[L]_kk' = Σ_{c of order L} b_ck b_ck' for the pairs k ≤ k', with b the orbitals of
    :func:`block_orbitals` on the monomials of the neighbour vectors. REANN's density is linear
    in them: ρ_m = Σ_L Σ_{k≤k'} G[L]_kk' Q[L]_kk'm with Q[L]_kk'm = (2 − δ_kk') W[L]_km W[L]_k'm,
    so after the neighbour sum the only per-atom tensors are [C, K] and [L_max + 1, P] instead
    of [C, M].

    Args:
        num_gaussians (int): K
        monomials (CartesianMonomials): the monomials (their tables are copied)
    """

    def __init__(self, num_gaussians: int, monomials: CartesianMonomials):
        super().__init__()
        self.l_max = monomials.l_max
        self.num_orders = monomials.l_max + 1
        for name in ("exponents", "weights", "order"):
            self.register_buffer(name, getattr(monomials, name).clone(), persistent=False)
        # [2, P] the (k, k') of each pair k <= k', row by row
        pairs = torch.triu_indices(num_gaussians, num_gaussians)
        self.register_buffer("pairs", pairs, persistent=False)
        # an off-diagonal pair stands for both (k, k') and (k', k)
        self.register_buffer(
            "pair_multiplicity",
            (2 - (pairs[0] == pairs[1]).long()).view(1, -1, 1),
            persistent=False,
        )

    def pair_mixing(self, mixing: torch.Tensor) -> torch.Tensor:
        """The matrix Q that maps G to the density, ρ = G Q: Q[L]_kk'm = (2 − δ_kk') W[L]_km
        W[L]_k'm for the pairs k ≤ k', from W = ``mixing`` [L_max + 1, K, M] →
        [(L_max + 1) · P, M]."""
        pair_mixing = (
            torch.index_select(mixing, 1, self.pairs[0])
            * torch.index_select(mixing, 1, self.pairs[1])
            * self.pair_multiplicity.to(mixing.dtype)
        )  # [L_max + 1, P, M]
        return pair_mixing.view(-1, mixing.shape[2])

    def neighbor_blocks(
        self,
        vectors: torch.Tensor,
        radial: torch.Tensor,
        edge_index: torch.Tensor,
        num_centers: int,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What :meth:`forward` reads, computed once for all recursion steps from the edge
        vectors [num_edges, 3] (Å), radial functions [num_edges, K] and ``edge_index``: the
        blocks of :func:`neighbor_blocks`, the geometry being the monomials, computed edge by
        edge (no work on padding) → [num_centers, C, J]."""
        monomials = cartesian_monomials(
            vectors, self.exponents, self.weights.to(vectors.dtype), self.l_max
        )  # [num_edges, C]
        return neighbor_blocks(monomials, radial, edge_index, num_centers)

    def forward(
        self,
        geometry: torch.Tensor,
        radial: torch.Tensor,
        neighbor: torch.Tensor,
        coefficients: torch.Tensor,
    ) -> torch.Tensor:
        """The geometry blocks of :meth:`neighbor_blocks` and the other arguments of
        :func:`block_orbitals` → G [num_atoms, (L_max + 1) · P]."""
        return self.gram_of_monomials(geometry, radial, neighbor, coefficients)

    def gram_of_monomials(
        self,
        monomials: torch.Tensor,
        radial: torch.Tensor,
        neighbor: torch.Tensor,
        coefficients: torch.Tensor,
    ) -> torch.Tensor:
        """G [num_atoms, (L_max + 1) · P] from the monomial blocks [num_atoms, C, J] and the
        other arguments of :func:`block_orbitals`."""
        orbitals = block_orbitals(monomials, radial, neighbor, coefficients)  # [num_atoms, C, K]
        products = torch.index_select(orbitals, 2, self.pairs[0]) * torch.index_select(
            orbitals, 2, self.pairs[1]
        )  # [num_atoms, C, P]
        gram = torch.zeros(
            orbitals.shape[0],
            self.num_orders,
            self.pairs.shape[1],
            dtype=products.dtype,
            device=products.device,
        ).index_add_(1, self.order, products)
        return gram.flatten(1)


class FusedOrbitalGram(OrbitalGram):
    """:class:`OrbitalGram` by the C++ kernel ``torch.ops.reann.orbital_gram`` (CPU): one pass
    per centre computes monomials, orbitals and Gram matrices in cache from the neighbour
    vectors, so no per-slot tensor ([num_atoms, C, J], [num_atoms, J, K]) is formed or kept for
    the backward pass. Its backward pass, and that pass's own backward (force training), are
    kernels too; third derivatives are refused. On other devices the torch form runs on the
    same blocks. The kernel library must be loaded
    (:func:`reann_nequip.nn.kernels.load_kernels`) before scripting or calling it."""

    def neighbor_blocks(
        self,
        vectors: torch.Tensor,
        radial: torch.Tensor,
        edge_index: torch.Tensor,
        num_centers: int,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`OrbitalGram.neighbor_blocks`, but the geometry is the edge vectors
        themselves, [num_centers, 3, J] (zero in padding slots): the kernel forms the
        monomials. Placed by the kernels (:func:`fused_neighbor_blocks`) on CPU."""
        if vectors.device.type != "cpu":
            return neighbor_blocks(vectors, radial, edge_index, num_centers)
        if not torch.jit.is_scripting():
            load_kernels()
        return fused_neighbor_blocks(vectors, radial, edge_index, num_centers)

    def forward(
        self,
        geometry: torch.Tensor,
        radial: torch.Tensor,
        neighbor: torch.Tensor,
        coefficients: torch.Tensor,
    ) -> torch.Tensor:
        """As :meth:`OrbitalGram.forward`, ``geometry`` being the neighbour vectors."""
        if geometry.device.type != "cpu":
            return self.torch_form(geometry, radial, neighbor, coefficients)
        if not torch.jit.is_scripting():
            # a model unpickled in a new process (a nequip package) has not loaded the library
            load_kernels()
        return torch.ops.reann.orbital_gram(
            geometry,
            radial,
            neighbor,
            coefficients,
            self.exponents,
            self.weights.to(geometry.dtype),
        )

    def torch_form(
        self,
        geometry: torch.Tensor,
        radial: torch.Tensor,
        neighbor: torch.Tensor,
        coefficients: torch.Tensor,
    ) -> torch.Tensor:
        """:meth:`forward` by torch operations, on devices the kernel does not run on."""
        num_atoms, slots = geometry.shape[0], geometry.shape[2]
        monomials = cartesian_monomials(
            geometry.transpose(1, 2).reshape(-1, 3),
            self.exponents,
            self.weights.to(geometry.dtype),
            self.l_max,
        )  # [num_atoms * J, C]
        return self.gram_of_monomials(
            monomials.view(num_atoms, slots, -1).transpose(1, 2), radial, neighbor, coefficients
        )


def direct_embedded_density(orbitals: torch.Tensor, mixing: torch.Tensor) -> torch.Tensor:
    """The density of :class:`OrbitalGram` times the pair mixing, as written, ρ_m = Σ_c (Σ_k b_ck W[L(c)]_km)².

    Used under graph capture: Inductor (torch 2.13) compiles the Gram form into multithreaded
    CPU kernels that corrupt memory, while this form compiles correctly. It forms a
    [C, num_atoms, M] intermediate, so it is slower in eager runs.

    Args:
        orbitals: [num_atoms, C, K] b
        mixing: [C, K, M] W[L(c)] of every component

    Returns:
        [num_atoms, M] density ρ
    """
    return torch.bmm(orbitals.transpose(0, 1), mixing).square().sum(0)
