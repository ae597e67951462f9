#!/usr/bin/env python
"""MD speed of ``pair_style reann``: µs per atom per step and peak memory, bulk water.

The default REANN model of the benchmarks (r_max 5 Å, 8 Gaussians, l_max 2, 108 orbitals,
3 recursions, hidden widths 64 64; random weights — speed does not depend on training) is deployed in
float32 and float64 and run by the venv's ``lmp`` (NVE, one torch thread per rank) on the first frame
of ``water_deepmd`` replicated to each requested size. Each run is its own process; peak memory is the
largest resident set of one LAMMPS rank. See ``benchmarks/README.md``.

Example::

    .venv/bin/python benchmarks/bench_md.py --data ../shared/data/water_deepmd
    .venv/bin/python benchmarks/bench_md.py --sizes 192 1536 --ranks 1 2 --dtypes float32
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


def deploy_default_models(workdir: pathlib.Path, dtypes: List[str]) -> Dict[str, pathlib.Path]:
    from nequip.utils.global_state import set_global_state

    from reann_nequip.deploy import save_deployed
    from reann_nequip.model import ReannModel

    set_global_state()
    paths = {}
    weights = None
    for dtype in dtypes:
        model = ReannModel(
            seed=0,
            model_dtype=dtype,
            type_names=TYPE_NAMES,
            r_max=R_MAX,
            **REANN_OPTIONS,
            per_type_energy_shifts={"O": -430.0, "H": -13.6},
        )
        # the same weights in every dtype; a small perturbation gives non-trivial forces
        if weights is None:
            with np.errstate(all="ignore"):
                import torch

                generator = torch.Generator().manual_seed(0)
                with torch.no_grad():
                    for parameter in model.parameters():
                        parameter.add_(
                            0.01
                            * torch.randn(parameter.shape, generator=generator).to(parameter.dtype)
                        )
            weights = model.state_dict()
        else:
            model.load_state_dict(weights)
        paths[dtype] = workdir / f"water_{dtype}.pth"
        save_deployed(model, str(paths[dtype]))
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
    model: pathlib.Path,
    replicas,
    ranks: int,
    steps: int,
    mode: str,
    memory: str = "keep",
) -> Dict:
    nx, ny, nz = replicas
    (workdir / "in.lmp").write_text(
        f"""units metal
atom_style atomic
read_data water.lmp
replicate {nx} {ny} {nz}
mass 1 15.999
mass 2 1.008
pair_style reann mode {mode} memory {memory}
pair_coeff * * {model} O H
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
    args = parser.parse_args(argv)

    from ase.io import write

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        write(tmp / "water.lmp", water_frame(args.data), format="lammps-data", specorder=TYPE_NAMES)
        models = deploy_default_models(tmp, args.dtypes)
        rows = []
        for dtype, memory in itertools.product(args.dtypes, args.memory):
            for size in args.sizes:
                for ranks in args.ranks:
                    for mode in ["images"] if ranks == 1 else args.modes:
                        if mode == "shell" and size > SHELL_MAX_ATOMS:
                            continue
                        steps = args.steps or max(5, min(MAX_STEPS, 200000 // size))
                        workdir = tmp / f"{dtype}_{memory}_{size}_{ranks}_{mode}"
                        workdir.mkdir()
                        (workdir / "water.lmp").write_bytes((tmp / "water.lmp").read_bytes())
                        row = run_lammps(
                            workdir, models[dtype], REPLICAS[size], ranks, steps, mode, memory
                        )
                        rows.append(
                            {
                                "dtype": dtype,
                                "memory": memory,
                                "ranks": ranks,
                                "mode": mode,
                                "steps": steps,
                                **row,
                            }
                        )
                        print(
                            f"  {dtype} memory {memory} {row['atoms']:>6} atoms {ranks} rank(s) "
                            f"{mode}: {row['us_per_atom_step']:.1f} µs/atom-step",
                            file=sys.stderr,
                            flush=True,
                        )

    print(
        f"\npair_style reann, bulk water, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, 1 torch thread per rank\n"
    )
    serial = {
        (r["dtype"], r["memory"], r["atoms"]): r["us_per_atom_step"]
        for r in rows
        if r["ranks"] == 1
    }
    print(
        "| dtype | memory | atoms | ranks | mode | steps | µs/atom-step | speed-up vs 1 rank "
        "| parallel efficiency | pair share | peak RSS per rank (MB) |"
    )
    print("|" + "---|" * 11)
    for row in rows:
        reference = serial.get((row["dtype"], row["memory"], row["atoms"]))
        speedup, efficiency = "–", "–"
        if reference:
            speedup = f"{reference / row['us_per_atom_step']:.2f}"
            efficiency = f"{100 * reference / row['us_per_atom_step'] / row['ranks']:.0f}%"
        print(
            f"| {row['dtype']} | {row['memory']} | {row['atoms']} | {row['ranks']} | {row['mode']} "
            f"| {row['steps']} | "
            f"{row['us_per_atom_step']:.1f} | {speedup} | {efficiency} | "
            f"{100 * row['pair_fraction']:.0f}% | {row['peak_rss_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
