"""Stress is the strain derivative of the energy: σ = (1/V) ∂E/∂ε (ASE's sign convention)."""

import numpy as np
import pytest
from ase import Atoms
from nequip.data import AtomicDataDict
from nequip.utils.global_state import set_global_state

from ..utils import model_input, tiny_model


@pytest.fixture(scope="module", autouse=True)
def global_state():
    set_global_state()


TYPE_NAMES = ["O", "H"]
R_MAX = 3.5


def energy(model, atoms):
    return model(model_input(atoms, TYPE_NAMES, R_MAX))


@pytest.mark.parametrize("num_recursions", [0, 2])
def test_stress_equals_strain_derivative_of_energy(num_recursions):
    rng = np.random.default_rng(3)
    cell = np.array([[4.6, 0.0, 0.0], [0.9, 4.3, 0.0], [-0.7, 0.5, 4.9]])
    positions = rng.uniform(0.0, 1.0, (6, 3)) @ cell
    atoms = Atoms("OH2OH2", positions=positions, cell=cell, pbc=True)
    model = tiny_model(
        type_names=TYPE_NAMES, r_max=R_MAX, num_recursions=num_recursions, avg_num_neighbors=4.0
    )

    stress = energy(model, atoms)[AtomicDataDict.STRESS_KEY].detach().numpy().reshape(3, 3)
    volume = atoms.get_volume()
    step = 1e-5
    numerical = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            energies = []
            for sign in (1.0, -1.0):
                strain = np.eye(3)
                strain[i, j] += 0.5 * sign * step
                strain[j, i] += 0.5 * sign * step
                strained = atoms.copy()
                strained.set_cell(atoms.cell.array @ strain, scale_atoms=True)
                energies.append(energy(model, strained)[AtomicDataDict.TOTAL_ENERGY_KEY].item())
            numerical[i, j] = (energies[0] - energies[1]) / (2 * step) / volume
    assert np.abs(stress).max() > 1e-6, "degenerate test: zero stress"
    np.testing.assert_allclose(stress, numerical, rtol=1e-5, atol=1e-11)
