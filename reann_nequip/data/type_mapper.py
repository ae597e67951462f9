"""Element → model type mapping that names what it cannot map."""

import ase.data
import torch
from nequip.data import AtomicDataDict
from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper as _NequipMapper


class ChemicalSpeciesToAtomTypeMapper(_NequipMapper):
    """nequip's ``ChemicalSpeciesToAtomTypeMapper``, with an error that names the elements.

    nequip reports an unknown element only as "a chemical species that was not specified";
    this drop-in replacement says which elements, on which atoms, and what the model knows.
    Same arguments as nequip's.
    """

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        atomic_numbers = data[AtomicDataDict.ATOMIC_NUMBERS_KEY].view(-1)
        unknown = torch.index_select(self.lookup_table, 0, atomic_numbers) < 0
        if bool(unknown.any()):
            atoms = torch.nonzero(unknown).view(-1).tolist()
            elements = sorted({ase.data.chemical_symbols[int(atomic_numbers[i])] for i in atoms})
            shown = ", ".join(str(i) for i in atoms[:10]) + (" …" if len(atoms) > 10 else "")
            raise ValueError(
                f"element(s) {elements} on atom(s) {shown} are not among the model's "
                f"`type_names` {list(self.model_type_names)}; add them to `type_names` (and to "
                f"`chemical_species_to_atom_type_map` if you give one) or remove those frames"
            )
        return super().forward(data)
