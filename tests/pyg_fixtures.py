"""A small in-memory PyG dataset of random H/C/N/O molecules with EMT energies and forces.

Importable by ``nequip-train`` (``_target_: tests.pyg_fixtures.TinyMolecules``) when the repository
root is on ``PYTHONPATH``; needs torch-geometric.
"""

from typing import Optional

import ase
import numpy as np
import torch
from ase.calculators.emt import EMT
from torch_geometric.data import Data, Dataset

ELEMENTS = ("H", "C", "N", "O")
# fake partial charges (e) and atomic polarisabilities (Å³) for the dipole and polarizability
CHARGES = {1: 0.3, 6: -0.1, 7: -0.3, 8: -0.4}
ATOMIC_POLARIZABILITIES = {1: 0.7, 6: 1.8, 7: 1.1, 8: 0.8}


def random_molecule(rng: np.random.Generator, num_atoms: int) -> ase.Atoms:
    """Atoms placed one by one 1.0–1.6 Å from an earlier atom and ≥ 0.9 Å from all others."""
    positions = [np.zeros(3)]
    while len(positions) < num_atoms:
        direction = rng.normal(size=3)
        candidate = positions[rng.integers(len(positions))] + rng.uniform(
            1.0, 1.6
        ) * direction / np.linalg.norm(direction)
        if min(np.linalg.norm(candidate - p) for p in positions) >= 0.9:
            positions.append(candidate)
    symbols = [ELEMENTS[i] for i in rng.integers(len(ELEMENTS), size=num_atoms)]
    return ase.Atoms(symbols, positions=np.array(positions))


def molecule_to_pyg(atoms: ase.Atoms, dtype: torch.dtype, edge_cutoff: Optional[float]) -> Data:
    """``atoms`` as PyG ``Data`` with EMT labels, a fake dipole and polarizability, and ``y``."""
    atoms.calc = EMT()
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    numbers = atoms.get_atomic_numbers()
    centred = atoms.positions - atoms.positions.mean(axis=0)
    dipole = sum(CHARGES[z] * r for z, r in zip(numbers, centred))
    polarizability = sum(
        ATOMIC_POLARIZABILITIES[z] * (np.eye(3) + 0.1 * np.outer(r, r))
        for z, r in zip(numbers, centred)
    )
    data = Data(
        pos=torch.tensor(atoms.positions, dtype=dtype),
        z=torch.tensor(numbers, dtype=torch.long),
        energy=torch.tensor([energy], dtype=dtype),
        forces=torch.tensor(forces, dtype=dtype),
        dipole=torch.tensor(dipole, dtype=dtype).reshape(1, 3),
        polarizability=torch.tensor(polarizability, dtype=dtype).reshape(1, 3, 3),
        # QM9-like target row: [|dipole|, energy]
        y=torch.tensor([[np.linalg.norm(dipole), energy]], dtype=dtype),
    )
    if edge_cutoff is not None:
        data.edge_index = full_radius_graph(data.pos, edge_cutoff)
    return data


def full_radius_graph(pos: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Every ordered pair within ``cutoff``, in PyG's row order: [neighbour (source), centre]."""
    distances = torch.linalg.vector_norm(pos[:, None] - pos[None], dim=-1)
    within = (distances <= cutoff) & ~torch.eye(len(pos), dtype=torch.bool)
    centre, neighbour = torch.nonzero(within).T
    return torch.stack([neighbour, centre])


class TinyMolecules(Dataset):
    """``num_molecules`` random molecules of 2–6 H/C/N/O atoms, EMT energies (eV) and forces.

    Args:
        num_molecules (int): dataset size (default ``20``)
        seed (int): generator seed (default ``0``)
        dtype (str): ``float32`` (PyG's usual) or ``float64`` (default ``float32``)
        edge_cutoff (float): also store the full radius graph at this cutoff as ``edge_index``
            (default ``None``: no edges)
    """

    def __init__(
        self,
        num_molecules: int = 20,
        seed: int = 0,
        dtype: str = "float32",
        edge_cutoff: Optional[float] = None,
    ):
        super().__init__(root=None)
        rng = np.random.default_rng(seed)
        torch_dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
        self._molecules = [
            molecule_to_pyg(random_molecule(rng, int(rng.integers(2, 7))), torch_dtype, edge_cutoff)
            for _ in range(num_molecules)
        ]

    def len(self) -> int:
        return len(self._molecules)

    def get(self, idx: int) -> Data:
        return self._molecules[idx].clone()
