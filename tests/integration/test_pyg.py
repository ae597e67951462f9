"""PyTorch Geometric bridge: conversions both ways, errors, batched evaluation, nequip-train."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from nequip.data import AtomicDataDict, compute_neighborlist_, from_ase
from nequip.utils.global_state import set_global_state

from reann_nequip.integrations import pyg as pyg_bridge

from ..utils import REPO_ROOT, model_input, randomize_parameters, run_nequip_train

TYPE_NAMES = ["H", "C", "N", "O"]
R_MAX = 3.0

needs_pyg = pytest.mark.skipif(
    importlib.util.find_spec("torch_geometric") is None,
    reason="torch-geometric not installed (pip install reann-nequip[pyg])",
)


@pytest.fixture(scope="module", autouse=True)
def global_state():
    set_global_state()


def _molecules(num_molecules=6, **kwargs):
    from ..pyg_fixtures import TinyMolecules

    dataset = TinyMolecules(num_molecules=num_molecules, **kwargs)
    return [dataset[i] for i in range(len(dataset))]


def _batch(molecules):
    from torch_geometric.data import Batch

    return Batch.from_data_list(molecules)


def _edge_set(edge_index, edge_cell_shift=None):
    shifts = (
        [(0, 0, 0)] * edge_index.shape[1]
        if edge_cell_shift is None
        else [tuple(int(round(x)) for x in s) for s in edge_cell_shift.tolist()]
    )
    return set(zip(edge_index[0].tolist(), edge_index[1].tolist(), shifts))


# === imports ===


def test_core_package_never_imports_torch_geometric():
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "scripts" / "imported_modules.py")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]", result.stdout


def test_missing_torch_geometric_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_geometric", None)
    monkeypatch.setitem(sys.modules, "torch_geometric.data", None)
    with pytest.raises(ImportError, match=r"pip install reann-nequip\[pyg\]"):
        pyg_bridge.pyg_to_atomic_data(object(), TYPE_NAMES, R_MAX)


# === conversions ===


@needs_pyg
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_pyg_nequip_pyg_preserves_every_field(dtype):
    batch = _batch(_molecules(dtype=dtype, edge_cutoff=R_MAX))
    data = pyg_bridge.pyg_to_atomic_data(batch, TYPE_NAMES, R_MAX, edges_cutoff=R_MAX)
    assert data[AtomicDataDict.TOTAL_ENERGY_KEY].shape == (batch.num_graphs, 1)
    assert data[pyg_bridge.POLARIZABILITY_KEY].shape == (batch.num_graphs, 3, 3)
    back = pyg_bridge.atomic_data_to_pyg(data)

    # `y` is not in the field map (it is read only through a column mapping, tested below)
    assert set(back.keys()) == set(batch.keys()) - {"y"}
    for key in back.keys():
        original = batch[key]
        # floats come back in nequip's float64; float32 → float64 is exact
        expected = original.to(torch.float64) if original.is_floating_point() else original
        assert back[key].dtype == expected.dtype, key
        assert torch.equal(back[key], expected), key


@needs_pyg
def test_round_trip_keeps_cell_and_pbc_and_gives_nequip_periodic_edges():
    molecules = _molecules(num_molecules=3, dtype="float64")
    for molecule in molecules:
        molecule.cell = torch.diag(torch.tensor([4.0, 4.5, 5.0], dtype=torch.float64))[None]
        molecule.pbc = torch.tensor([[True, True, False]])
    batch = _batch(molecules)
    back = pyg_bridge.atomic_data_to_pyg(pyg_bridge.pyg_to_atomic_data(batch, TYPE_NAMES, R_MAX))

    for key in set(batch.keys()) - {"y"}:
        assert torch.equal(back[key], batch[key]), key
    for g, molecule in enumerate(molecules):
        atoms = Atoms(
            numbers=molecule.z.numpy(),
            positions=molecule.pos.numpy(),
            cell=molecule.cell[0].numpy(),
            pbc=molecule.pbc[0].numpy(),
        )
        reference = compute_neighborlist_(from_ase(atoms), R_MAX)
        frame = back.get_example(g)
        # PyG rows are (neighbour, centre): flip to compare with nequip's (centre, neighbour)
        assert _edge_set(frame.edge_index.flip(0), frame.edge_cell_shift) == _edge_set(
            reference[AtomicDataDict.EDGE_INDEX_KEY],
            reference[AtomicDataDict.EDGE_CELL_SHIFT_KEY],
        )


@needs_pyg
def test_round_trip_nequip_pyg_nequip_preserves_every_field():
    frames = []
    for molecule in _molecules(num_molecules=4, dtype="float64"):
        atoms = Atoms(numbers=molecule.z.numpy(), positions=molecule.pos.numpy())
        atoms.calc = SinglePointCalculator(
            atoms, energy=float(molecule.energy), forces=molecule.forces.numpy()
        )
        frames.append(model_input(atoms, TYPE_NAMES, R_MAX))
    data = AtomicDataDict.batched_from_list(frames)

    again = pyg_bridge.pyg_to_atomic_data(
        pyg_bridge.atomic_data_to_pyg(data), TYPE_NAMES, R_MAX, edges_cutoff=R_MAX
    )
    assert set(again) == set(data)
    for key, value in data.items():
        assert again[key].dtype == value.dtype, key
        assert torch.equal(again[key], value), key


@needs_pyg
def test_single_molecule_gives_unbatched_dict_and_back_a_data():
    from torch_geometric.data import Batch, Data

    molecule = _molecules(num_molecules=1)[0]
    data = pyg_bridge.pyg_to_atomic_data(molecule, TYPE_NAMES, R_MAX)
    assert AtomicDataDict.BATCH_KEY not in data
    back = pyg_bridge.atomic_data_to_pyg(data)
    assert isinstance(back, Data) and not isinstance(back, Batch)
    assert torch.equal(back.pos, molecule.pos.double())


@needs_pyg
def test_field_names_and_target_columns_are_configurable():
    molecules = _molecules(num_molecules=3)
    reference = pyg_bridge.pyg_to_atomic_data(_batch(molecules), TYPE_NAMES, R_MAX)
    for molecule in molecules:  # PyG's MD17 names forces `force`; QM9 keeps targets in `y`
        molecule.force = molecule.forces
        del molecule.forces, molecule.energy
    renamed = pyg_bridge.pyg_to_atomic_data(
        _batch(molecules),
        TYPE_NAMES,
        R_MAX,
        fields={"forces": "force", "total_energy": ["y", 1], "total_dipole": None},
    )
    assert pyg_bridge.TOTAL_DIPOLE_KEY not in renamed
    for key in (AtomicDataDict.FORCE_KEY, AtomicDataDict.TOTAL_ENERGY_KEY):
        assert torch.equal(renamed[key], reference[key]), key

    with pytest.raises(ValueError, match="cannot be written back"):
        pyg_bridge.atomic_data_to_pyg(renamed, fields={"total_energy": ["y", 1]})
    with pytest.raises(ValueError, match="unknown nequip fields"):
        pyg_bridge.pyg_to_atomic_data(molecules[0], TYPE_NAMES, R_MAX, fields={"energy": "y"})
    with pytest.raises(ValueError, match="per-molecule scalar"):
        pyg_bridge.pyg_to_atomic_data(molecules[0], TYPE_NAMES, R_MAX, fields={"forces": ["y", 0]})


# === neighbour lists ===


@needs_pyg
@pytest.mark.parametrize("edges_cutoff", [None, 2.0], ids=["no_flag", "other_cutoff"])
def test_pyg_edges_are_recomputed_unless_built_with_r_max(edges_cutoff):
    batch = _batch(_molecules(edge_cutoff=2.0))  # a smaller graph, as a bond graph would be
    data = pyg_bridge.pyg_to_atomic_data(batch, TYPE_NAMES, R_MAX, edges_cutoff=edges_cutoff)
    nequip_list = compute_neighborlist_(
        {k: v for k, v in data.items() if k != AtomicDataDict.EDGE_INDEX_KEY}, R_MAX
    )
    assert _edge_set(data[AtomicDataDict.EDGE_INDEX_KEY]) == _edge_set(
        nequip_list[AtomicDataDict.EDGE_INDEX_KEY]
    )
    assert data[AtomicDataDict.EDGE_INDEX_KEY].shape[1] > batch.edge_index.shape[1]


@needs_pyg
@pytest.mark.parametrize("defect", ["missing", "repeated", "too_long", "self_loop"])
def test_reused_edges_are_verified(defect):
    molecules = _molecules(edge_cutoff=R_MAX)
    edge_index = molecules[3].edge_index
    if defect == "missing":
        molecules[3].edge_index = edge_index[:, 1:]
    elif defect == "repeated":
        # the first edge replaced by a copy of the second: the count alone would not notice
        molecules[3].edge_index = torch.cat([edge_index[:, 1:2], edge_index[:, 1:]], dim=1)
    elif defect == "too_long":
        # the last atom's edges (it has some: it was placed near an earlier atom) now exceed r_max
        molecules[3].pos[-1] += 10.0
    elif defect == "self_loop":
        molecules[3].edge_index = torch.cat([edge_index, torch.tensor([[0], [0]])], dim=1)
    else:
        raise ValueError(defect)
    with pytest.raises(ValueError, match="molecule 3") as error:
        pyg_bridge.pyg_to_atomic_data(_batch(molecules), TYPE_NAMES, R_MAX, edges_cutoff=R_MAX)
    assert "edges_cutoff" in str(error.value)


# === errors ===


@needs_pyg
def test_unknown_element_names_element_and_molecule():
    molecules = _molecules()
    molecules[2].z[1] = 17
    with pytest.raises(ValueError, match=r"\['Cl'\] in molecule 2 \(atom\(s\) \[1\]\)"):
        pyg_bridge.pyg_to_atomic_data(_batch(molecules), TYPE_NAMES, R_MAX)


@needs_pyg
def test_empty_molecule_and_non_finite_positions_name_the_molecule():
    from torch_geometric.data import Data

    molecules = _molecules(num_molecules=3)
    bare = [Data(pos=m.pos, z=m.z) for m in molecules]
    empty = Data(pos=torch.zeros((0, 3)), z=torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"molecule\(s\) \[1\] have no atoms"):
        pyg_bridge.pyg_to_atomic_data(_batch([bare[0], empty, bare[1]]), TYPE_NAMES, R_MAX)
    with pytest.raises(ValueError, match="have no atoms"):
        pyg_bridge.pyg_to_atomic_data(empty, TYPE_NAMES, R_MAX)

    molecules[2].pos[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"molecule 2 has non-finite positions \(atom 1"):
        pyg_bridge.pyg_to_atomic_data(_batch(molecules), TYPE_NAMES, R_MAX)


@needs_pyg
def test_malformed_inputs_name_what_is_wrong():
    molecule = _molecules(num_molecules=1)[0]
    with pytest.raises(ValueError, match="element symbols"):
        pyg_bridge.pyg_to_atomic_data(molecule, ["H", "my_C"], R_MAX)
    with pytest.raises(ValueError, match="no `atomic_number` attribute"):
        pyg_bridge.pyg_to_atomic_data(
            molecule, TYPE_NAMES, R_MAX, fields={"atomic_numbers": "atomic_number"}
        )
    bad = molecule.clone()
    bad.dipole = torch.zeros(1, 4)
    with pytest.raises(ValueError, match=r"`dipole` \(total_dipole\) must hold 3 number"):
        pyg_bridge.pyg_to_atomic_data(bad, TYPE_NAMES, R_MAX)
    bad = molecule.clone()
    bad.cell = torch.eye(3)[None] * 5.0
    with pytest.raises(ValueError, match="without `pbc`"):
        pyg_bridge.pyg_to_atomic_data(bad, TYPE_NAMES, R_MAX)


# === data module ===


@needs_pyg
def test_datamodule_splits_and_errors_name_the_dataset_index():
    from reann_nequip.data.pyg_datamodule import PyGAtomicDataset, PyGDataModule

    module = PyGDataModule(
        seed=1,
        type_names=TYPE_NAMES,
        r_max=R_MAX,
        split_dataset={
            "dataset": {"_target_": "tests.pyg_fixtures.TinyMolecules", "num_molecules": 10},
            "train": 6,
            "val": 2,
            "test": 2,
        },
    )
    module.setup("fit")
    module.setup("test")
    sizes = [len(d[0]) for d in (module.train_dataset, module.val_dataset, module.test_dataset)]
    assert sizes == [6, 2, 2]
    frame = module.train_dataset[0][0]
    assert AtomicDataDict.EDGE_INDEX_KEY in frame and AtomicDataDict.ATOM_TYPE_KEY in frame
    batch = next(iter(module.train_dataloader()))
    assert AtomicDataDict.num_frames(batch) == 1  # the default DataLoader batch size

    molecules = _molecules(num_molecules=5)
    molecules[4].z[0] = 9
    dataset = PyGAtomicDataset(molecules, TYPE_NAMES, R_MAX)
    assert dataset.num_atoms([0, 4]) == [molecules[0].num_nodes, molecules[4].num_nodes]
    with pytest.raises(ValueError, match=r"\['F'\] in molecule 4"):
        dataset[[1, 4]]


# === evaluation ===


@needs_pyg
@pytest.mark.parametrize("model_dtype", ["float32", "float64"])
def test_batched_pyg_evaluation_equals_per_molecule_and_nequip_ase_path(model_dtype):
    from torch_geometric.data import Data

    from reann_nequip.model import ReannModel

    tol = {"float32": 5e-5, "float64": 1e-10}[model_dtype]
    model = ReannModel(
        seed=7,
        model_dtype=model_dtype,
        type_names=TYPE_NAMES,
        r_max=R_MAX,
        num_gaussians=3,
        l_max=2,
        num_recursions=1,
        energy_network={"hidden": [8]},
        coefficient_network={"hidden": [8]},
    )
    randomize_parameters(model, seed=3)
    model.eval()
    # with an isolated atom: a molecule without edges
    isolated = Data(pos=torch.zeros((1, 3), dtype=torch.float32), z=torch.tensor([8]))
    molecules = _molecules(num_molecules=5) + [isolated]
    batch = _batch([Data(pos=m.pos, z=m.z) for m in molecules])

    with torch.no_grad():  # forces must still come out
        batched = pyg_bridge.evaluate_pyg_batch(model, batch)
    assert batched["energy"].shape == (batch.num_graphs,)
    assert batched["forces"].shape == (batch.num_nodes, 3)
    assert float(batched["forces"].abs().max()) > 1e-3  # the perturbed model is not trivial

    singles = [pyg_bridge.evaluate_pyg_batch(model, m) for m in molecules]
    energies = torch.cat([s["energy"] for s in singles])
    forces = torch.cat([s["forces"] for s in singles])
    torch.testing.assert_close(batched["energy"], energies, rtol=0, atol=tol)
    torch.testing.assert_close(batched["forces"], forces, rtol=0, atol=tol)

    # the same molecules through nequip's own ASE path
    for g, molecule in enumerate(molecules):
        atoms = Atoms(numbers=molecule.z.numpy(), positions=molecule.pos.double().numpy())
        out = model(model_input(atoms, TYPE_NAMES, R_MAX))
        torch.testing.assert_close(
            batched["energy"][g : g + 1],
            out[AtomicDataDict.TOTAL_ENERGY_KEY].detach().view(-1),
            rtol=0,
            atol=tol,
        )


# === nequip-train from YAML ===


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pyg_run")
    result = run_nequip_train(
        "-cd",
        str(REPO_ROOT / "tests" / "configs"),
        "-cn",
        "pyg_tiny",
        f"hydra.run.dir={run_dir}",
        python_path=True,
    )
    return run_dir, result.stdout + result.stderr


@needs_pyg
@pytest.mark.slow
def test_pyg_dataset_trains_from_yaml_and_checkpoint_evaluates_on_a_batch(trained_run):
    from nequip.model import ModelFromCheckpoint

    run_dir, report = trained_run
    assert (run_dir / "best.ckpt").is_file() and (run_dir / "last.ckpt").is_file()
    assert "test0_epoch/forces_rmse" in report, report[-3000:]

    model = ModelFromCheckpoint(str(run_dir / "best.ckpt"))
    model.eval()
    batch = _batch(_molecules(num_molecules=20))
    out = pyg_bridge.evaluate_pyg_batch(model, batch)
    assert out["energy"].shape == (20,) and out["forces"].shape == (batch.num_nodes, 3)
    assert bool(torch.isfinite(out["energy"]).all()) and bool(torch.isfinite(out["forces"]).all())


@needs_pyg
@pytest.mark.slow
def test_packaged_model_evaluates_on_a_batch_like_its_checkpoint(trained_run, tmp_path):
    from nequip.model import ModelFromCheckpoint, ModelFromPackage

    run_dir, _ = trained_run
    package = tmp_path / "pyg_tiny.nequip.zip"
    bin_dir = os.path.dirname(sys.executable)
    subprocess.run(
        [
            os.path.join(bin_dir, "nequip-package"),
            "build",
            str(run_dir / "best.ckpt"),
            str(package),
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        check=True,
        capture_output=True,
        timeout=600,
    )
    batch = _batch(_molecules(num_molecules=6))
    results = []
    for model in (ModelFromCheckpoint(str(run_dir / "best.ckpt")), ModelFromPackage(str(package))):
        model.eval()
        results.append(pyg_bridge.evaluate_pyg_batch(model, batch))
    for key in ("energy", "forces"):
        torch.testing.assert_close(results[1][key], results[0][key], rtol=0, atol=1e-10)
