"""ASE calculator for files written by ``nequip-deploy build``: needs torch, ASE and vesin only."""

from typing import List, Optional

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from ..deploy.build import read_metadata

# two atoms closer than this (Å) are almost surely a broken structure, not physics
MIN_DISTANCE = 0.1


class ReannCalculator(Calculator):
    """Energy (eV), per-atom energies, forces (eV/Å) and stress (eV/Å³) of a deployed REANN model.

    Args:
        model_path: a file written by ``nequip-deploy build``
        num_threads: torch intra-op threads (default: leave torch's setting)
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, model_path: str, num_threads: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.metadata = read_metadata(model_path)
        if self.metadata["model_kind"] != "energy":
            raise ValueError(
                f"`{model_path}` is a `{self.metadata['model_kind']}` model; ReannCalculator needs an energy model"
            )
        self.model_path = model_path
        self.model = torch.jit.load(model_path, map_location="cpu")
        self.type_names: List[str] = self.metadata["type_names"].split()
        self.r_max = float(self.metadata["r_max"])
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        from vesin import NeighborList

        self._neighbor_list = NeighborList(cutoff=self.r_max, full_list=True)

    def _atom_types(self, atoms: Atoms) -> np.ndarray:
        index = {name: i for i, name in enumerate(self.type_names)}
        symbols = atoms.get_chemical_symbols()
        unknown = [(i, s) for i, s in enumerate(symbols) if s not in index]
        if unknown:
            atom, symbol = unknown[0]
            raise ValueError(
                f"atom {atom} is {symbol}, which model `{self.model_path}` does not know "
                f"(its elements: {' '.join(self.type_names)})"
            )
        return np.array([index[s] for s in symbols], dtype=np.int64)

    def _check_geometry(self, atoms: Atoms) -> None:
        positions = atoms.get_positions()
        bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
        if bad.size:
            raise ValueError(f"atom {bad[0]} has a non-finite position {positions[bad[0]]}")
        if atoms.pbc.any():
            cell = atoms.cell.array
            periodic_rows = cell[atoms.pbc]
            if (
                np.linalg.matrix_rank(periodic_rows) < len(periodic_rows)
                or not np.isfinite(cell).all()
            ):
                raise ValueError(
                    f"the cell {cell.tolist()} is singular or not finite along the periodic directions "
                    f"{atoms.pbc.tolist()}"
                )

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        atom_types = self._atom_types(atoms)
        self._check_geometry(atoms)
        positions = atoms.get_positions()
        center, neighbor, shift_index, distance = self._neighbor_list.compute(
            positions, atoms.cell.array, atoms.pbc, quantities="ijSd"
        )
        if distance.size and distance.min() < MIN_DISTANCE:
            k = int(np.argmin(distance))
            raise ValueError(
                f"atoms {center[k]} and {neighbor[k]} are {distance[k]:.3g} Å apart "
                f"(less than {MIN_DISTANCE} Å)"
            )
        shift = shift_index.astype(np.float64) @ atoms.cell.array  # [num_edges, 3] Å
        atomic_energy, forces, virial = self.model(
            torch.from_numpy(positions),
            torch.from_numpy(atom_types),
            torch.from_numpy(np.stack([center, neighbor]).astype(np.int64)),
            torch.from_numpy(shift),
            len(atoms),
        )
        energies = atomic_energy.numpy()
        self.results = {
            "energy": float(energies.sum()),
            "free_energy": float(energies.sum()),
            "energies": energies.copy(),
            "forces": forces.numpy().copy(),
        }
        if atoms.pbc.all():
            # ASE: σ = (1/V) ∂E/∂ε = −W/V, in Voigt order xx yy zz yz xz xy
            stress = -virial.numpy() / atoms.get_volume()
            self.results["stress"] = stress.flat[[0, 4, 8, 5, 2, 1]].copy()
