"""REANN's recursion: orbital coefficients refined from the density, T times (``oc_loop``)."""

import functools
import logging
import math
from typing import Any, Dict, Final, List, Optional, Tuple

import torch
from e3nn.o3._irreps import Irreps
from nequip.data import AtomicDataDict
from nequip.nn import GraphModuleMixin

from .edge_vectors import with_edge_vectors
from .element_networks import ElementNetworks
from .embedded_density import (
    CartesianMonomials,
    FusedOrbitalGram,
    OrbitalGram,
    direct_embedded_density,
    edge_orbitals,
)
from .graph_capture import capturing_graph
from .kernels import kernels_available, load_kernels

DENSITY_KERNELS = ("auto", "fused", "torch")


class OrbitalCoefficientUpdate(torch.nn.Module):
    """c_j ← c_j + NN_{Z_j}(ρ_j): one residual refinement of the orbital coefficients.

    The network of atom j's own element reads j's own density. Its output layer starts at zero,
    so the update starts as the identity and the model starts as EANN.
    """

    # it reads the density as the product G Q, so its step forms the pair mixing Q
    takes_pair_mixing: Final[bool] = True

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
        """[num_atoms, K], [num_atoms, M], [num_atoms] → [num_atoms, K]; or the density as a
        product, ``density`` G [num_atoms, F] and ``mixing`` Q [F, M] with ρ = G Q (folded into
        the networks' input layer)."""
        return coefficients + self.network(density, atom_types, mixing)


class FoldedCoefficientUpdate(torch.nn.Module):
    """An :class:`OrbitalCoefficientUpdate` whose input layer holds its step's pair mixing,
    W ← Q W [num_types, F, H], computed once (:meth:`RecursiveEmbeddedDensity.fold_pair_mixing`,
    deployed files) instead of in every call. It reads the Gram matrices G [num_atoms, F] of the
    neighbour blocks and ignores ``mixing``; eval only (W no longer trains it).

    Args:
        network: the update's :class:`ElementNetworks`, whose input layer is replaced
        pair_mixing: Q [F, M] of its step
    """

    # Q is in its input layer: its step need not form it
    takes_pair_mixing: Final[bool] = False

    def __init__(self, network: ElementNetworks, pair_mixing: torch.Tensor):
        super().__init__()
        self.network = network
        network.fold_input_mixing(pair_mixing)

    def forward(
        self,
        coefficients: torch.Tensor,
        density: torch.Tensor,
        atom_types: torch.Tensor,
        mixing: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """[num_atoms, K], G [num_atoms, F], [num_atoms] → [num_atoms, K]."""
        if capturing_graph():
            # the captured form passes the density ρ, not G: same width, wrong numbers
            raise RuntimeError("a model with folded pair mixing (deployed) cannot be captured")
        return coefficients + self.network(density, atom_types)


class RecursiveEmbeddedDensity(GraphModuleMixin, torch.nn.Module):
    """The REANN descriptor ρ⁽ᵀ⁾: embedded density after T coefficient refinements.

    c⁽⁰⁾_j = P[Z_j]; for t = 1 … T: c⁽ᵗ⁾ = c⁽ᵗ⁻¹⁾ + NN⁽ᵗ⁾(ρ(c⁽ᵗ⁻¹⁾)); output ρ(c⁽ᵀ⁾). The
    geometry (monomials and radial functions) is computed once and reused at every step. An
    atom's descriptor depends on atoms within (T + 1) · r_max; T = 0 is EANN (strictly local).

    Two forms of the same sums: eager and TorchScript runs gather the edges into dense per-centre
    neighbour blocks (:meth:`geometry`, fast); while a graph is captured (``nequip-compile``, see
    :func:`~reann_nequip.nn.graph_capture.capturing_graph`) they run edge by edge
    (:meth:`edge_geometry`), which has no data-dependent sizes. On the blocks, the orbitals' Gram
    matrices come from a C++ kernel (:class:`FusedOrbitalGram`) or from torch operations
    (:class:`OrbitalGram`), chosen by ``density_kernel``: the same numbers to round-off, both
    differentiable twice (force training).

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
        density_kernel (str): ``fused`` (the C++ kernel library must be built), ``torch``, or
            ``auto`` (default): fused when the library is built, else torch with a warning
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
        density_kernel: str = "auto",
        irreps_in=None,
    ):
        super().__init__()
        if density_kernel not in DENSITY_KERNELS:
            raise ValueError(
                f"`density_kernel` must be one of {DENSITY_KERNELS}, found {density_kernel!r}"
            )
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
        self.orbital_gram = OrbitalGram(num_gaussians, self.monomials)
        if density_kernel == "fused" or (density_kernel == "auto" and _kernel_built()):
            self.use_fused_kernels()

        self.updates = torch.nn.ModuleList(
            [
                OrbitalCoefficientUpdate(
                    num_types, num_orbitals, num_gaussians, coefficient_network
                )
                for _ in range(num_recursions)
            ]
        )
        # after fold_final_mixing: ρ⁽ᵀ⁾ written as its Gram matrices G, its readout holding Q
        self.writes_gram = False
        self._model_dtype = torch.get_default_dtype()
        self._init_irreps(
            irreps_in=irreps_in,
            required_irreps_in=[AtomicDataDict.EDGE_EMBEDDING_KEY],
            irreps_out={AtomicDataDict.NODE_FEATURES_KEY: f"{num_orbitals}x0e"},
        )

    def use_fused_kernels(self) -> None:
        """Compute the orbitals' Gram matrices with the C++ kernel (:class:`FusedOrbitalGram`);
        raises if its library is not built."""
        load_kernels()
        self.orbital_gram = FusedOrbitalGram(self.initial_coefficients.shape[1], self.monomials)

    def runs_kernels(self) -> bool:
        """Whether the Gram matrices come from the C++ kernel."""
        return isinstance(self.orbital_gram, FusedOrbitalGram)

    def fold_pair_mixing(self) -> None:
        """For deployed files: every update becomes a :class:`FoldedCoefficientUpdate`, its step's
        pair mixing folded into its input layer once (at 192 water atoms the per-call products
        were ~4 % of a call). Eval on neighbour blocks only: graph capture and training need the
        unfolded model. Folding again changes nothing."""
        if any(isinstance(update, FoldedCoefficientUpdate) for update in self.updates):
            return
        self.updates = torch.nn.ModuleList(
            [
                FoldedCoefficientUpdate(
                    update.network, self.orbital_gram.pair_mixing(self._mixing_for_step(step))
                )
                for step, update in enumerate(self.updates)
            ]
        )

    def fold_final_mixing(self, readout: torch.nn.Module, model: torch.nn.Module) -> None:
        """For deployed energy files: the pair mixing Q [F, M] of the final density ρ⁽ᵀ⁾ = G Q
        moves into the input layer of ``readout``'s ``network`` (the energy readout, the stage
        of ``model`` that reads ``node_features``); this module then writes G
        (``node_features`` [num_atoms, F], F = (L_max + 1) P, so declared by every stage of
        ``model``), and the [num_atoms, F] × [F, M] product and its backward leave every call
        (~3 % of a float64 call at 12,288 water atoms). Eval on neighbour blocks only, as
        :meth:`fold_pair_mixing`. Folding again changes nothing."""
        if self.writes_gram:
            return
        pair_mixing = self.orbital_gram.pair_mixing(self._mixing_for_step(len(self.updates)))
        readout.network.fold_input_mixing(pair_mixing)
        gram_irreps = Irreps(f"{pair_mixing.shape[0]}x0e")
        for stage in model.modules():
            if isinstance(stage, GraphModuleMixin):
                for irreps in (stage.irreps_in, stage.irreps_out):
                    if AtomicDataDict.NODE_FEATURES_KEY in irreps:
                        irreps[AtomicDataDict.NODE_FEATURES_KEY] = gram_irreps
        self.writes_gram = True

    def _mixing_for_step(self, step: int) -> torch.Tensor:
        """W[L] [L_max + 1, K, M] of recursion step ``step`` (shared, or one per step)."""
        return self.mixing[step if self.mixing.shape[0] > 1 else 0]

    # === stages, used by forward and one at a time by pair_reann's coefficient exchange ===

    def geometry(
        self, data: AtomicDataDict.Type, num_centers: int
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The edges as dense per-centre neighbour blocks, shared by all recursion steps: the
        slot geometry of :meth:`OrbitalGram.neighbor_blocks` (monomials [num_centers, C,
        max_neighbors], or the edge vectors [num_centers, 3, max_neighbors] in Å for the fused
        kernel), radial functions [num_centers, max_neighbors, K] and the neighbour atom of each
        slot [num_centers · max_neighbors]. Every edge centre must be below ``num_centers``."""
        vectors, radial, edge_index = self._edge_vectors(data)
        return self.orbital_gram.neighbor_blocks(vectors, radial, edge_index, num_centers)

    def edge_geometry(
        self, data: AtomicDataDict.Type
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Angular monomials [num_edges, C], radial functions [num_edges, K] and the
        ``edge_index`` [2, num_edges] of every edge."""
        vectors, radial, edge_index = self._edge_vectors(data)
        return self.monomials(vectors), radial, edge_index

    def _edge_vectors(
        self, data: AtomicDataDict.Type
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Edge vectors [num_edges, 3] (Å, model dtype), radial functions [num_edges, K] and
        ``edge_index`` [2, num_edges]."""
        data = with_edge_vectors(data)
        return (
            data[AtomicDataDict.EDGE_VECTORS_KEY].to(self._model_dtype),
            data[AtomicDataDict.EDGE_EMBEDDING_KEY],
            data[AtomicDataDict.EDGE_INDEX_KEY],
        )

    def initial_coefficients_of(self, atom_types: torch.Tensor) -> torch.Tensor:
        """c⁽⁰⁾ [num_atoms, K] by element."""
        return torch.index_select(self.initial_coefficients, 0, atom_types)

    def density_at_step(
        self,
        step: int,
        geometry: torch.Tensor,
        radial: torch.Tensor,
        neighbors: torch.Tensor,
        coefficients: torch.Tensor,
    ) -> torch.Tensor:
        """ρ⁽ᵗ⁾ [num_centers, M] from the coefficients c⁽ᵗ⁾ [num_atoms, K] of all atoms, on the
        neighbour blocks of :meth:`geometry` (``neighbors`` [num_centers · max_neighbors]) or
        the edges of :meth:`edge_geometry` (``neighbors`` = ``edge_index`` [2, num_edges],
        centres = all atoms). After :meth:`fold_final_mixing`, ρ⁽ᵀ⁾ as its Gram matrices G."""
        final_as_gram = self.writes_gram and step == len(self.updates)
        features, mixing = self.linear_density_at_step(
            step, geometry, radial, neighbors, coefficients, not final_as_gram
        )
        return features if mixing is None else torch.mm(features, mixing)

    def linear_density_at_step(
        self,
        step: int,
        geometry: torch.Tensor,
        radial: torch.Tensor,
        neighbors: torch.Tensor,
        coefficients: torch.Tensor,
        pair_mixing: bool = True,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """:meth:`density_at_step` as a product ρ⁽ᵗ⁾ = G Q on neighbour blocks: the Gram
        matrices G [num_centers, (L_max + 1) · P] and the pair mixing Q [(L_max + 1) · P, M],
        which the update networks fold into their input layer (ρ is never formed there; the
        [num_centers, P] × [P, M] product and its backward took ~10 % of a deployed call), or
        ``None`` for Q without ``pair_mixing`` (a folded update holds it). On edges: ρ and
        ``None``."""
        if neighbors.dim() == 1:
            gram = self.orbital_gram(geometry, radial, neighbors, coefficients)
            if not pair_mixing:
                return gram, None
            return gram, self.orbital_gram.pair_mixing(self._mixing_for_step(step))
        orbitals = edge_orbitals(geometry, radial, neighbors, coefficients, coefficients.shape[0])
        density = direct_embedded_density(
            orbitals, torch.index_select(self._mixing_for_step(step), 0, self.monomials.order)
        )
        return density, None

    def refine_at_step(
        self,
        step: int,
        geometry: torch.Tensor,
        radial: torch.Tensor,
        neighbors: torch.Tensor,
        coefficients: torch.Tensor,
        atom_types: torch.Tensor,
    ) -> torch.Tensor:
        """c⁽ᵗ⁺¹⁾ [num_centers, K] of the centres (the first atoms; all atoms on edges) from
        c⁽ᵗ⁾ [num_atoms, K] of all atoms and ``atom_types`` [num_atoms], on the blocks or edges
        of :meth:`density_at_step`."""
        for index, update in enumerate(self.updates):
            if index == step:
                features, mixing = self.linear_density_at_step(
                    step, geometry, radial, neighbors, coefficients, update.takes_pair_mixing
                )
                num_centers = features.shape[0]
                return update(
                    coefficients[:num_centers], features, atom_types[:num_centers], mixing
                )
        raise RuntimeError(f"no coefficient update for step {step}")

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        atom_types = data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)
        if capturing_graph():
            if self.writes_gram:
                # the edge form writes ρ, which the folded readout would read as G
                raise RuntimeError("a model with folded pair mixing (deployed) cannot be captured")
            geometry, radial, neighbors = self.edge_geometry(data)
        else:
            geometry, radial, neighbors = self.geometry(data, atom_types.shape[0])

        coefficients = self.initial_coefficients_of(atom_types)
        step = 0
        for _ in self.updates:
            coefficients = self.refine_at_step(
                step, geometry, radial, neighbors, coefficients, atom_types
            )
            step += 1
        data[AtomicDataDict.NODE_FEATURES_KEY] = self.density_at_step(
            step, geometry, radial, neighbors, coefficients
        )
        return data


def _kernel_built() -> bool:
    """Whether the kernel library is built; warns (once per process) when it is not."""
    if kernels_available():
        return True
    _warn_torch_form()
    return False


@functools.cache
def _warn_torch_form() -> None:
    logging.getLogger(__name__).warning(
        "the reann_nequip kernel library is not built: the density runs on torch operations, "
        "slower and with more memory in training. Build it with `reann-nequip build-lammps`."
    )
