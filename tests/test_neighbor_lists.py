"""Neighbour-list backends: vesin (our configs' choice) finds exactly matscipy's edges (nequip's
default), and every config uses the same backend."""

import ase
import ase.io
import numpy as np
import pytest
import yaml
from nequip.data import AtomicDataDict, from_ase
from nequip.data.transforms import NeighborListTransform

from reann_nequip.data import iter_configuration

from .utils import REPO_ROOT

CH4 = REPO_ROOT / "examples" / "ch4" / "ch4_b3lyp_augccpvdz.xyz"
CO2_NI100 = REPO_ROOT.parent / "shared" / "data" / "co2_ni100_reann" / "val" / "configuration"
CONFIG_BACKEND = "vesin"


def _edges(atoms: ase.Atoms, r_max: float, backend: str) -> set:
    """(center, neighbour, shift_a, shift_b, shift_c) of every edge."""
    geometry = ase.Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    data = NeighborListTransform(r_max=r_max, backend=backend)(from_ase(geometry))
    index = data[AtomicDataDict.EDGE_INDEX_KEY].T.tolist()
    shifts = data[AtomicDataDict.EDGE_CELL_SHIFT_KEY].round().long().tolist()
    return {(i, j, *shift) for (i, j), shift in zip(index, shifts)}


def _triclinic_box() -> ase.Atoms:
    """12 atoms in a skewed cell shorter than the cutoff: many periodic images of each pair."""
    rng = np.random.default_rng(0)
    cell = np.array([[3.1, 0.0, 0.0], [1.2, 2.9, 0.0], [-0.7, 0.9, 3.4]])
    return ase.Atoms("H6O6", scaled_positions=rng.uniform(size=(12, 3)), cell=cell, pbc=True)


def _systems():
    """(name, atoms, r_max): the CH4 example at its configs' cutoff, a small triclinic box and,
    with the shared data, CO2/Ni(100) at its config's cutoff."""
    systems = [(f"CH4 {i}", atoms, 4.0) for i, atoms in enumerate(ase.io.read(CH4, ":3"))]
    systems.append(("triclinic box", _triclinic_box(), 4.5))
    if CO2_NI100.exists():
        frames = iter_configuration(CO2_NI100, coordinates="fractional")
        systems += [(f"CO2/Ni(100) {i}", next(frames).to_atoms(), 5.0) for i in range(3)]
    return systems


def test_vesin_and_matscipy_find_the_same_edges():
    for name, atoms, r_max in _systems():
        reference = _edges(atoms, r_max, "matscipy")
        assert len(reference) > 0, name
        assert _edges(atoms, r_max, "vesin") == reference, name


def _neighbor_list_transforms(node):
    if isinstance(node, dict):
        if node.get("_target_") == "nequip.data.transforms.NeighborListTransform":
            yield node
        for value in node.values():
            yield from _neighbor_list_transforms(value)
    elif isinstance(node, list):
        for value in node:
            yield from _neighbor_list_transforms(value)


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO_ROOT / "configs").glob("*.yaml")))
def test_every_config_uses_the_same_backend(config):
    transforms = list(
        _neighbor_list_transforms(yaml.safe_load((REPO_ROOT / "configs" / config).read_text()))
    )
    assert transforms, f"{config} has no NeighborListTransform"
    assert [t.get("backend") for t in transforms] == [CONFIG_BACKEND] * len(transforms), config
