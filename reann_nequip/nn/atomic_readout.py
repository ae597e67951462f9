"""Per-atom scalars from the REANN density by per-element networks: atomic energies, or the
scalar heads of the dipole, transition-dipole and polarizability models."""

from typing import Any, Dict, List

import torch
from nequip.data import AtomicDataDict
from nequip.nn import GraphModuleMixin

from .element_networks import ElementNetworks


class AtomicScalarReadout(GraphModuleMixin, torch.nn.Module):
    """s_i = NN_{Z_i}(ρ_i) − NN_{Z_i}(0), ``num_scalars`` numbers per atom.

    Subtracting the network's value at zero density makes an isolated atom's output exactly 0
    here, so after nequip's ``PerTypeScaleShift`` it is exactly the per-type shift (e.g. the
    isolated-atom reference energy). REANN instead puts the mean energy per atom into the output
    bias; the difference is a constant per element, carried by the shift.

    Reads ``node_features`` [num_atoms, M]; writes ``out_field`` [num_atoms, num_scalars].

    Args:
        type_names (list[str]): element names
        num_orbitals (int): M, width of the density
        network (dict): :class:`ElementNetworks` options (``hidden``, ``num_blocks``,
            ``activation``, ``layer_norm``, ``dropout``)
        out_field (str): per-atom field written, e.g. ``atomic_energy``
        num_scalars (int): outputs per atom (REANN ``outputneuron``; default ``1``)
    """

    out_field: str

    def __init__(
        self,
        type_names: List[str],
        num_orbitals: int,
        network: Dict[str, Any],
        out_field: str,
        num_scalars: int = 1,
        irreps_in=None,
    ):
        super().__init__()
        self.out_field = out_field
        self.network = ElementNetworks(len(type_names), num_orbitals, num_scalars, **network)
        self.register_buffer("all_types", torch.arange(len(type_names)))
        self._init_irreps(
            irreps_in=irreps_in,
            my_irreps_in={AtomicDataDict.NODE_FEATURES_KEY: f"{num_orbitals}x0e"},
            irreps_out={out_field: f"{num_scalars}x0e"},
        )

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        density = data[AtomicDataDict.NODE_FEATURES_KEY]
        atom_types = data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)
        scalars = self.network(density, atom_types)  # [num_atoms, num_scalars]
        zero = torch.zeros(
            self.all_types.shape[0], density.shape[1], dtype=density.dtype, device=density.device
        )
        # a second call, not one call on the concatenated rows: AOTInductor (nequip-compile)
        # fails to generate code for the per-frame energy sum after slicing those rows apart
        isolated = self.network(zero, self.all_types)  # [num_types, num_scalars]
        data[self.out_field] = scalars - torch.index_select(isolated, 0, atom_types)
        return data
