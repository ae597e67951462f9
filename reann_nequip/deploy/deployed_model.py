"""The TorchScript module that ``pair_reann`` and :class:`reann_nequip.integrations.ase.ReannCalculator` call.

One calling convention serves both ways LAMMPS hands over a configuration:

- *periodic images* (one MPI rank, and ASE): ``pos`` holds the real atoms only and every edge
  carries the Cartesian vector of its periodic image, ``shift`` (Å), so that
  ``r_ij = pos[j] - pos[i] + shift_ij``;
- *ghost shell* (several MPI ranks): ``pos`` holds local atoms first, then ghost atoms out to the
  model's interaction range, and every shift is zero.

Only the first ``num_local`` atomic energies enter the energy whose gradients are returned, so
forces on ghost atoms are the terms that LAMMPS sends back to their owners.

The ``exchange_*`` methods expose the recursion one stage at a time for ``pair_style reann
exchange``: the pair style sends each step's orbital coefficients of owned atoms to their ghost
copies between stages, and runs autograd through the stages in reverse, sending the gradients that
land on ghost coefficients back to their owners. Ghosts are then needed only out to r_max.
"""

from typing import List, Optional, Tuple

import torch
from nequip.data import AtomicDataDict

# the methods of DeployedEnergyModel that pair_style reann's coefficient exchange calls
EXCHANGE_METHODS = (
    "exchange_geometry",
    "exchange_initial_coefficients",
    "exchange_step",
    "exchange_energy",
)


def image_graph(
    pos: torch.Tensor,
    atom_types: torch.Tensor,
    edge_index: torch.Tensor,
    shift: torch.Tensor,
    cell: torch.Tensor,
) -> AtomicDataDict.Type:
    """The nequip graph of the deployed calling convention: ``cell`` [3, 3] is the identity and
    the edge "cell shifts" are the Cartesian image shifts, so that nequip's
    r_ij = pos[j] − pos[i] + shift_ij @ cell."""
    return {
        AtomicDataDict.POSITIONS_KEY: pos,
        AtomicDataDict.ATOM_TYPE_KEY: atom_types,
        AtomicDataDict.EDGE_INDEX_KEY: edge_index,
        AtomicDataDict.EDGE_CELL_SHIFT_KEY: shift,
        AtomicDataDict.CELL_KEY: cell.unsqueeze(0),
    }


class DeployedEnergyModel(torch.nn.Module):
    """Energy, forces and virial of a trained REANN energy model, in float64 at the interface.

    Args:
        energy_model: the nequip module mapping a graph to ``atomic_energy`` (the ``func`` of a
            ``ForceStressOutput``), in float32 or float64
    """

    num_recursions: int
    model_dtype: torch.dtype

    def __init__(self, energy_model: torch.nn.Module):
        super().__init__()
        self.energy_model = energy_model
        self.num_recursions = len(energy_model.density.updates)
        self.model_dtype = next(energy_model.parameters()).dtype

    def forward(
        self,
        pos: torch.Tensor,
        atom_types: torch.Tensor,
        edge_index: torch.Tensor,
        shift: torch.Tensor,
        num_local: int,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args: ``pos`` [N, 3] float64 Å, ``atom_types`` [N] int64, ``edge_index`` [2, E] int64
        (centre, neighbour), ``shift`` [E, 3] float64 Å, ``num_local`` atoms whose energies count.

        Returns: atomic energies [N] (eV), forces [N, 3] (eV/Å) = −∂E_local/∂pos and the virial
        [3, 3] (eV) = −∂E_local/∂ε under a symmetric strain ε, all float64.
        """
        # the edge vectors r_ij = x_j − x_i + s_ij, in the model dtype, are the leaves: forces
        # and virial both follow from g_ij = ∂E/∂r_ij, F = −∂E/∂x and the virial −Σ r ⊗ g
        # (symmetrised, with r in float64) = −∂E/∂ε. The kernels run outside the graph
        exact_vectors, vectors = torch.ops.reann.edge_vectors(
            pos, edge_index, shift, self.model_dtype
        )
        vectors.requires_grad_(True)
        data: AtomicDataDict.Type = {
            AtomicDataDict.POSITIONS_KEY: pos,
            AtomicDataDict.ATOM_TYPE_KEY: atom_types,
            AtomicDataDict.EDGE_INDEX_KEY: edge_index,
            AtomicDataDict.EDGE_VECTORS_KEY: vectors,
        }
        atomic_energy = self.energy_model(data)[AtomicDataDict.PER_ATOM_ENERGY_KEY]
        atomic_energy = atomic_energy.view(-1).to(torch.float64)
        local_energy = atomic_energy[:num_local].sum()
        gradients: List[Optional[torch.Tensor]] = torch.autograd.grad(
            [local_energy], [vectors], allow_unused=True
        )
        edge_gradient = gradients[0]
        # no edge reaches the energy when no atom has a neighbour
        if edge_gradient is None:
            edge_gradient = torch.zeros_like(vectors)
        forces, virial = torch.ops.reann.edge_forces(
            edge_gradient, edge_index, exact_vectors, pos.shape[0]
        )
        with torch.no_grad():
            energies = atomic_energy.clone()
        return energies, forces, virial

    # === stages for the coefficient exchange: edges are centred on local atoms 0..num_local−1 ===

    @torch.jit.export
    def exchange_geometry(
        self, pos: torch.Tensor, atom_types: torch.Tensor, edge_index: torch.Tensor, num_local: int
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Vector and radial neighbour blocks of the local atoms, differentiable in ``pos`` [N, 3]
        (local and ghost atoms, explicit positions: no shifts), and the neighbour of each slot."""
        data: AtomicDataDict.Type = {
            AtomicDataDict.POSITIONS_KEY: pos,
            AtomicDataDict.ATOM_TYPE_KEY: atom_types,
            AtomicDataDict.EDGE_INDEX_KEY: edge_index,
        }
        data = self.energy_model.edge_vectors(data)
        data = self.energy_model.edge_length(data)
        data = self.energy_model.radial_basis(data)
        return self.energy_model.density.block_geometry(
            data[AtomicDataDict.EDGE_VECTORS_KEY].to(self.model_dtype),
            data[AtomicDataDict.EDGE_EMBEDDING_KEY],
            edge_index,
            num_local,
        )

    @torch.jit.export
    def exchange_initial_coefficients(self, atom_types: torch.Tensor) -> torch.Tensor:
        """c⁽⁰⁾ [N, K] in the model dtype."""
        return self.energy_model.density.initial_coefficients_of(atom_types)

    @torch.jit.export
    def exchange_step(
        self,
        step: int,
        geometry: torch.Tensor,
        radial: torch.Tensor,
        neighbor_blocks: torch.Tensor,
        coefficients: torch.Tensor,
        atom_types: torch.Tensor,
    ) -> torch.Tensor:
        """c⁽ᵗ⁺¹⁾ [num_local, K] of the local atoms (the block rows) from c⁽ᵗ⁾ [N, K] of local and
        ghost atoms."""
        return self.energy_model.density.refine_at_step(
            step, geometry, radial, neighbor_blocks, coefficients, atom_types
        )

    @torch.jit.export
    def exchange_energy(
        self,
        geometry: torch.Tensor,
        radial: torch.Tensor,
        neighbor_blocks: torch.Tensor,
        coefficients: torch.Tensor,
        atom_types: torch.Tensor,
    ) -> torch.Tensor:
        """Atomic energies [num_local] (float64) from the final coefficients c⁽ᵀ⁾ [N, K]."""
        num_local = geometry.shape[0]
        density = self.energy_model.density.density_at_step(
            self.num_recursions, geometry, radial, neighbor_blocks, coefficients
        )
        data: AtomicDataDict.Type = {
            AtomicDataDict.NODE_FEATURES_KEY: density,
            AtomicDataDict.ATOM_TYPE_KEY: atom_types[:num_local],
        }
        data = self.energy_model.atomic_energy(data)
        data = self.energy_model.per_type_energy_scale_shift(data)
        return data[AtomicDataDict.PER_ATOM_ENERGY_KEY].view(-1).to(torch.float64)


class DeployedTensorModel(torch.nn.Module):
    """A frame's dipole, transition dipole or polarizability from a trained tensor model, in
    float64 at the interface, with the periodic-image convention of :class:`DeployedEnergyModel`.

    Args:
        model: the nequip module of a ``ReannDipoleModel``, ``ReannTransitionDipoleModel`` or
            ``ReannPolarizabilityModel`` (the ``model`` of its ``GraphModel``)
        output_field: the per-frame field it writes (``total_dipole``, ``transition_dipole``,
            ``polarizability``)
    """

    output_field: str

    def __init__(self, model: torch.nn.Module, output_field: str):
        super().__init__()
        self.model = model
        self.output_field = output_field

    def forward(
        self,
        pos: torch.Tensor,
        atom_types: torch.Tensor,
        edge_index: torch.Tensor,
        shift: torch.Tensor,
    ) -> torch.Tensor:
        """Args as :meth:`DeployedEnergyModel.forward`. Returns the frame's tensor, float64:
        [3] (e·Å) for dipoles, [3, 3] (Å³) for the polarizability."""
        cell = torch.eye(3, dtype=pos.dtype, device=pos.device)
        data = image_graph(pos, atom_types, edge_index, shift, cell)
        return self.model(data)[self.output_field][0].detach().to(torch.float64)
