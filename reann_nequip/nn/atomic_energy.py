"""Atomic energies from the REANN density by per-element networks."""

from typing import Any, Dict, List

import torch
from nequip.data import AtomicDataDict
from nequip.nn import GraphModuleMixin

from .element_networks import ElementNetworks


class AtomicEnergyReadout(GraphModuleMixin, torch.nn.Module):
    """E_i = NN_{Z_i}(ρ_i) − NN_{Z_i}(0).

    Subtracting the network's value at zero density makes an isolated atom's energy exactly 0
    here, so after nequip's ``PerTypeScaleShift`` it is exactly the per-type shift (e.g. the
    isolated-atom reference energy). REANN instead puts the mean energy per atom into the output
    bias; the difference is a constant per element, carried by the shift.

    Reads ``node_features`` [num_atoms, M]; writes ``atomic_energy`` [num_atoms, 1].

    Args:
        type_names (list[str]): element names
        num_orbitals (int): M, width of the density
        energy_network (dict): :class:`ElementNetworks` options (``hidden``, ``num_blocks``,
            ``activation``, ``layer_norm``, ``dropout``)
    """

    def __init__(
        self,
        type_names: List[str],
        num_orbitals: int,
        energy_network: Dict[str, Any],
        irreps_in=None,
    ):
        super().__init__()
        self.network = ElementNetworks(len(type_names), num_orbitals, 1, **energy_network)
        self.register_buffer("all_types", torch.arange(len(type_names)))
        self._init_irreps(
            irreps_in=irreps_in,
            my_irreps_in={AtomicDataDict.NODE_FEATURES_KEY: f"{num_orbitals}x0e"},
            irreps_out={AtomicDataDict.PER_ATOM_ENERGY_KEY: "0e"},
        )

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        density = data[AtomicDataDict.NODE_FEATURES_KEY]
        atom_types = data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)
        energy = self.network(density, atom_types)  # [num_atoms, 1]
        zero = torch.zeros(
            self.all_types.shape[0], density.shape[1], dtype=density.dtype, device=density.device
        )
        isolated = self.network(zero, self.all_types)  # [num_types, 1]
        data[AtomicDataDict.PER_ATOM_ENERGY_KEY] = energy - torch.index_select(
            isolated, 0, atom_types
        )
        return data
