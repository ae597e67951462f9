"""The quickstart's ASE step: a deployed REANN model as an ASE calculator.

Builds a periodic box of eight CH4 molecules, 8 Å apart (beyond the 4 Å cutoff of each other),
prints the energy and the largest force, runs a few steps of velocity Verlet, and writes the box
as a LAMMPS data file for the quickstart's LAMMPS step.

    python ase_md.py MODEL.pth BOX.data
"""

import sys

import numpy as np
from ase import Atoms, units
from ase.io import write
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet

from reann_nequip.integrations.ase import ReannCalculator

model, data_file = sys.argv[1], sys.argv[2]

# one tetrahedral CH4 (C–H 1.09 Å) in an 8 Å cell, repeated 2 × 2 × 2
bond = 1.09 / np.sqrt(3.0)
hydrogens = bond * np.array([[1, 1, 1], [-1, -1, 1], [-1, 1, -1], [1, -1, -1]])
molecule = Atoms("CH4", positions=np.vstack([[0, 0, 0], hydrogens]) + 4.0, cell=[8.0] * 3, pbc=True)
box = molecule.repeat((2, 2, 2))

box.calc = ReannCalculator(model)
print(
    f"{len(box)} atoms: energy {box.get_potential_energy():.4f} eV, largest force "
    f"{np.abs(box.get_forces()).max():.4f} eV/Å"
)

MaxwellBoltzmannDistribution(box, temperature_K=100.0, rng=np.random.default_rng(0))
dynamics = VelocityVerlet(box, 0.5 * units.fs)
start = box.get_total_energy()
dynamics.run(20)
print(f"20 MD steps of 0.5 fs: total energy {start:.4f} -> {box.get_total_energy():.4f} eV")

# the box before the MD, for LAMMPS: atom types 1 = C, 2 = H, as `pair_coeff * * MODEL C H`
write(
    data_file, molecule.repeat((2, 2, 2)), format="lammps-data", specorder=["C", "H"], masses=True
)
print(f"wrote {data_file}")
