"""Committees of deployed models: pair_style reann's model deviation equals numpy over the
individual models (1, 2 and 4 ranks; images, exchange and shell modes), the ASE committee equals
the individual calculators, files that cannot form a committee are refused naming what differs,
the deviation file reads as DP-GEN reads it, and `reann-nequip select` picks exactly the frames
in its window."""

import re

import ase.io
import numpy as np
import pytest
from ase import Atoms

from reann_nequip.cli import main as cli_main
from reann_nequip.deploy import DEVIATION_COLUMNS, read_deviation_file, save_deployed
from reann_nequip.integrations.ase import ReannCalculator

from ..utils import tiny_model
from .test_lammps import SYSTEMS, _error_of, lammps_results, run_lammps, triclinic_water

COMMITTEE_SIZE = 3
# dumps of positions and per-atom deviation, at the steps of the deviation file
DEVIATION_DUMP = """fix devi all pair {every} reann devi_f 1
dump traj all custom {every} traj.dump id type x y z f_devi
dump_modify traj sort id format float %.17g
"""


def deployed_committee(directory, type_names, num_recursions=2, size=COMMITTEE_SIZE, **options):
    """``size`` deployed models that differ only in their weights; ``options`` (r_max,
    model_dtype, ...) go to :func:`tiny_model`, ``units`` to the deployment."""
    units = options.pop("units", "metal")
    paths = []
    for member in range(size):
        model = tiny_model(
            type_names=type_names,
            num_recursions=num_recursions,
            seed=7,
            perturbation_seed=30 + member,
            per_type_energy_shifts={name: -float(i + 1) for i, name in enumerate(type_names)},
            **options,
        )
        path = directory / f"member{member}_{'_'.join(type_names)}_T{num_recursions}.pth"
        save_deployed(model, str(path), units=units)
        paths.append(path)
    return paths


def individual_results(atoms, committee):
    """Energies [M] (eV), forces [M, N, 3] (eV/Å) and virials [M, 3, 3] (eV) of each model of
    ``committee``, each by its own calculator."""
    energies, forces, virials = [], [], []
    for path in committee:
        frame = atoms.copy()
        frame.calc = ReannCalculator(str(path))
        energies.append(frame.get_potential_energy())
        forces.append(frame.get_forces())
        virials.append(-frame.get_stress(voigt=False) * frame.get_volume())
    return np.array(energies), np.array(forces), np.array(virials)


def numpy_deviation(energies, forces, virials):
    """DeePMD's model deviation (deepmd/infer/model_devi.py), written out with numpy: the row
    max/min/avg_devi_v, max/min/avg_devi_f, devi_e [7] and the per-atom force deviation [N]."""
    num_atoms = forces.shape[1]
    atom_deviation = np.linalg.norm(np.std(forces, axis=0), axis=-1)
    virial_deviation = np.std(virials.reshape(len(virials), 9) / num_atoms, axis=0)
    row = [
        virial_deviation.max(),
        virial_deviation.min(),
        np.linalg.norm(virial_deviation) / 3,
        atom_deviation.max(),
        atom_deviation.min(),
        atom_deviation.mean(),
        np.std(energies / num_atoms),
    ]
    return np.array(row), atom_deviation


def committee_run(workdir, atoms, committee, elements, every, steps, nprocs=1, mode="auto", **kw):
    """LAMMPS MD on ``atoms`` with the committee: the deviation file and a dump of positions and
    per-atom deviation every ``every`` steps; returns the file's rows and the dump's frames."""
    result = run_lammps(
        workdir,
        atoms,
        " ".join(str(path) for path in committee),
        elements,
        nprocs=nprocs,
        pair_style=f"reann mode {mode} out_freq {every} out_file devi.out",
        commands=DEVIATION_DUMP.format(every=every)
        + "velocity all create 300 4928459 mom yes rot yes\n"
        + f"timestep 0.0005\nfix nve all nve\nrun {steps}",
        **kw,
    )
    assert result.returncode == 0, (workdir / "log.lammps").read_text()[-3000:] + result.stderr
    frames = ase.io.read(workdir / "traj.dump", ":", format="lammps-dump-text", specorder=elements)
    return np.loadtxt(workdir / "devi.out", ndmin=2), frames


def assert_deviation_matches_numpy(rows, frames, committee):
    """Every row of the deviation file and every dumped per-atom deviation equals numpy over the
    individual models at the dumped positions."""
    assert [frame.info["timestep"] for frame in frames] == rows[:, 0].astype(int).tolist()
    for row, frame in zip(rows, frames):
        expected_row, expected_atoms = numpy_deviation(*individual_results(frame, committee))
        np.testing.assert_allclose(
            row[1:], expected_row, rtol=1e-8, atol=1e-13, err_msg=f"step {row[0]:.0f}"
        )
        np.testing.assert_allclose(
            frame.arrays["f_devi"], expected_atoms, rtol=1e-8, atol=1e-13, err_msg="dump f_devi"
        )


def test_lammps_deviation_equals_numpy_over_the_models_on_one_rank(tmp_path):
    atoms = triclinic_water()
    committee = deployed_committee(tmp_path, ["O", "H"])
    rows, frames = committee_run(tmp_path / "run", atoms, committee, ["O", "H"], every=2, steps=4)
    assert len(rows) == 3 and rows[:, 4].min() > 0.0
    assert_deviation_matches_numpy(rows, frames, committee)


@pytest.mark.slow
@pytest.mark.parametrize(
    "system, nprocs, mode, processors",
    [
        ("water_192", 2, "exchange", "2 1 1"),
        # subdomains 3.1 Å thick, thinner than r_max
        ("water_192", 4, "exchange", "4 1 1"),
        ("water_192", 4, "shell", "2 2 1"),
        # the molecule sits at x = 10 Å of 20: ranks 1 and 4 own no atom
        ("ch4_in_large_box", 4, "exchange", "4 1 1"),
        ("ch4_in_large_box", 2, "shell", "2 1 1"),
    ],
)
def test_lammps_deviation_on_several_ranks_equals_one_rank_and_numpy(
    tmp_path, system, nprocs, mode, processors
):
    """4 ranks on 2 cores are oversubscribed: fine for correctness."""
    make_atoms, elements = SYSTEMS[system]
    atoms = make_atoms()
    committee = deployed_committee(tmp_path, elements)
    serial, _ = committee_run(tmp_path / "np1", atoms, committee, elements, every=2, steps=4)
    rows, frames = committee_run(
        tmp_path / "parallel",
        atoms,
        committee,
        elements,
        every=2,
        steps=4,
        nprocs=nprocs,
        mode=mode,
        settings=f"processors {processors}",
    )
    log = (tmp_path / "parallel" / "log.lammps").read_text()
    grid = re.search(r"(\d+) by (\d+) by (\d+) MPI processor grid", log)
    assert grid and np.prod([int(n) for n in grid.groups()]) == nprocs
    np.testing.assert_allclose(rows, serial, rtol=1e-9, atol=1e-13)
    assert_deviation_matches_numpy(rows, frames, committee)


@pytest.mark.parametrize(
    "nprocs, mode", [(1, "images"), pytest.param(2, "exchange", marks=pytest.mark.slow)]
)
def test_lammps_potential_mean_and_first_equal_the_ase_committee(tmp_path, nprocs, mode):
    atoms = triclinic_water()
    committee = deployed_committee(tmp_path, ["O", "H"])
    files = " ".join(str(path) for path in committee)
    for potential in ("first", "mean"):
        workdir = tmp_path / potential
        result = run_lammps(
            workdir,
            atoms,
            files,
            ["O", "H"],
            nprocs=nprocs,
            pair_style=f"reann mode {mode} potential {potential} out_freq 0",
        )
        energy, energies, forces, virial = lammps_results(workdir, result)
        frame = atoms.copy()
        frame.calc = ReannCalculator([str(path) for path in committee], potential=potential)
        np.testing.assert_allclose(energy, frame.get_potential_energy(), rtol=1e-10)
        np.testing.assert_allclose(energies, frame.get_potential_energies(), rtol=1e-10)
        np.testing.assert_allclose(forces, frame.get_forces(), rtol=1e-10, atol=1e-12)
        ase_virial = -frame.get_stress(voigt=False) * frame.get_volume()
        np.testing.assert_allclose(virial, ase_virial, atol=1e-10 * np.abs(ase_virial).max())


def test_ase_committee_equals_the_individual_calculators(tmp_path):
    atoms = triclinic_water()
    committee = [str(path) for path in deployed_committee(tmp_path, ["O", "H"])]
    energies, forces, virials = individual_results(atoms, committee)
    for potential, combine in (("first", lambda v: v[0]), ("mean", lambda v: v.mean(axis=0))):
        calc = ReannCalculator(committee, potential=potential)
        frame = atoms.copy()
        frame.calc = calc
        np.testing.assert_allclose(frame.get_potential_energy(), combine(energies), rtol=1e-12)
        np.testing.assert_allclose(frame.get_forces(), combine(forces), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(
            -frame.get_stress(voigt=False) * frame.get_volume(), combine(virials), atol=1e-12
        )
        _, atom_deviation = numpy_deviation(energies, forces, virials)
        np.testing.assert_allclose(calc.results["forces_deviation"], atom_deviation, rtol=1e-12)
        np.testing.assert_allclose(calc.results["energy_deviation"], np.std(energies), rtol=1e-12)
    # a single model has no deviation to give
    single = ReannCalculator(committee[0])
    single.get_potential_energy(atoms.copy())
    assert "forces_deviation" not in single.results


@pytest.mark.parametrize(
    "case, expected",
    [
        ("elements", "differ in elements `O H` vs `H O`"),
        ("cutoff", "differ in cutoff r_max `3.5` vs `3.0`"),
        ("recursions", "differ in recursions `2` vs `1`"),
        ("dtype", "differ in dtype `float64` vs `float32`"),
        ("units", "differ in units `metal` vs `real`"),
    ],
)
def test_mismatched_committee_files_are_rejected_naming_what_differs(tmp_path, case, expected):
    first = deployed_committee(tmp_path, ["O", "H"], size=1)[0]
    other_options = {
        "elements": {"type_names": ["H", "O"]},
        "cutoff": {"r_max": 3.0},
        "recursions": {"num_recursions": 1},
        "dtype": {"model_dtype": "float32"},
        "units": {"units": "real"},
    }[case]
    directory = tmp_path / "other"
    directory.mkdir()
    other = deployed_committee(directory, **{"type_names": ["O", "H"], **other_options}, size=1)[0]
    with pytest.raises(ValueError, match=re.escape(expected)) as raised:
        ReannCalculator([str(first), str(other)])
    assert str(first) in str(raised.value) and str(other) in str(raised.value)

    result = run_lammps(tmp_path / "run", triclinic_water(), f"{first} {other}", ["O", "H"])
    message = _error_of(tmp_path / "run", result)
    assert expected in message and f"`{first}` and `{other}`" in message, message[-2000:]


def test_deviation_file_reads_as_dpgen_reads_it(tmp_path):
    """DP-GEN (dpgen2's TrajRenderLammps) reads the file with np.loadtxt and takes max_devi_f from
    column 4; `#` starts the header. Where runs meet, the step they share has one line."""
    atoms = triclinic_water()
    committee = deployed_committee(tmp_path, ["O", "H"])
    result = run_lammps(
        tmp_path / "run",
        atoms,
        " ".join(str(path) for path in committee),
        ["O", "H"],
        pair_style="reann out_freq 5 out_file devi.out",
        commands="velocity all create 300 1 mom yes rot yes\ntimestep 0.0005\nfix nve all nve\n"
        "run 5\nrun 5",
    )
    assert result.returncode == 0, result.stderr
    path = tmp_path / "run" / "devi.out"
    lines = path.read_text().splitlines()
    assert lines[0].startswith("#") and lines[0][1:].split() == list(DEVIATION_COLUMNS)

    dd = np.loadtxt(path)
    if len(np.shape(dd)) == 1:
        dd = dd.reshape((1, len(dd)))
    assert dd.shape == (3, 8) and dd[:, 0].tolist() == [0, 5, 10]
    max_devi_v, min_devi_v, avg_devi_v = dd[:, 1], dd[:, 2], dd[:, 3]
    max_devi_f, min_devi_f, avg_devi_f, devi_e = dd[:, 4], dd[:, 5], dd[:, 6], dd[:, 7]
    assert (min_devi_f <= avg_devi_f).all() and (avg_devi_f <= max_devi_f).all()
    assert (min_devi_v <= avg_devi_v).all() and (avg_devi_v <= max_devi_v).all()
    assert (devi_e > 0).all()
    columns = read_deviation_file(str(path))
    assert list(columns) == list(DEVIATION_COLUMNS)
    np.testing.assert_array_equal(columns["max_devi_f"], max_devi_f)
    assert columns["step"].dtype == np.int64


# === reann-nequip select ===


def write_trajectory(path, num_frames):
    """``num_frames`` CH4 frames, each moved by its index (so that frames can be told apart)."""
    frames = []
    for index in range(num_frames):
        atoms = Atoms("CH4", positions=np.eye(5, 3) + [[index * 0.01, 0.0, 0.0]])
        atoms.info["index"] = index
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")


def write_deviation_file(path, max_devi_f):
    rows = np.zeros((len(max_devi_f), len(DEVIATION_COLUMNS)))
    rows[:, 0] = np.arange(len(max_devi_f)) * 10
    rows[:, 4] = max_devi_f
    np.savetxt(path, rows, header=" ".join(DEVIATION_COLUMNS), fmt="%.10e")


def selected_frames(output):
    return [atoms.info["frame"] for atoms in ase.io.read(output, ":")]


def test_select_picks_exactly_the_frames_in_the_window(tmp_path, capsys):
    rng = np.random.default_rng(5)
    deviation = rng.uniform(0.0, 1.0, 200)
    write_trajectory(tmp_path / "run.extxyz", 200)
    write_deviation_file(tmp_path / "devi.out", deviation)
    in_window = np.flatnonzero((deviation >= 0.3) & (deviation < 0.6))
    arguments = ["select", str(tmp_path / "run.extxyz"), "--deviation", str(tmp_path / "devi.out")]
    arguments += ["--lo", "0.3", "--hi", "0.6", "-o", str(tmp_path / "picked.extxyz")]

    assert cli_main(arguments + ["--max-frames", "1000"]) == 0
    assert selected_frames(tmp_path / "picked.extxyz") == in_window.tolist()
    printed = capsys.readouterr().out
    below, above = int((deviation < 0.3).sum()), int((deviation >= 0.6).sum())
    assert f"{below} below 0.3, {len(in_window)} in [0.3, 0.6), {above} at or above 0.6" in printed
    picked = ase.io.read(tmp_path / "picked.extxyz", ":")
    for atoms in picked:
        frame = atoms.info["frame"]
        np.testing.assert_allclose(atoms.positions[0, 0], 1.0 + frame * 0.01)
        assert atoms.info["max_devi_f"] == pytest.approx(deviation[frame], rel=1e-9)
        assert atoms.info["step"] == frame and atoms.calc is None

    # capped: 10 of the window's frames, one from the middle of each tenth of them
    assert cli_main(arguments + ["--max-frames", "10"]) == 0
    capped = selected_frames(tmp_path / "picked.extxyz")
    tenth = len(in_window) / 10
    assert capped == [in_window[int((k + 0.5) * tenth)] for k in range(10)]
    assert "capped at 10" in capsys.readouterr().out


def test_select_from_lammps_dump_by_committee_or_deviation_file(tmp_path, capsys):
    """The same frames whether the deviation comes from the run's file (rows matched to dump
    frames by step) or from the committee evaluated on the dumped positions."""
    committee = deployed_committee(tmp_path, ["O", "H"])
    rows, frames = committee_run(
        tmp_path / "run", triclinic_water(), committee, ["O", "H"], every=1, steps=12
    )
    dump = tmp_path / "run" / "traj.dump"
    # a window between measured values, so that round-off cannot move a frame across its edges
    ordered = np.sort(rows[:, 4])
    lo, hi = (ordered[2] + ordered[3]) / 2, (ordered[9] + ordered[10]) / 2
    expected = np.flatnonzero((rows[:, 4] >= lo) & (rows[:, 4] < hi)).tolist()
    window = ["--lo", str(lo), "--hi", str(hi), "--elements", "O", "H"]
    by_file = ["--deviation", str(tmp_path / "run" / "devi.out")]
    by_committee = ["--committee", *map(str, committee)]
    for source, name in ((by_file, "file"), (by_committee, "committee")):
        output = tmp_path / f"{name}.extxyz"
        assert cli_main(["select", str(dump), *source, *window, "-o", str(output)]) == 0
        assert selected_frames(output) == expected
        picked = ase.io.read(output, ":")
        assert [atoms.info["step"] for atoms in picked] == expected  # one frame per step
        np.testing.assert_allclose(picked[0].positions, frames[expected[0]].positions)
        assert picked[0].get_chemical_symbols() == frames[0].get_chemical_symbols()
    capsys.readouterr()

    # a dump of types without --elements, and a deviation file without the dump's steps
    assert cli_main(["select", str(dump), *by_file, *window[:4], "-o", str(output)]) == 2
    assert "give --elements" in capsys.readouterr().err
    write_deviation_file(tmp_path / "other.out", np.zeros(3))
    other = ["--deviation", str(tmp_path / "other.out")]
    assert cli_main(["select", str(dump), *other, *window, "-o", str(output)]) == 2
    assert "has no row for step 1" in capsys.readouterr().err
