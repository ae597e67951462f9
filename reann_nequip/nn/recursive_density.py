"""REANN's recursion: orbital coefficients refined from the density, T times (``oc_loop``)."""

import math
from typing import Any, Dict, List, Optional, Tuple

import torch
from nequip.data import AtomicDataDict
from nequip.nn import GraphModuleMixin
from nequip.nn.model_modifier_utils import model_modifier

from .edge_vectors import with_edge_vectors
from .element_networks import ElementNetworks
from .embedded_density import (
    CartesianMonomials,
    cartesian_monomials,
    direct_embedded_density,
    edge_orbitals,
    neighbor_blocks,
    pair_mixing,
)
from .forms import KernelStage, use_kernels


class OrbitalCoefficientUpdate(torch.nn.Module):
    """c_j ← c_j + NN_{Z_j}(ρ_j): one residual refinement of the orbital coefficients.

    The network of atom j's own element reads j's own density. Its output layer starts at zero,
    so the update starts as the identity and the model starts as EANN.
    """

    def __init__(
        self, num_types: int, num_orbitals: int, num_gaussians: int, network: Dict[str, Any]
    ):
        super().__init__()
        self.network = ElementNetworks(num_types, num_orbitals, num_gaussians, **network)

    def forward(
        self,
        coefficients: torch.Tensor,
        density: torch.Tensor,
        atom_types: torch.Tensor,
        mixing: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """[num_atoms, K], ρ [num_atoms, M], [num_atoms] → [num_atoms, K]; or the density as a
        product, ``density`` G [num_atoms, F] and ``mixing`` Q [F, M] with ρ = G Q (folded into
        the networks' input layer, so ρ is never formed)."""
        return coefficients + self.network(density, atom_types, mixing)


class RecursiveEmbeddedDensity(GraphModuleMixin, KernelStage):
    """The REANN descriptor ρ⁽ᵀ⁾: embedded density after T coefficient refinements.

    c⁽⁰⁾_j = P[Z_j]; for t = 1 … T: c⁽ᵗ⁾ = c⁽ᵗ⁻¹⁾ + NN⁽ᵗ⁾(ρ(c⁽ᵗ⁻¹⁾)); output ρ(c⁽ᵀ⁾). The
    geometry (monomials and radial functions) is computed once and reused at every step. An
    atom's descriptor depends on atoms within (T + 1) · r_max; T = 0 is EANN (strictly local).

    Torch form: edge by edge (``reann_nequip.nn.embedded_density.edge_orbitals``). Kernel
    form: the edges in dense per-centre neighbour blocks, and the orbitals' Gram matrices G by
    ``reann::orbital_gram``, with ρ = G Q; the update networks fold Q into their input layer.
    The stages of the kernel form (:meth:`block_geometry`, :meth:`refine_at_step`,
    :meth:`density_at_step`) are also called one at a time by ``pair_style reann``'s coefficient
    exchange.

    Reads ``edge_vectors`` and ``edge_embedding`` [num_edges, K]; writes ``node_features``
    [num_atoms, M] in the model dtype.

    Args:
        type_names (list[str]): element names
        num_gaussians (int): K (REANN ``nwave``)
        l_max (int): highest Cartesian order L (REANN ``nipsin``)
        num_orbitals (int): M (REANN ``norbit``)
        num_recursions (int): T (REANN ``oc_loop``)
        shared_mixing (bool): one mixing W[L] for all steps (REANN v2) or one per step (v1)
        initial_coefficient (float): initial value of every c⁽⁰⁾ entry (REANN: 1/``neigh_atoms``)
        coefficient_network (dict): :class:`ElementNetworks` options of the update networks
            (``hidden``, ``num_blocks``, ``activation``, ``layer_norm``, ``dropout``)
    """

    def __init__(
        self,
        type_names: List[str],
        num_gaussians: int,
        l_max: int,
        num_orbitals: int,
        num_recursions: int,
        shared_mixing: bool,
        initial_coefficient: float,
        coefficient_network: Dict[str, Any],
        irreps_in=None,
    ):
        super().__init__()
        num_types = len(type_names)
        self.monomials = CartesianMonomials(l_max)
        self.initial_coefficients = torch.nn.Parameter(
            torch.full((num_types, num_gaussians), float(initial_coefficient))
        )  # [num_types, K]

        # REANN initialises one Xavier-uniform [K, M] matrix and copies it to every L
        num_mixings = 1 if shared_mixing else num_recursions + 1
        bound = math.sqrt(6.0 / (num_gaussians + num_orbitals))
        mixing = torch.empty(num_mixings, 1, num_gaussians, num_orbitals).uniform_(-bound, bound)
        self.mixing = torch.nn.Parameter(mixing.repeat(1, l_max + 1, 1, 1).contiguous())
        # [2, P]: the (k, k') of each pair k <= k' of the Gram matrices, row by row
        self.register_buffer(
            "pairs", torch.triu_indices(num_gaussians, num_gaussians), persistent=False
        )

        self.updates = torch.nn.ModuleList(
            [
                OrbitalCoefficientUpdate(
                    num_types, num_orbitals, num_gaussians, coefficient_network
                )
                for _ in range(num_recursions)
            ]
        )
        self._model_dtype = torch.get_default_dtype()
        self._init_irreps(
            irreps_in=irreps_in,
            required_irreps_in=[AtomicDataDict.EDGE_EMBEDDING_KEY],
            irreps_out={AtomicDataDict.NODE_FEATURES_KEY: f"{num_orbitals}x0e"},
        )

    @model_modifier(persistent=False, private=False)
    @classmethod
    def enable_ReannKernels(cls, model):
        """Run the model's stages on the C++ kernels where it runs on CPU (e.g. a model loaded
        from a nequip package, which keeps the portable torch form)."""
        return use_kernels(model, True)

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        atom_types = data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)
        data = with_edge_vectors(data)
        vectors = data[AtomicDataDict.EDGE_VECTORS_KEY].to(self._model_dtype)
        radial = data[AtomicDataDict.EDGE_EMBEDDING_KEY]
        edge_index = data[AtomicDataDict.EDGE_INDEX_KEY]
        if self.runs_kernels(vectors):
            density = self.kernel_form(vectors, radial, edge_index, atom_types)
        else:
            density = self.torch_form(vectors, radial, edge_index, atom_types)
        data[AtomicDataDict.NODE_FEATURES_KEY] = density
        return data

    def initial_coefficients_of(self, atom_types: torch.Tensor) -> torch.Tensor:
        """c⁽⁰⁾ [num_atoms, K] by element."""
        return torch.index_select(self.initial_coefficients, 0, atom_types)

    def _mixing_for_step(self, step: int) -> torch.Tensor:
        """W[L] [L_max + 1, K, M] of recursion step ``step`` (shared, or one per step)."""
        return self.mixing[step if self.mixing.shape[0] > 1 else 0]

    # === torch form: edge by edge ===

    def torch_form(
        self,
        vectors: torch.Tensor,
        radial: torch.Tensor,
        edge_index: torch.Tensor,
        atom_types: torch.Tensor,
    ) -> torch.Tensor:
        """ρ⁽ᵀ⁾ [num_atoms, M] from the edge vectors [num_edges, 3] (Å), radial functions
        [num_edges, K] and ``edge_index`` [2, num_edges]."""
        monomials = cartesian_monomials(
            vectors, self.monomials.exponents, self.monomials.weights, self.monomials.l_max
        )  # [num_edges, C]
        coefficients = self.initial_coefficients_of(atom_types)
        step = 0
        for update in self.updates:
            density = self._edge_density(step, monomials, radial, edge_index, coefficients)
            coefficients = update(coefficients, density, atom_types)
            step += 1
        return self._edge_density(step, monomials, radial, edge_index, coefficients)

    def _edge_density(
        self,
        step: int,
        monomials: torch.Tensor,
        radial: torch.Tensor,
        edge_index: torch.Tensor,
        coefficients: torch.Tensor,
    ) -> torch.Tensor:
        """ρ⁽ᵗ⁾ [num_atoms, M] of every atom from c⁽ᵗ⁾ [num_atoms, K]."""
        orbitals = edge_orbitals(monomials, radial, edge_index, coefficients, coefficients.shape[0])
        mixing = torch.index_select(self._mixing_for_step(step), 0, self.monomials.order)
        return direct_embedded_density(orbitals, mixing)  # mixing: [C, K, M]

    # === kernel form: dense neighbour blocks, one stage at a time ===

    def kernel_form(
        self,
        vectors: torch.Tensor,
        radial: torch.Tensor,
        edge_index: torch.Tensor,
        atom_types: torch.Tensor,
    ) -> torch.Tensor:
        """:meth:`torch_form` by the kernels."""
        blocks = self.block_geometry(vectors, radial, edge_index, atom_types.shape[0])
        coefficients = self.initial_coefficients_of(atom_types)
        step = 0
        for _ in self.updates:
            coefficients = self.refine_at_step(
                step, blocks[0], blocks[1], blocks[2], coefficients, atom_types
            )
            step += 1
        return self.density_at_step(step, blocks[0], blocks[1], blocks[2], coefficients)

    def block_geometry(
        self,
        vectors: torch.Tensor,
        radial: torch.Tensor,
        edge_index: torch.Tensor,
        num_centers: int,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The edges as dense neighbour blocks of the centres, shared by all recursion steps:
        vectors [num_centers, 3, J] (Å), radial functions [num_centers, J, K] and the neighbour
        atom of each slot [num_centers · J]. Every edge centre must be below ``num_centers``."""
        return neighbor_blocks(vectors, radial, edge_index, num_centers)

    def _gram(
        self,
        vectors: torch.Tensor,
        radial: torch.Tensor,
        neighbors: torch.Tensor,
        coefficients: torch.Tensor,
    ) -> torch.Tensor:
        """G [num_centers, (L_max + 1) · P] of the blocks' centres from c [num_atoms, K]."""
        return torch.ops.reann.orbital_gram(
            vectors,
            radial,
            neighbors,
            coefficients,
            self.monomials.exponents,
            self.monomials.weights.to(vectors.dtype),
        )

    def density_at_step(
        self,
        step: int,
        vectors: torch.Tensor,
        radial: torch.Tensor,
        neighbors: torch.Tensor,
        coefficients: torch.Tensor,
    ) -> torch.Tensor:
        """ρ⁽ᵗ⁾ [num_centers, M] of the blocks' centres from c⁽ᵗ⁾ [num_atoms, K] of all atoms."""
        gram = self._gram(vectors, radial, neighbors, coefficients)
        return torch.mm(gram, pair_mixing(self._mixing_for_step(step), self.pairs))

    def refine_at_step(
        self,
        step: int,
        vectors: torch.Tensor,
        radial: torch.Tensor,
        neighbors: torch.Tensor,
        coefficients: torch.Tensor,
        atom_types: torch.Tensor,
    ) -> torch.Tensor:
        """c⁽ᵗ⁺¹⁾ [num_centers, K] of the blocks' centres (the first atoms) from c⁽ᵗ⁾
        [num_atoms, K] of all atoms and ``atom_types`` [num_atoms]."""
        for index, update in enumerate(self.updates):
            if index == step:
                gram = self._gram(vectors, radial, neighbors, coefficients)
                num_centers = gram.shape[0]
                return update(
                    coefficients[:num_centers],
                    gram,
                    atom_types[:num_centers],
                    pair_mixing(self._mixing_for_step(step), self.pairs),
                )
        raise RuntimeError(f"no coefficient update for step {step}")
