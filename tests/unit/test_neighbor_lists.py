"""Neighbour lists: vesin (our configs' choice) finds exactly matscipy's edges (nequip's default),
every config uses the same backend, and the ASE calculator's ``reann::neighbor_list`` finds
exactly ASE's edges, periodic images included, and refuses bad input."""

import ase
import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase.neighborlist import primitive_neighbor_list
from nequip.data import AtomicDataDict, from_ase
from nequip.data.transforms import NeighborListTransform

from reann_nequip.data import iter_configuration
from reann_nequip.nn.kernels import library_path

from ..utils import REPO_ROOT, SHARED_DATA

CH4 = REPO_ROOT / "examples" / "ch4" / "ch4_b3lyp_augccpvdz.xyz"
CO2_NI100 = SHARED_DATA / "co2_ni100_reann" / "val" / "configuration"
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


# === the ASE calculator's neighbour list, reann::neighbor_list ===

needs_kernels = pytest.mark.skipif(
    not library_path().exists(),
    reason="the kernel library is not built (`reann-nequip build-lammps`, or `make install`)",
)


def _kernel_edges(positions, cell, pbc, r_max):
    """(center, neighbour, rounded Cartesian shift) of every edge of reann::neighbor_list, after
    checking its lengths and its order by centre."""
    from reann_nequip.nn.kernels import load_kernels

    load_kernels()
    edge_index, shift, length = torch.ops.reann.neighbor_list(
        torch.as_tensor(positions, dtype=torch.float64),
        torch.as_tensor(cell, dtype=torch.float64),
        torch.as_tensor(pbc, dtype=torch.bool),
        r_max,
    )
    i, j = edge_index.tolist()
    vectors = torch.as_tensor(positions)[j] - torch.as_tensor(positions)[i] + shift
    torch.testing.assert_close(vectors.norm(dim=1), length, rtol=0, atol=1e-9)
    assert (length < r_max).all()
    assert (edge_index[0, 1:] >= edge_index[0, :-1]).all(), "edges not ordered by centre"
    edges = {(a, b, *s) for a, b, s in zip(i, j, shift.numpy().round(6).tolist())}
    assert len(edges) == len(i), "an edge is listed twice"
    return edges


def _ase_edges(positions, cell, pbc, r_max):
    i, j, S = primitive_neighbor_list("ijS", pbc, cell, positions, r_max)
    shifts = (S @ np.asarray(cell)).round(6).tolist()
    return {(a, b, *s) for a, b, s in zip(i.tolist(), j.tolist(), shifts)}


@needs_kernels
def test_kernel_neighbor_list_finds_ases_edges_in_the_shipped_systems():
    for name, atoms, r_max in _systems():
        args = (atoms.positions, atoms.cell.array, atoms.pbc, r_max)
        reference = _ase_edges(*args)
        assert len(reference) > 0, name
        assert _kernel_edges(*args) == reference, name


@needs_kernels
def test_kernel_neighbor_list_finds_ases_edges_in_random_cells():
    """Skewed cells, periodic along any subset of axes, thinner than the cutoff or not, atoms
    inside and outside the cell; every tenth with its non-periodic cell vectors zeroed (they are
    not read: ASE, which needs them to bin, gets the original ones)."""
    rng = np.random.default_rng(1)
    for trial in range(150):
        num_atoms = int(rng.integers(1, 30))
        pbc = rng.integers(0, 2, 3).astype(bool)
        cell = np.diag(rng.uniform(1.5, 10.0, 3)) + rng.uniform(-2.0, 2.0, (3, 3))
        positions = rng.uniform(-0.5, 1.5, (num_atoms, 3)) @ cell
        r_max = float(rng.uniform(0.8, 6.0))
        kernel_cell = cell.copy()
        if trial % 10 == 0:
            kernel_cell[~pbc] = 0.0
        assert _kernel_edges(positions, kernel_cell, pbc, r_max) == _ase_edges(
            positions, cell, pbc, r_max
        ), (trial, pbc.tolist(), r_max)


@needs_kernels
def test_kernel_neighbor_list_edge_cases():
    # one atom in a cube shorter than the cutoff: its own six nearest images, no self edge
    edges = _kernel_edges(np.zeros((1, 3)), 3.0 * np.eye(3), [True] * 3, 3.5)
    assert sorted(e[2:] for e in edges) == sorted(
        tuple(3.0 * s * np.eye(3)[a]) for a in range(3) for s in (-1, 1)
    )
    # no atoms; atoms a million Å apart in an open cell (the bins stay few)
    assert _kernel_edges(np.zeros((0, 3)), np.zeros((3, 3)), [False] * 3, 5.0) == set()
    far = np.array([[0.0, 0.0, 0.0], [1e6, 0.0, 0.0], [1e6 + 1.0, 0.0, 0.0]])
    assert _kernel_edges(far, np.zeros((3, 3)), [False] * 3, 5.0) == {
        (1, 2, 0.0, 0.0, 0.0),
        (2, 1, 0.0, 0.0, 0.0),
    }
    # two dense clusters 1,000 Å apart: the mean density over the span underestimates the edges
    # ~20-fold, so the edge buffers grow several times
    rng = np.random.default_rng(0)
    clusters = np.concatenate(
        [rng.uniform(0.0, 3.0, (200, 3)), rng.uniform(0.0, 3.0, (200, 3)) + [1000.0, 0.0, 0.0]]
    )
    args = (clusters, np.eye(3), [False] * 3, 5.0)
    edges = _kernel_edges(*args)
    assert len(edges) == 2 * 200 * 199
    assert edges == _ase_edges(*args)


@needs_kernels
@pytest.mark.parametrize(
    "positions, cell, pbc, cutoff, message",
    [
        ([[0.0, 0.0, float("nan")]], np.eye(3), [True] * 3, 5.0, "atom 0 has a non-finite"),
        ([[0.0, 0.0, 0.0]], np.zeros((3, 3)), [True] * 3, 5.0, "singular"),
        (
            [[0.0, 0.0, 0.0]],
            [[1, 0, 0], [2, 0, 0], [0, 0, 0]],
            [True, True, False],
            5.0,
            "singular",
        ),
        ([[0.0, 0.0, 0.0]], 1e-4 * np.eye(3), [True] * 3, 5.0, "more than 100 of its images"),
        ([[0.0, 0.0, 1e17]], np.eye(3), [True] * 3, 5.0, "atom 0 lies 1e.17 cell vectors 2 away"),
        ([[0.0, 0.0, 0.0]], np.eye(3), [True] * 3, -1.0, "cutoff must be a positive"),
        ([[0.0, 0.0, 0.0]], np.eye(3), [True] * 3, float("nan"), "cutoff must be a positive"),
    ],
)
def test_kernel_neighbor_list_rejects_bad_input(positions, cell, pbc, cutoff, message):
    with pytest.raises(RuntimeError, match=message):
        _kernel_edges(np.array(positions), np.array(cell, dtype=float), pbc, cutoff)
