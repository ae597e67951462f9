"""REANN's recursion: orbital coefficients refined from the density, T times (``oc_loop``)."""

import math
from typing import Any, Dict, List, Tuple

import torch
from nequip.data import AtomicDataDict
from nequip.nn import GraphModuleMixin, with_edge_vectors_

from .element_networks import ElementNetworks
from .embedded_density import CartesianMonomials, embedded_density


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
        self, coefficients: torch.Tensor, density: torch.Tensor, atom_types: torch.Tensor
    ) -> torch.Tensor:
        """[num_atoms, K], [num_atoms, M], [num_atoms] → [num_atoms, K]."""
        return coefficients + self.network(density, atom_types)


class RecursiveEmbeddedDensity(GraphModuleMixin, torch.nn.Module):
    """The REANN descriptor ρ⁽ᵀ⁾: embedded density after T coefficient refinements.

    c⁽⁰⁾_j = P[Z_j]; for t = 1 … T: c⁽ᵗ⁾ = c⁽ᵗ⁻¹⁾ + NN⁽ᵗ⁾(ρ(c⁽ᵗ⁻¹⁾)); output ρ(c⁽ᵀ⁾). The
    geometry (monomials and radial functions) is computed once and reused at every step. An
    atom's descriptor depends on atoms within (T + 1) · r_max; T = 0 is EANN (strictly local).

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

    def _mixing_for_step(self, step: int) -> torch.Tensor:
        """W[L(c)] for every component c: [C, K, M]."""
        index = step if self.mixing.shape[0] > 1 else 0
        return torch.index_select(self.mixing[index], 0, self.monomials.order)

    # === stages, used by forward and one at a time by pair_reann's coefficient exchange ===

    def geometry(self, data: AtomicDataDict.Type) -> Tuple[torch.Tensor, torch.Tensor]:
        """Angular monomials [num_edges, C] and radial functions [num_edges, K] of every edge,
        shared by all recursion steps."""
        data = with_edge_vectors_(data, with_lengths=True)
        vectors = data[AtomicDataDict.EDGE_VECTORS_KEY].to(self._model_dtype)
        return self.monomials(vectors), data[AtomicDataDict.EDGE_EMBEDDING_KEY]

    def initial_coefficients_of(self, atom_types: torch.Tensor) -> torch.Tensor:
        """c⁽⁰⁾ [num_atoms, K] by element."""
        return torch.index_select(self.initial_coefficients, 0, atom_types)

    def density_at_step(
        self,
        step: int,
        angular: torch.Tensor,
        radial: torch.Tensor,
        coefficients: torch.Tensor,
        edge_index: torch.Tensor,
        num_centers: int,
    ) -> torch.Tensor:
        """ρ⁽ᵗ⁾ [num_centers, M] of atoms 0..num_centers−1 (every edge centre must be one of them)
        from the coefficients c⁽ᵗ⁾ [num_atoms, K] of all atoms."""
        return embedded_density(
            angular,
            radial,
            coefficients,
            self._mixing_for_step(step),
            edge_index[0],
            edge_index[1],
            num_centers,
        )

    def update_at_step(
        self, step: int, coefficients: torch.Tensor, density: torch.Tensor, atom_types: torch.Tensor
    ) -> torch.Tensor:
        """c⁽ᵗ⁺¹⁾ [num_centers, K] from c⁽ᵗ⁾ and ρ⁽ᵗ⁾ of the same atoms."""
        for index, update in enumerate(self.updates):
            if index == step:
                return update(coefficients, density, atom_types)
        raise RuntimeError(f"no coefficient update for step {step}")

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        edge_index = data[AtomicDataDict.EDGE_INDEX_KEY]
        atom_types = data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)
        num_atoms = atom_types.shape[0]
        angular, radial = self.geometry(data)  # [num_edges, C], [num_edges, K]

        coefficients = self.initial_coefficients_of(atom_types)
        step = 0
        for update in self.updates:
            density = self.density_at_step(
                step, angular, radial, coefficients, edge_index, num_atoms
            )
            coefficients = update(coefficients, density, atom_types)
            step += 1
        data[AtomicDataDict.NODE_FEATURES_KEY] = self.density_at_step(
            step, angular, radial, coefficients, edge_index, num_atoms
        )
        return data
