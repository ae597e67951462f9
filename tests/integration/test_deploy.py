"""The deployed TorchScript file gives the trained model's energies, forces and virial."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.io import read
from nequip.data import AtomicDataDict
from nequip.utils.global_state import set_global_state

from reann_nequip.deploy import DeployedEnergyModel, deploy, read_metadata, save_deployed
from reann_nequip.deploy.kernels import load_deployed_file
from reann_nequip.integrations.ase import ReannCalculator
from reann_nequip.nn import KernelStage

from ..utils import REPO_ROOT, model_input, tiny_model, with_unknown_kernel

TYPE_NAMES = ["O", "H"]
R_MAX = 3.5
CH4_DATA = REPO_ROOT / "examples" / "ch4" / "ch4_b3lyp_augccpvdz.xyz"


@pytest.fixture(scope="module", autouse=True)
def global_state():
    set_global_state()


def water_model(model_dtype="float64", num_recursions=2, cpu_kernels=True):
    return tiny_model(
        type_names=TYPE_NAMES,
        r_max=R_MAX,
        num_recursions=num_recursions,
        model_dtype=model_dtype,
        cpu_kernels=cpu_kernels,
    )


def triclinic_frame(seed=3):
    rng = np.random.default_rng(seed)
    cell = np.array([[4.6, 0.0, 0.0], [0.9, 4.3, 0.0], [-0.7, 0.5, 4.9]])
    return Atoms("OH2OH2", positions=rng.uniform(0.0, 1.0, (6, 3)) @ cell, cell=cell, pbc=True)


def deployed_inputs(data):
    shift = data[AtomicDataDict.EDGE_CELL_SHIFT_KEY] @ data[AtomicDataDict.CELL_KEY].view(3, 3)
    return (
        data[AtomicDataDict.POSITIONS_KEY],
        data[AtomicDataDict.ATOM_TYPE_KEY].view(-1),
        data[AtomicDataDict.EDGE_INDEX_KEY],
        shift,
    )


@pytest.mark.parametrize("model_dtype, tol", [("float64", 1e-12), ("float32", 1e-5)])
def test_deployed_file_equals_model_energies_forces_virial(tmp_path, model_dtype, tol):
    model = water_model(model_dtype, cpu_kernels=False)
    path = str(tmp_path / "model.pth")
    metadata = save_deployed(model, path)
    assert metadata["num_recursions"] == "2" and metadata["interaction_range"] == repr(3 * R_MAX)
    deployed = load_deployed_file(path)
    # the deployed file runs the C++ kernels, also for a model built with its torch form,
    # which is left as it is; frozen, its graph holds them inline
    graph = str(deployed.inlined_graph)
    for op in ("orbital_gram", "radial_functions", "element_networks"):
        assert f"reann::{op}" in graph, op
    assert not any(stage.kernels for stage in model.modules() if isinstance(stage, KernelStage))
    data = model_input(triclinic_frame(), TYPE_NAMES, R_MAX)
    reference = model(dict(data))
    # the third call runs the graph the TorchScript executor optimised after profiling two
    for _ in range(3):
        atomic_energy, forces, virial = deployed(*deployed_inputs(data), 6)
    # float64 at the interface whatever the model dtype
    assert atomic_energy.dtype == forces.dtype == virial.dtype == torch.float64
    # pair_reann and ReannCalculator run it as plain autograd ops (the executor's optimisation
    # off): the same numbers
    with torch.jit.optimized_execution(False):
        plain = deployed(*deployed_inputs(data), 6)
    for name, expected, actual in zip(
        ("energies", "forces", "virial"), (atomic_energy, forces, virial), plain
    ):
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=tol * 1e-3, msg=name)
    np.testing.assert_allclose(
        atomic_energy.numpy(),
        reference[AtomicDataDict.PER_ATOM_ENERGY_KEY].view(-1).detach().numpy(),
        rtol=tol,
    )
    np.testing.assert_allclose(
        forces.numpy(), reference[AtomicDataDict.FORCE_KEY].detach().numpy(), atol=tol * 10
    )
    np.testing.assert_allclose(
        virial.numpy(),
        reference[AtomicDataDict.VIRIAL_KEY].view(3, 3).detach().numpy(),
        atol=tol * 10,
    )


def test_ghost_shell_form_equals_periodic_images():
    """Explicit image atoms with zero shifts (LAMMPS on several ranks) give the local energy,
    forces whose owner sums equal the periodic forces, and the same virial."""
    num_recursions = 2
    model = water_model(num_recursions=num_recursions)
    deployed = DeployedEnergyModel(model.model.func)
    atoms = triclinic_frame()
    data = model_input(atoms, TYPE_NAMES, R_MAX)
    periodic = deployed(*deployed_inputs(data), len(atoms))

    # images within (T + 1) r_max of the cell, local atoms first
    cell = atoms.cell.array
    local = atoms.get_positions()
    shell = (num_recursions + 1) * R_MAX
    images, owners = [], []
    for n in np.ndindex(7, 7, 7):
        offset = (np.array(n) - 3) @ cell
        if not any(n != np.array([3, 3, 3])):
            continue
        for i, position in enumerate(local + offset):
            fractional = np.linalg.solve(cell.T, position)
            distance_to_cell = np.linalg.norm(
                position - np.clip(fractional, 0, 1) @ cell
            )  # conservative: an upper bound on the distance for this cell
            if distance_to_cell < shell + 5.0:
                images.append(position)
                owners.append(i)
    positions = np.concatenate([local, np.array(images)])
    owners = np.concatenate([np.arange(len(atoms)), owners])
    numbers = atoms.numbers[owners]
    cluster = Atoms(numbers=numbers, positions=positions, pbc=False)
    cluster_data = model_input(cluster, TYPE_NAMES, R_MAX)
    atomic_energy, forces, virial = deployed(*deployed_inputs(cluster_data), len(atoms))

    np.testing.assert_allclose(atomic_energy[: len(atoms)], periodic[0], rtol=1e-12)
    owner_forces = np.zeros((len(atoms), 3))
    np.add.at(owner_forces, owners, forces.numpy())
    np.testing.assert_allclose(owner_forces, periodic[1].numpy(), atol=1e-12)
    np.testing.assert_allclose(virial.numpy(), periodic[2].numpy(), atol=1e-12)


def test_ase_calculator_matches_finite_differences(tmp_path):
    path = str(tmp_path / "model.pth")
    save_deployed(water_model(), path)
    atoms = triclinic_frame()
    atoms.calc = ReannCalculator(path)
    forces = atoms.get_forces()
    np.testing.assert_allclose(
        forces, atoms.calc.calculate_numerical_forces(atoms, 1e-5), atol=1e-8
    )
    stress = atoms.get_stress()
    np.testing.assert_allclose(
        stress, atoms.calc.calculate_numerical_stress(atoms, 1e-6), atol=1e-9
    )
    assert abs(atoms.get_potential_energies().sum() - atoms.get_potential_energy()) < 1e-10
    assert np.abs(forces).max() > 1e-3, "the perturbed model must give forces"


def test_ase_calculator_rejects_bad_input(tmp_path):
    path = str(tmp_path / "model.pth")
    save_deployed(water_model(), path)
    calc = ReannCalculator(path)
    atoms = triclinic_frame()
    atoms[2].symbol = "C"
    with pytest.raises(ValueError, match="atom 2 is C"):
        calc.get_potential_energy(atoms)
    atoms = triclinic_frame()
    atoms.positions[4, 1] = np.nan
    with pytest.raises(ValueError, match="atom 4 has a non-finite position"):
        calc.get_potential_energy(atoms)
    atoms = triclinic_frame()
    atoms.positions[5] = atoms.positions[1] + 0.01
    with pytest.raises(ValueError, match="atoms .* apart"):
        calc.get_potential_energy(atoms)
    atoms = triclinic_frame()
    atoms.cell[2] = atoms.cell[0] + atoms.cell[1]
    with pytest.raises(ValueError, match="singular"):
        calc.get_potential_energy(atoms)


def test_ase_calculator_block_cache_gives_the_same_results(tmp_path):
    """memory="keep" changes torch's allocator process-wide and for good: its own process."""
    path = str(tmp_path / "model.pth")
    save_deployed(water_model(), path)
    # 3,072 atoms: some of the model's tensors are blocks of 1 MiB and more, which the cache keeps
    triclinic_frame().repeat((8, 8, 8)).write(tmp_path / "frame.extxyz")
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "tests" / "scripts" / "calculator_memory.py"),
            path,
            str(tmp_path / "frame.extxyz"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with pytest.raises(ValueError, match="memory must be"):
        ReannCalculator(path, memory="lots")


def test_metadata_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="not a TorchScript file"):
        read_metadata(str(tmp_path / "missing.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="garbage.pth"):
        ReannCalculator(str(garbage))
    other = tmp_path / "other.pth"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(other))
    with pytest.raises(ValueError, match="not a reann_nequip deployed model"):
        read_metadata(str(other))
    deployed = tmp_path / "water.pth"
    save_deployed(water_model(), str(deployed))
    stale = with_unknown_kernel(deployed, tmp_path / "stale.pth")
    with pytest.raises(ValueError, match="stale.pth` calls a kernel that this reann_nequip's"):
        read_metadata(str(stale))
    with pytest.raises(FileNotFoundError, match="no checkpoint or package"):
        deploy(str(tmp_path / "missing.ckpt"), str(tmp_path / "out.pth"))


# === from a real training run: checkpoint (EMA weights) and package ===


def _nequip_tool(name, *args):
    bin_dir = os.path.dirname(sys.executable)
    return subprocess.run(
        [os.path.join(bin_dir, name), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
def test_nequip_deploy_from_checkpoint_and_package(ch4_checkpoint, tmp_path):
    from nequip.model.saved_models.load_utils import load_saved_model

    checkpoint = str(ch4_checkpoint)
    frames = [Atoms(a.numbers, a.positions) for a in read(str(CH4_DATA), ":5")]
    # the checkpoint's evaluation model carries the EMA weights
    reference = load_saved_model(checkpoint)
    expected = [
        reference(model_input(atoms, ["C", "H"], 4.0))[AtomicDataDict.TOTAL_ENERGY_KEY].item()
        for atoms in frames
    ]

    deployed_files = {}
    for dtype in ("float32", "float64"):
        out = tmp_path / f"ch4_{dtype}.pth"
        result = _nequip_tool("nequip-deploy", "build", checkpoint, str(out), "--dtype", dtype)
        assert result.returncode == 0, result.stderr[-3000:]
        info = _nequip_tool("nequip-deploy", "info", str(out))
        assert f"model_dtype           {dtype}" in info.stdout, info.stdout
        deployed_files[dtype] = out

    package = tmp_path / "ch4.nequip.zip"
    result = _nequip_tool("nequip-package", "build", checkpoint, str(package))
    assert result.returncode == 0, result.stderr[-3000:]
    # the package keeps the portable torch form; nequip's modifier switches its kernels on
    from nequip.model import modify

    packaged = load_saved_model(str(package))
    assert not any(m.kernels for m in packaged.modules() if isinstance(m, KernelStage))
    packaged = modify(packaged, [{"modifier": "enable_ReannKernels"}])
    assert all(m.kernels for m in packaged.modules() if isinstance(m, KernelStage))
    energy = packaged(model_input(frames[0], ["C", "H"], 4.0))[AtomicDataDict.TOTAL_ENERGY_KEY]
    np.testing.assert_allclose(energy.item(), expected[0], rtol=1e-10)
    from_package = tmp_path / "ch4_package.pth"
    result = _nequip_tool("nequip-deploy", "build", str(package), str(from_package))
    assert result.returncode == 0, result.stderr[-3000:]
    refused = _nequip_tool(
        "nequip-deploy", "build", str(package), str(tmp_path / "x.pth"), "--dtype", "float64"
    )
    assert refused.returncode == 2 and "Deploy its checkpoint instead" in refused.stderr

    for name, path, tol in (
        ("float32", deployed_files["float32"], 1e-6),
        ("float64 rebuild", deployed_files["float64"], 1e-5),
        ("package", from_package, 1e-6),
    ):
        calc = ReannCalculator(str(path))
        energies = [calc.get_potential_energy(atoms) for atoms in frames]
        np.testing.assert_allclose(energies, expected, rtol=tol, err_msg=name)


def test_coefficient_exchange_stages_equal_periodic_model():
    """The stage-by-stage algorithm of ``pair_style reann exchange``, done here with explicit
    periodic images as ghosts: ghosts within r_max only, coefficients copied owner → ghost after
    every step, gradients on ghost coefficients added to their owners before the step back."""
    num_recursions = 3
    model = water_model(num_recursions=num_recursions)
    deployed = torch.jit.script(DeployedEnergyModel(model.model.func))
    atoms = triclinic_frame()
    num_local = len(atoms)
    data = model_input(atoms, TYPE_NAMES, R_MAX)
    energies, periodic_forces, periodic_virial = deployed(*deployed_inputs(data), num_local)

    # ghosts: every image within r_max of a local atom; edges centred on local atoms only
    edge_index = data[AtomicDataDict.EDGE_INDEX_KEY]
    shifts = deployed_inputs(data)[3].numpy()
    local = atoms.get_positions()
    ghost_of = {}
    centers, neighbors = [], []
    for center, neighbor, shift in zip(*edge_index.numpy(), shifts):
        if not shift.any():
            node = neighbor
        else:
            key = (int(neighbor), *np.round(shift, 8))
            node = ghost_of.setdefault(key, num_local + len(ghost_of))
        centers.append(center)
        neighbors.append(node)
    owners = np.concatenate([np.arange(num_local), [key[0] for key in ghost_of]]).astype(int)
    ghost_positions = [local[key[0]] + np.array(key[1:]) for key in ghost_of]
    positions = torch.tensor(np.concatenate([local, ghost_positions]), requires_grad=True)
    atom_types = data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)[owners]
    edges = torch.tensor([centers, neighbors])
    owner_index = torch.from_numpy(owners)

    def to_ghosts(local_values):  # forward communication
        return local_values.index_select(0, owner_index)

    def to_owners(all_values):  # reverse communication
        return torch.zeros(num_local, all_values.shape[1], dtype=all_values.dtype).index_add_(
            0, owner_index, all_values
        )

    # === forward, one stage at a time ===
    geometry, radial, neighbor_blocks = deployed.exchange_geometry(
        positions, atom_types, edges, num_local
    )
    geometry_leaf = geometry.detach().requires_grad_(True)
    radial_leaf = radial.detach().requires_grad_(True)
    coefficients = deployed.exchange_initial_coefficients(atom_types)
    leaves, outputs = [], []
    for step in range(num_recursions):
        leaf = coefficients.detach().requires_grad_(True)
        local_next = deployed.exchange_step(
            step, geometry_leaf, radial_leaf, neighbor_blocks, leaf, atom_types
        )
        leaves.append(leaf)
        outputs.append(local_next)
        coefficients = to_ghosts(local_next.detach())
    leaf = coefficients.detach().requires_grad_(True)
    atomic_energy = deployed.exchange_energy(
        geometry_leaf, radial_leaf, neighbor_blocks, leaf, atom_types
    )
    np.testing.assert_allclose(atomic_energy.detach(), energies, rtol=1e-12)

    # === backward, stage by stage ===
    grad_coefficients, grad_geometry, grad_radial = torch.autograd.grad(
        atomic_energy.sum(), [leaf, geometry_leaf, radial_leaf]
    )
    for step in reversed(range(num_recursions)):
        grads = torch.autograd.grad(
            outputs[step],
            [leaves[step], geometry_leaf, radial_leaf],
            grad_outputs=to_owners(grad_coefficients),
            allow_unused=True,
        )
        grad_coefficients = grads[0]
        grad_geometry = grad_geometry + grads[1]
        grad_radial = grad_radial + grads[2]
    (grad_positions,) = torch.autograd.grad(
        [geometry, radial], [positions], grad_outputs=[grad_geometry, grad_radial]
    )
    forces = -grad_positions.detach()
    np.testing.assert_allclose(to_owners(forces), periodic_forces, atol=1e-12)
    # LAMMPS' fdotr virial over local and ghost atoms, before ghost forces go to their owners
    virial = positions.detach().T @ forces
    np.testing.assert_allclose(0.5 * (virial + virial.T), periodic_virial, atol=1e-12)
