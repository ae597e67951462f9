#!/usr/bin/env python
"""MD speed of ``pair_style reann``: µs per atom per step and peak memory, bulk water.

The default REANN model of the benchmarks (r_max 5 Å, 8 Gaussians, l_max 2, 108 orbitals,
3 recursions, hidden widths 64 64; random weights — speed does not depend on training) is deployed in
float32 and float64 and run by the venv's ``lmp`` (NVE, one torch thread per rank) on the first frame
of ``water_deepmd`` replicated to each requested size. Each run is its own process; peak memory is the
largest resident set of one LAMMPS rank. The time is LAMMPS' loop time of the timed run (after a
3-step warm-up that loads the kernels and fills the block cache) per step and atom. On several
ranks, ``exchange`` and ``shell`` modes are both timed (``shell`` up to 1,536 atoms). With
``--repeats N`` every configuration runs N times, in rounds: the table gives the best and every
run, and a second table float64 / float32 of the same round, since the machine's speed drifts
more between rounds than between neighbouring runs. On one rank a committee of ``--committee``
models (the default model and others with other random weights) runs in the same round as the
default model alone, with its model deviation written every step (``out_freq 1``: every model
runs every step); a third table gives its cost relative to one model, round by round.

Example::

    .venv/bin/python benchmarks/bench_md.py --data ../shared/data/water_deepmd
    .venv/bin/python benchmarks/bench_md.py --sizes 192 1536 --ranks 1 2 --dtypes float32
    .venv/bin/python benchmarks/bench_md.py --ranks 1 --repeats 3  # float64 / float32 by round
    .venv/bin/python benchmarks/bench_md.py --sizes 12288 --ranks 1 --dtypes float32 --repeats 3
"""

import argparse
import itertools
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

import numpy as np
from provenance import write_json

BIN = pathlib.Path(sys.executable).parent
TYPE_NAMES = ["O", "H"]
R_MAX = 5.0
# the default REANN model of the benchmarks: REANN's own example hyperparameters, 108 orbitals
REANN_OPTIONS = {
    "num_gaussians": 8,
    "l_max": 2,
    "num_recursions": 3,
    "energy_network": {"hidden": [64, 64]},
    "coefficient_network": {"hidden": [64, 64]},
}
# replications of the 192-atom box for each size
REPLICAS = {192: (1, 1, 1), 1536: (2, 2, 2), 12288: (4, 4, 4), 24576: (4, 4, 8)}
# a (T + 1) r_max + skin = 22 Å ghost shell holds far more atoms than a rank owns: 7 GB per rank
# at 1,536 atoms already, so larger boxes run in exchange mode only
SHELL_MAX_ATOMS = 1536
# the benchmark model has random weights and no repulsion: at 300 K atoms move ballistically and
# two of them come closer than pair_reann's 0.1 Å guard after ~100 fs; 40 steps (20 fs) stay clear
MAX_STEPS = 40
# what one configuration of runs is, in the order of the keys of main's `runs`
CONFIGURATION_KEYS = ("dtype", "memory", "size", "ranks", "mode", "models")


def water_frame(data_root: str):
    from ase import Atoms

    set_dir = pathlib.Path(data_root) / "data" / "data_0" / "set.000"
    if not set_dir.is_dir():
        raise SystemExit(f"error: no DeePMD water frames at {set_dir}")
    positions = np.load(set_dir / "coord.npy")[0].reshape(-1, 3).astype(np.float64)
    cell = np.load(set_dir / "box.npy")[0].reshape(3, 3).astype(np.float64)
    atoms = Atoms("O64H128", positions=positions, cell=cell, pbc=True)
    atoms.wrap()
    return atoms


def default_model(dtype: str, perturbation_seed: int):
    """The benchmark model in ``dtype``, its weights perturbed by 0.01 N(0, 1) drawn from
    ``perturbation_seed``: non-trivial forces, and committee members that differ."""
    import torch
    from nequip.utils.global_state import set_global_state

    from reann_nequip.model import ReannModel

    set_global_state()
    model = ReannModel(
        seed=0,
        model_dtype=dtype,
        type_names=TYPE_NAMES,
        r_max=R_MAX,
        **REANN_OPTIONS,
        per_type_energy_shifts={"O": -430.0, "H": -13.6},
    )
    generator = torch.Generator().manual_seed(perturbation_seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(
                0.01 * torch.randn(parameter.shape, generator=generator).to(parameter.dtype)
            )
    return model


def deploy_default_models(workdir: pathlib.Path, dtypes: List[str]) -> Dict[str, pathlib.Path]:
    """The benchmark model deployed in each of ``dtypes``, with the same weights in all."""
    from reann_nequip.deploy import save_deployed

    paths = {}
    weights = None
    for dtype in dtypes:
        model = default_model(dtype, perturbation_seed=0)
        if weights is None:
            weights = model.state_dict()
        else:
            model.load_state_dict(weights)
        paths[dtype] = workdir / f"water_{dtype}.pth"
        save_deployed(model, str(paths[dtype]))
    return paths


def deploy_committee(
    workdir: pathlib.Path, dtype: str, first: pathlib.Path, size: int
) -> List[pathlib.Path]:
    """A committee of ``size`` models: the deployed default model ``first``, then models whose
    perturbations come from seeds 1, 2, ..."""
    from reann_nequip.deploy import save_deployed

    paths = [first]
    for member in range(1, size):
        paths.append(workdir / f"water_{dtype}_member{member}.pth")
        save_deployed(default_model(dtype, perturbation_seed=member), str(paths[-1]))
    return paths


def run_with_peak_rss(
    command: List[str], cwd: pathlib.Path, env: Dict[str, str]
) -> Tuple[subprocess.CompletedProcess, float]:
    """Run ``command`` (output captured) as the only child of a fresh watcher process, so that
    the peak resident memory measured is that of the command's processes alone.

    Returns the result and that peak in MiB (Linux reports KiB).
    """
    watcher = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
        "sys.exit(r.returncode)"
    )
    result = subprocess.run(
        [sys.executable, "-c", watcher, *command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    return result, int(result.stderr.split()[-1]) / 1024.0


def run_lammps(
    workdir: pathlib.Path,
    models: List[pathlib.Path],
    replicas,
    ranks: int,
    steps: int,
    mode: str,
    memory: str = "keep",
) -> Dict:
    nx, ny, nz = replicas
    # a committee writes its model deviation every step: every model runs every step
    deviation = " out_freq 1 out_file model_devi.out" if len(models) > 1 else ""
    (workdir / "in.lmp").write_text(
        f"""units metal
atom_style atomic
read_data water.lmp
replicate {nx} {ny} {nz}
mass 1 15.999
mass 2 1.008
pair_style reann mode {mode} memory {memory}{deviation}
pair_coeff * * {" ".join(str(model) for model in models)} O H
velocity all create 300 12345 dist gaussian
timestep 0.0005
fix nve all nve
thermo {steps}
# warm-up: the first calls load the kernels and fill pair_reann's block cache
run 3
run {steps}
"""
    )
    lmp = [str(BIN / "lmp"), "-in", "in.lmp", "-log", "log.lammps", "-screen", "none"]
    command = lmp if ranks == 1 else [str(BIN / "mpirun"), "-np", str(ranks), *lmp]
    result, peak_rss_mb = run_with_peak_rss(
        command, workdir, {**os.environ, "OMP_NUM_THREADS": "1"}
    )
    log = (workdir / "log.lammps").read_text() if (workdir / "log.lammps").exists() else ""
    if result.returncode != 0:
        raise SystemExit(f"LAMMPS failed in {workdir}:\n{log[-2000:]}\n{result.stderr[-2000:]}")
    # the last run, after the warm-up
    loop = re.findall(
        r"Loop time of ([\d.eE+-]+) on (\d+) procs for (\d+) steps with (\d+) atoms", log
    )[-1]
    pair = re.findall(r"^Pair\s*\|[^|]*\|[^|]*\|\s*([\d.eE+-]+)\s*\|", log, re.M)[-1:]
    seconds, num_steps, num_atoms = float(loop[0]), int(loop[2]), int(loop[3])
    return {
        "atoms": num_atoms,
        "us_per_atom_step": seconds / num_steps / num_atoms * 1e6,
        "pair_fraction": float(pair[0]) / seconds if pair else float("nan"),
        "peak_rss_mb": peak_rss_mb,
    }


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/water_deepmd", help="water_deepmd folder")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=sorted(REPLICAS), choices=sorted(REPLICAS)
    )
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["exchange", "shell"],
        choices=["exchange", "shell"],
        help="ghost handling on several ranks (one rank always uses periodic images)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"MD steps (default: ~2e5 atom-steps, 5 to {MAX_STEPS})",
    )
    parser.add_argument(
        "--memory",
        nargs="+",
        default=["keep"],
        choices=["keep", "release"],
        help="pair_style reann memory policy: keep freed memory in the process, or return it",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs of every configuration, all configurations once per round: the table gives "
        "the best and each run, and float64 / float32 of the same round",
    )
    parser.add_argument(
        "--committee",
        type=int,
        default=4,
        help="models of the committee run next to one model on one rank, deviation every step "
        "(default 4; 1 or 0: no committee runs)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, found {args.repeats}")

    from ase.io import write

    # (dtype, memory, atoms, ranks, mode, models): committees on one rank, next to one model
    committee_sizes = [1, args.committee] if args.committee > 1 else [1]
    configurations = [
        (dtype, memory, size, ranks, mode, num_models)
        for dtype, memory in itertools.product(args.dtypes, args.memory)
        for size in args.sizes
        for ranks in args.ranks
        for mode in (["images"] if ranks == 1 else args.modes)
        for num_models in (committee_sizes if ranks == 1 else [1])
        if not (mode == "shell" and size > SHELL_MAX_ATOMS)
    ]
    # every configuration's runs, one per round
    runs: Dict[Tuple, List[Dict]] = {configuration: [] for configuration in configurations}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        write(tmp / "water.lmp", water_frame(args.data), format="lammps-data", specorder=TYPE_NAMES)
        models = deploy_default_models(tmp, args.dtypes)
        committees = {
            dtype: deploy_committee(tmp, dtype, models[dtype], max(committee_sizes))
            for dtype in args.dtypes
        }
        for round_index in range(args.repeats):
            for configuration in configurations:
                dtype, memory, size, ranks, mode, num_models = configuration
                steps = steps_for(size, args.steps)
                workdir = tmp / f"{dtype}_{memory}_{size}_{ranks}_{mode}_{num_models}_{round_index}"
                workdir.mkdir()
                (workdir / "water.lmp").write_bytes((tmp / "water.lmp").read_bytes())
                row = run_lammps(
                    workdir,
                    committees[dtype][:num_models],
                    REPLICAS[size],
                    ranks,
                    steps,
                    mode,
                    memory,
                )
                runs[configuration].append(row)
                print(
                    f"  round {round_index + 1}: {dtype} memory {memory} {row['atoms']:>6} atoms "
                    f"{ranks} rank(s) {mode_label(mode, num_models)}: "
                    f"{row['us_per_atom_step']:.1f} µs/atom-step",
                    file=sys.stderr,
                    flush=True,
                )

    results = {
        "steps": args.steps,
        "repeats": args.repeats,
        "configurations": [
            dict(zip(CONFIGURATION_KEYS, configuration), runs=rows)
            for configuration, rows in runs.items()
        ],
    }
    print(
        f"\npair_style reann, bulk water, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, 1 torch thread per rank, {args.repeats} run(s) of each\n"
    )
    print(markdown(results))
    if args.json:
        write_json(args.json, __file__, results, argv)


def markdown(results: Dict) -> str:
    """The tables of a ``--json`` file's ``results``: every configuration's runs, and float64 /
    float32 when both dtypes ran, and committee / one model when a committee ran."""
    runs = {
        tuple(entry[key] for key in CONFIGURATION_KEYS): entry["runs"]
        for entry in results["configurations"]
    }
    tables = [
        format_runs_table(runs, results["steps"]),
        format_dtype_ratio_table(runs),
        format_committee_table(runs),
    ]
    return "\n\n".join(table for table in tables if table)


def headline(results: Dict) -> List[Tuple[str, str]]:
    """The README's numbers: one rank, default memory policy, the largest box, per dtype; and
    the float32 committee's cost relative to one model (median of the same-round ratios)."""
    rows = []
    one_rank = [
        entry
        for entry in results["configurations"]
        if entry["ranks"] == 1 and entry["memory"] == "keep"
    ]
    for dtype in ("float32", "float64"):
        entries = [e for e in one_rank if e["dtype"] == dtype and e["models"] == 1]
        if entries:
            entry = max(entries, key=lambda e: e["size"])
            rows.append(
                (
                    f"`pair_style reann` MD, {entry['size']:,} water atoms, 1 rank, {dtype}",
                    f"{best(entry['runs']):.1f} µs/atom-step",
                )
            )
    committees = [e for e in one_rank if e["dtype"] == "float32" and e["models"] > 1]
    if committees:
        committee = max(committees, key=lambda e: e["size"])
        single = next(
            e
            for e in one_rank
            if e["dtype"] == "float32" and e["models"] == 1 and e["size"] == committee["size"]
        )
        ratios = [
            c["us_per_atom_step"] / s["us_per_atom_step"]
            for c, s in zip(committee["runs"], single["runs"])
        ]
        rows.append(
            (
                f"committee of {committee['models']} with its model deviation every step, "
                f"{committee['size']:,} atoms, float32, cost relative to one model",
                f"{float(np.median(ratios)):.2f}×",
            )
        )
    return rows


def mode_label(mode: str, num_models: int) -> str:
    """The mode column: ``images``, or ``images, 4 models`` for a committee."""
    return mode if num_models == 1 else f"{mode}, {num_models} models"


def steps_for(size: int, steps: Optional[int]) -> int:
    """MD steps at ``size`` atoms: ``steps``, or ~2e5 atom-steps within 5 … MAX_STEPS."""
    return steps or max(5, min(MAX_STEPS, 200000 // size))


def best(rows: List[Dict]) -> float:
    """The fastest of a configuration's runs, µs/atom-step."""
    return min(row["us_per_atom_step"] for row in rows)


def format_runs_table(runs: Dict[Tuple, List[Dict]], steps: Optional[int]) -> str:
    """One row per configuration: the best µs/atom-step of its runs (speed-up and efficiency
    against the best one-rank run), the largest pair share and peak RSS, and every run."""
    serial = {
        (dtype, memory, size): best(rows)
        for (dtype, memory, size, ranks, _, num_models), rows in runs.items()
        if ranks == 1 and num_models == 1
    }
    lines = [
        "| dtype | memory | atoms | ranks | mode | steps | µs/atom-step (best) | speed-up vs 1 "
        "rank | parallel efficiency | pair share | peak RSS per rank (MB) | runs (µs/atom-step) |",
        "|" + "---|" * 12,
    ]
    for (dtype, memory, size, ranks, mode, num_models), rows in runs.items():
        reference = serial.get((dtype, memory, size))
        fastest = best(rows)
        speedup, efficiency = "–", "–"
        if reference and num_models == 1:
            speedup = f"{reference / fastest:.2f}"
            efficiency = f"{100 * reference / fastest / ranks:.0f}%"
        each = " / ".join(f"{row['us_per_atom_step']:.1f}" for row in rows)
        lines.append(
            f"| {dtype} | {memory} | {rows[0]['atoms']} | {ranks} | {mode_label(mode, num_models)} "
            f"| {steps_for(size, steps)} | {fastest:.1f} | {speedup} | {efficiency} | "
            f"{100 * max(row['pair_fraction'] for row in rows):.0f}% | "
            f"{max(row['peak_rss_mb'] for row in rows):.0f} | {each} |"
        )
    return "\n".join(lines)


def format_dtype_ratio_table(runs: Dict[Tuple, List[Dict]]) -> str:
    """float64 over float32 µs/atom-step on one rank, run by run in the same round (the host's
    speed drifts between rounds more than between neighbouring runs), their median, and best
    over best; empty unless both dtypes ran."""
    lines = []
    for (dtype, memory, size, ranks, mode, num_models), rows64 in runs.items():
        rows32 = runs.get(("float32", memory, size, ranks, mode, num_models))
        if dtype != "float64" or ranks != 1 or num_models != 1 or rows32 is None:
            continue
        same_round = [
            r64["us_per_atom_step"] / r32["us_per_atom_step"] for r64, r32 in zip(rows64, rows32)
        ]
        lines.append(
            f"| {memory} | {rows64[0]['atoms']} | "
            f"{' / '.join(f'{ratio:.2f}' for ratio in same_round)} | "
            f"{float(np.median(same_round)):.2f} | {best(rows64) / best(rows32):.2f} |"
        )
    if not lines:
        return ""
    header = [
        "float64 / float32, one rank:",
        "",
        "| memory | atoms | same round, run by run | median | best / best |",
        "|---|---|---|---|---|",
    ]
    return "\n".join(header + lines)


def format_committee_table(runs: Dict[Tuple, List[Dict]]) -> str:
    """A committee's µs/atom-step over one model's on one rank, run by run in the same round,
    their median, and best over best; empty without committee runs."""
    lines = []
    for (dtype, memory, size, ranks, mode, num_models), committee in runs.items():
        single = runs.get((dtype, memory, size, ranks, mode, 1))
        if num_models == 1 or single is None:
            continue
        same_round = [
            c["us_per_atom_step"] / s["us_per_atom_step"] for c, s in zip(committee, single)
        ]
        lines.append(
            f"| {dtype} | {memory} | {committee[0]['atoms']} | {num_models} | "
            f"{' / '.join(f'{ratio:.2f}' for ratio in same_round)} | "
            f"{float(np.median(same_round)):.2f} | {best(committee) / best(single):.2f} |"
        )
    if not lines:
        return ""
    header = [
        "committee / one model, one rank, the model deviation written every step:",
        "",
        "| dtype | memory | atoms | models | same round, run by run | median | best / best |",
        "|---|---|---|---|---|---|---|",
    ]
    return "\n".join(header + lines)


if __name__ == "__main__":
    main()
