#!/usr/bin/env python
"""One round of active learning on CH4, end to end, with a committee of four REANN models.

1. trains a 4-member committee (``reann-nequip train-committee``: one run per model seed, the
   data split fixed) on the near-equilibrium frames of ``examples/ch4`` only, and deploys it;
2. runs LAMMPS MD with it (``pair_style reann`` with four model files, Langevin thermostat
   ramped from 300 K to ``--t-end``): the model deviation every ``--every`` steps, and a dump
   with the per-atom force deviation (``fix pair ... reann devi_f 1``);
3. selects frames with ``reann-nequip select`` (max force deviation in [lo, hi), at most
   ``--max-frames``, spread over the run) and labels them with the PySCF method of the shipped
   data (``examples/ch4/generate_data.py``: RKS B3LYP/aug-cc-pVDZ, grid level 2, forces with the
   grid response; energies and forces only);
4. retrains the committee on the near-equilibrium frames plus the labelled ones, each member
   from its own weights (as DP-GEN's ``training_init_model``);
5. measures, for the committee before and after, and for a control committee retrained the
   same way on the near-equilibrium frames alone (so that the change is the data's, not the
   extra epochs'): the model deviation along the same trajectory (LAMMPS ``rerun`` of the dump)
   and the errors on the 200 distorted frames of ``examples/ch4``, which no committee saw;
6. writes ``results.json`` and ``active_learning.png`` next to this script.

Run from the repository root (needs the LAMMPS plugin, ``make install``, and PySCF, the
``examples`` extra)::

    python examples/ch4_active_learning/run.py             # ~15 min on 2 cores
    python examples/ch4_active_learning/run.py --help

Intermediate files go to ``--work`` (default ``outputs/ch4_active_learning``).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
DATA = REPO_ROOT / "examples" / "ch4" / "ch4_b3lyp_augccpvdz.xyz"
BIN = pathlib.Path(sys.executable).parent
ELEMENTS = ["C", "H"]
SEEDS = (1, 2, 3, 4)
BOX = 20.0  # Å, the molecule at its centre: far from its periodic images (cutoff 4 Å)
# the B3LYP/aug-cc-pVDZ minimum of CH4 (examples/ch4/generation_summary.json), eV
ENERGY_MIN = -1102.6223558135844
# the distorted frames by energy above the minimum, eV (they span 3.9 to 15.6)
BINS = ((3, 6), (6, 9), (9, 16))
LABELS = {
    "before": "before (near-equilibrium data)",
    "control": "control: retrained, no new data",
    "after": "after: retrained with the selected frames",
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def tool_environment() -> dict:
    """This venv's tools first on PATH, one thread per process (the machine has 2 cores)."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}


def run(command, cwd, log_path: pathlib.Path) -> None:
    """``command`` in ``cwd``, its output in ``log_path``; raises with the output's end on failure."""
    with open(log_path, "w") as stream:
        result = subprocess.run(
            [str(part) for part in command],
            cwd=cwd,
            env=tool_environment(),
            stdout=stream,
            stderr=subprocess.STDOUT,
        )
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed, see {log_path}:\n{log_path.read_text()[-3000:]}")


# === (1), (4) the committee: one multirun over the model seed, deployed ===


def train_committee(data_file: pathlib.Path, directory: pathlib.Path, epochs: int, start=None):
    """Four members on ``data_file`` (85 % train, 15 % validation, split by the config's fixed
    data seed), two at a time with one thread each, deployed; returns the deployed files.
    ``start``: the directory of a committee whose members' weights each member starts from (its
    own seed's), instead of new weights."""
    overrides = [
        f"data_file={data_file}",
        "data.split_dataset.train=0.85",
        "data.split_dataset.val=0.15",
        "~data.split_dataset.test",
        "run=[train]",
        f"trainer.max_epochs={epochs}",
        "trainer.max_time=null",
    ]
    if start is not None:
        checkpoint = f"{start}/seed${{model_seed}}/best.ckpt"
        overrides += [
            "~training_module.model",
            f"+training_module.model={{_target_:nequip.model.ModelFromCheckpoint,"
            f"checkpoint_path:{checkpoint}}}",
        ]
    seeds = [str(seed) for seed in SEEDS]
    directory.mkdir(parents=True, exist_ok=True)
    run(
        [BIN / "reann-nequip", "train-committee", "configs/reann_ch4.yaml", *overrides]
        + ["--seeds", *seeds, "--jobs", "2", "-o", directory, "--deploy"],
        REPO_ROOT,
        directory / "train-committee.log",
    )
    return [directory / f"member_seed{seed}.pth" for seed in SEEDS]


# === (2) MD with the committee, and (5) the same trajectory again ===

MD_INPUT = """units metal
atom_style atomic
boundary p p p
read_data ch4.data
pair_style reann out_freq {every} out_file model_devi.out
pair_coeff * * {models} C H
fix devi all pair {every} reann devi_f 1
dump traj all custom {every} traj.dump id type x y z f_devi
dump_modify traj sort id format float %.10g
velocity all create 300 {seed} mom yes rot yes dist gaussian
timestep {timestep}
fix nve all nve
fix heat all langevin 300 {t_end} 0.05 {seed} zero yes
fix still all momentum 100 linear 1 1 1 angular
# the run stops itself once the committee disagrees far beyond the trust window
compute max_devi all reduce max f_devi
variable max_devi equal c_max_devi
fix stop all halt {every} v_max_devi > {halt} error soft
thermo_style custom step temp pe etotal v_max_devi
thermo {every}
run {steps}
"""

RERUN_INPUT = """units metal
atom_style atomic
boundary p p p
read_data ch4.data
pair_style reann out_freq {every} out_file model_devi.out
pair_coeff * * {models} C H
rerun {dump} dump x y z
"""


def write_molecule(directory: pathlib.Path) -> None:
    """The first near-equilibrium frame, centred in the box, as LAMMPS data (C is type 1)."""
    import ase.io

    frames = ase.io.read(DATA, ":")
    molecule = next(atoms for atoms in frames if atoms.info["kind"] == "near_eq").copy()
    molecule.calc = None
    molecule.set_cell([BOX, BOX, BOX])
    molecule.set_pbc(True)
    molecule.center()
    ase.io.write(
        directory / "ch4.data", molecule, format="lammps-data", specorder=ELEMENTS, masses=True
    )


def run_md(committee, directory: pathlib.Path, args) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_molecule(directory)
    (directory / "in.lmp").write_text(
        MD_INPUT.format(
            every=args.every,
            models=" ".join(str(path) for path in committee),
            seed=args.seed,
            timestep=args.timestep,
            t_end=args.t_end,
            steps=args.steps,
            halt=args.halt,
        )
    )
    run([BIN / "lmp", "-in", "in.lmp", "-log", "log.lammps"], directory, directory / "stdout.log")


def rerun(committee, dump: pathlib.Path, directory: pathlib.Path, every: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_molecule(directory)
    (directory / "in.lmp").write_text(
        RERUN_INPUT.format(every=every, models=" ".join(str(path) for path in committee), dump=dump)
    )
    run([BIN / "lmp", "-in", "in.lmp", "-log", "log.lammps"], directory, directory / "stdout.log")


# === (3) labels: the PySCF method of examples/ch4 ===


def label_frame(positions: np.ndarray):
    """Energy (eV) and forces (eV/Å) of CH4 at ``positions`` (Å, atoms in the order C H H H H)
    by the functions of ``examples/ch4/generate_data.py``; None if the SCF fails."""
    sys.path.insert(0, str(REPO_ROOT / "examples" / "ch4"))
    import generate_data as reference

    molecule = reference.make_mol(reference.SYMBOLS, positions)
    scf = reference.make_ks(molecule)
    try:
        energy = reference.converge(scf)
    except reference.SCFFailure:
        return None
    gradient = reference.gradient(scf)
    return energy * reference.HARTREE_TO_EV, -gradient * reference.FORCE_AU_TO_EV_ANG


def label(selected: pathlib.Path, labelled: pathlib.Path, workers: int) -> int:
    """Label the frames of ``selected`` (molecules made whole across the box: positions relative
    to C by the minimum image); writes ``labelled`` and returns how many SCFs failed."""
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = ase.io.read(selected, ":")
    molecules = []
    for atoms in frames:
        assert atoms.get_chemical_symbols() == ["C", "H", "H", "H", "H"], atoms
        offsets = atoms.get_distances(0, range(len(atoms)), mic=True, vector=True)
        molecules.append(offsets + BOX / 2)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(label_frame, molecules))
    done = []
    for atoms, positions, result in zip(frames, molecules, results):
        if result is None:
            continue
        molecule = atoms.copy()
        molecule.positions = positions
        molecule.set_cell(None)
        molecule.set_pbc(False)
        molecule.info = {"kind": "active_learning", "step": atoms.info["step"]}
        molecule.calc = SinglePointCalculator(molecule, energy=result[0], forces=result[1])
        done.append(molecule)
    ase.io.write(labelled, done, format="extxyz")
    return len(frames) - len(done)


# === (5) errors and deviations ===


def frame_errors(committee, frames, potential: str):
    """Per frame of ``frames``: energy error per atom (eV), RMS force-component error (eV/Å) of
    the committee's ``potential`` (first model or mean), and its max force deviation (eV/Å)."""
    from reann_nequip.integrations.ase import ReannCalculator

    calculator = ReannCalculator([str(path) for path in committee], potential=potential)
    rows = []
    for reference in frames:
        atoms = reference.copy()
        atoms.calc = calculator
        energy_error = (atoms.get_potential_energy() - reference.get_potential_energy()) / len(
            atoms
        )
        force_error = np.sqrt(np.mean(np.square(atoms.get_forces() - reference.get_forces())))
        rows.append((energy_error, force_error, calculator.results["forces_deviation"].max()))
    return np.array(rows)


def rmse(rows: np.ndarray) -> dict:
    """RMSEs (meV/atom, meV/Å) over the frames of :func:`frame_errors` rows."""
    return {
        "frames": len(rows),
        "energy_rmse_meV_per_atom": round(1000 * float(np.sqrt(np.mean(rows[:, 0] ** 2))), 1),
        "force_rmse_meV_per_A": round(1000 * float(np.sqrt(np.mean(rows[:, 1] ** 2))), 1),
    }


def plot(deviations, distorted, window, timestep, path: pathlib.Path) -> None:
    """Left: max_devi_f along the trajectory for each committee; right: the first model's force
    RMSE on the distorted frames, all and by energy above the minimum."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6), width_ratios=[1.5, 1])
    for name, column in deviations.items():
        left.semilogy(column["step"] * timestep, column["max_devi_f"], lw=0.8, label=LABELS[name])
    for edge in window:
        left.axhline(edge, color="grey", ls="--", lw=0.8)
    left.set_xlabel("time (ps); Langevin thermostat ramped from 300 K")
    left.set_ylabel("max_devi_f (eV/Å)")
    left.set_title("model deviation along the same MD trajectory (trust window dashed)")
    left.legend(loc="upper left", fontsize=8)

    # force RMSE of the first model by the frames' energy above the minimum
    groups = list(next(iter(distorted.values()))["first"])
    positions = np.arange(len(groups))
    width = 0.8 / len(distorted)
    for index, (name, result) in enumerate(distorted.items()):
        values = [result["first"][group]["force_rmse_meV_per_A"] for group in groups]
        offset = (index - (len(distorted) - 1) / 2) * width
        bars = right.bar(positions + offset, values, width=width, label=LABELS[name])
        right.bar_label(bars, fmt="%.0f", fontsize=6)
    counts = [next(iter(distorted.values()))["first"][group]["frames"] for group in groups]
    right.set_xticks(
        positions, [f"{group}\n({count} frames)" for group, count in zip(groups, counts)]
    )
    right.set_xlabel("distorted frames by energy above the minimum")
    right.set_ylabel("force RMSE of the first model (meV/Å)")
    right.set_title("errors on the distorted frames (no committee saw them)")
    right.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(REPO_ROOT / "outputs" / "ch4_active_learning"))
    parser.add_argument("--epochs", type=int, default=200, help="training epochs per member")
    parser.add_argument("--steps", type=int, default=20000, help="MD steps")
    parser.add_argument("--timestep", type=float, default=0.00025, help="ps (default 0.25 fs)")
    parser.add_argument("--t-end", type=float, default=5000.0, help="K at the end of the ramp")
    parser.add_argument("--every", type=int, default=20, help="deviation and dump every N steps")
    parser.add_argument("--lo", type=float, default=0.2, help="trust window, eV/Å")
    parser.add_argument("--hi", type=float, default=1.5, help="trust window, eV/Å")
    parser.add_argument(
        "--halt", type=float, default=3.0, help="the MD stops at a larger max_devi_f, eV/Å"
    )
    parser.add_argument("--max-frames", type=int, default=60, help="frames to label")
    parser.add_argument("--seed", type=int, default=2718, help="velocities and thermostat")
    args = parser.parse_args(argv)

    import ase.io

    from reann_nequip.deploy import read_deviation_file

    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    timings = {}
    start = time.time()

    frames = ase.io.read(DATA, ":")
    near_eq = [atoms for atoms in frames if atoms.info["kind"] == "near_eq"]
    distorted = [atoms for atoms in frames if atoms.info["kind"] == "distorted"]
    ase.io.write(work / "near_eq.xyz", near_eq, format="extxyz")

    log(f"(1) committee on the {len(near_eq)} near-equilibrium frames")
    clock = time.time()
    before = train_committee(work / "near_eq.xyz", work / "committee_before", args.epochs)
    timings["train_before_s"] = time.time() - clock

    log(f"(2) MD, {args.steps} steps, 300 K → {args.t_end:.0f} K")
    clock = time.time()
    run_md(before, work / "md", args)
    timings["md_s"] = time.time() - clock

    log(f"(3) select max_devi_f in [{args.lo}, {args.hi}), at most {args.max_frames}")
    clock = time.time()
    selection = subprocess.run(
        [BIN / "reann-nequip", "select", work / "md" / "traj.dump"]
        + ["--deviation", work / "md" / "model_devi.out", "--elements", *ELEMENTS]
        + ["--lo", str(args.lo), "--hi", str(args.hi), "--max-frames", str(args.max_frames)]
        + ["-o", work / "selected.extxyz"],
        env=tool_environment(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    print(selection, end="")
    failed = label(work / "selected.extxyz", work / "labelled.extxyz", workers=2)
    labelled = ase.io.read(work / "labelled.extxyz", ":")
    timings["select_and_label_s"] = time.time() - clock
    log(f"    labelled {len(labelled)} frames ({failed} SCF failures)")

    log("(4) the committee retrained on the near-equilibrium frames and the labelled ones")
    clock = time.time()
    ase.io.write(work / "near_eq_and_labelled.xyz", near_eq + labelled, format="extxyz")
    after = train_committee(
        work / "near_eq_and_labelled.xyz",
        work / "committee_after",
        args.epochs,
        start=work / "committee_before",
    )
    timings["train_after_s"] = time.time() - clock
    log("    control: the same retraining on the near-equilibrium frames alone")
    clock = time.time()
    control = train_committee(
        work / "near_eq.xyz",
        work / "committee_control",
        args.epochs,
        start=work / "committee_before",
    )
    timings["train_control_s"] = time.time() - clock
    committees = {"before": before, "control": control, "after": after}

    log("(5) deviation along the same trajectory, errors on the distorted frames")
    clock = time.time()
    deviations = {"before": read_deviation_file(str(work / "md" / "model_devi.out"))}
    for name in ("control", "after"):
        rerun(committees[name], work / "md" / "traj.dump", work / f"rerun_{name}", args.every)
        deviations[name] = read_deviation_file(str(work / f"rerun_{name}" / "model_devi.out"))
    above_minimum = np.array([atoms.get_potential_energy() for atoms in distorted]) - ENERGY_MIN
    bins = {"all": above_minimum >= 0}
    bins |= {f"{lo}-{hi} eV": (above_minimum >= lo) & (above_minimum < hi) for lo, hi in BINS}
    distorted_errors, near_eq_errors = {}, {}
    for name, committee in committees.items():
        distorted_errors[name] = {}
        for potential in ("first", "mean"):
            rows = frame_errors(committee, distorted, potential)
            distorted_errors[name][potential] = {
                key: rmse(rows[mask]) for key, mask in bins.items()
            }
        near_eq_errors[name] = rmse(frame_errors(committee, near_eq, "first"))
    labelled_before = frame_errors(before, labelled, "first")
    timings["evaluate_s"] = time.time() - clock
    timings["total_s"] = time.time() - start

    half = len(deviations["before"]["step"]) // 2
    summary = {
        "settings": {**vars(args), "work": None, "seeds": list(SEEDS)},
        "frames": {
            "near_eq_training": len(near_eq),
            "trajectory": len(deviations["before"]["step"]),
            "trajectory_ps": float(deviations["before"]["step"][-1] * args.timestep),
            "selection_printout": selection.strip().splitlines(),
            "labelled": len(labelled),
            "scf_failures": failed,
        },
        "max_devi_f_along_trajectory": {
            name: {
                "median_first_half": round(float(np.median(column["max_devi_f"][:half])), 4),
                "median_second_half": round(float(np.median(column["max_devi_f"][half:])), 4),
                "max": round(float(column["max_devi_f"].max()), 3),
                "frames_at_or_above_lo": int((column["max_devi_f"] >= args.lo).sum()),
            }
            for name, column in deviations.items()
        },
        "distorted_frames": distorted_errors,
        "near_eq_training_frames": near_eq_errors,
        "labelled_frames_before": {
            "max_devi_f_median": round(float(np.median(labelled_before[:, 2])), 3),
            "force_rmse_meV_per_A": rmse(labelled_before)["force_rmse_meV_per_A"],
            "correlation_max_devi_f_force_error": round(
                float(np.corrcoef(labelled_before[:, 2], labelled_before[:, 1])[0, 1]), 3
            ),
        },
        "timings_s": {key: round(value, 1) for key, value in timings.items()},
    }
    (HERE / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(
        deviations,
        distorted_errors,
        (args.lo, args.hi),
        args.timestep,
        HERE / "active_learning.png",
    )
    log(f"done in {timings['total_s'] / 60:.1f} min: results.json, active_learning.png")
    print(json.dumps(summary["max_devi_f_along_trajectory"], indent=2))
    print(json.dumps({k: v["first"]["all"] for k, v in distorted_errors.items()}, indent=2))


if __name__ == "__main__":
    main()
