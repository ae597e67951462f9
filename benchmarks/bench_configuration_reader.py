#!/usr/bin/env python
"""Peak memory and time of reading a large REANN ``configuration`` file.

Writes a temporary file of ``--num-frames`` frames (39 atoms each with forces, like the CO2/Ni(100)
set, fractional coordinates), then reads it in fresh subprocesses, each reporting its own peak
resident memory (``ru_maxrss``) and wall time:

- ``python + imports``: the interpreter with numpy, torch, ase and nequip imported, nothing read
- ``iter_configuration``: every frame parsed and checked, none kept (the streaming reader)
- ``ReannConfigurationDataset``: every frame parsed, the first ``--keep`` kept as nequip data

Example::

    .venv/bin/python benchmarks/bench_configuration_reader.py --num-frames 100000
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np
from provenance import write_json

NUM_ATOMS = 39


def write_file(path: str, num_frames: int, seed: int) -> None:
    """``num_frames`` frames of 3 molecule atoms + 36 Ni in a 7.52 × 7.52 × 20.32 Å cell, each
    atom on its own site of a 3 × 3 × 5 grid, shifted by up to 0.02 of the cell: atoms stay
    more than 2 Å apart, as the reader's physical checks require."""
    rng = np.random.default_rng(seed)
    symbols = ["O", "O", "C"] + ["Ni"] * 36
    masses = {"O": 15.999, "C": 12.001, "Ni": 58.693}
    grid = np.stack(np.meshgrid(*(np.arange(n) / n for n in (3, 3, 5)), indexing="ij"), -1)
    sites = grid.reshape(-1, 3)
    with open(path, "w") as stream:
        for index in range(num_frames):
            chosen = sites[rng.choice(len(sites), NUM_ATOMS, replace=False)]
            fractional = chosen + rng.uniform(-0.02, 0.02, (NUM_ATOMS, 3))
            forces = rng.normal(0.0, 0.5, (NUM_ATOMS, 3))
            lines = [
                f"point= {index + 1}",
                "7.5203 0.0 0.0",
                "0.0 7.5203 0.0",
                "0.0 0.0 20.3176",
                "pbc 1 1 1",
            ]
            lines += [
                f"{s} {masses[s]} {x:.8f} {y:.8f} {z:.8f} {fx:.6f} {fy:.6f} {fz:.6f}"
                for s, (x, y, z), (fx, fy, fz) in zip(symbols, fractional, forces)
            ]
            lines.append(f"abprop: {rng.uniform(-209.0, -205.0):.5f}")
            stream.write("\n".join(lines) + "\n")


def worker(mode: str, path: str, keep: int) -> None:
    """Run one measurement in this process and print ``frames seconds peak_MiB``."""
    import nequip.data  # noqa: F401  (imports counted in every row alike)

    from reann_nequip.data import ReannConfigurationDataset, iter_configuration

    start = time.perf_counter()
    if mode == "imports":
        frames = 0
    elif mode == "stream":
        frames = sum(1 for _ in iter_configuration(path, coordinates="fractional"))
    elif mode == "dataset":
        frames = len(ReannConfigurationDataset(path, frames=f":{keep}", coordinates="fractional"))
    else:
        raise ValueError(f"unknown mode {mode!r}")
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
    print(f"{frames} {seconds:.3f} {peak_mib:.1f}")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-frames", type=int, default=100_000)
    parser.add_argument("--keep", type=int, default=1000, help="frames the dataset keeps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--worker", nargs=3, metavar=("MODE", "PATH", "KEEP"), help=argparse.SUPPRESS
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH")
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], args.worker[1], int(args.worker[2]))
        return

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "configuration")
        start = time.perf_counter()
        write_file(path, args.num_frames, args.seed)
        size_mib = os.path.getsize(path) / 2**20
        print(
            f"wrote {args.num_frames} frames of {NUM_ATOMS} atoms, {size_mib:.0f} MiB, in "
            f"{time.perf_counter() - start:.0f} s"
        )
        readers = [
            ("python + imports", "imports"),
            ("iter_configuration (keeps none)", "stream"),
            (f"ReannConfigurationDataset (keeps {args.keep})", "dataset"),
        ]
        rows = []
        for label, mode in readers:
            output = subprocess.run(
                [sys.executable, __file__, "--worker", mode, path, str(args.keep)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
            kept, seconds, peak = int(output[-3]), float(output[-2]), float(output[-1])
            expected = {"imports": 0, "stream": args.num_frames, "dataset": args.keep}[mode]
            if kept != min(expected, args.num_frames):
                raise RuntimeError(f"{label}: {kept} frames, expected {expected}")
            parsed = 0 if mode == "imports" else args.num_frames
            rows.append(
                {"reader": label, "frames_read": parsed, "seconds": seconds, "peak_rss_mib": peak}
            )
    results = {
        "num_frames": args.num_frames,
        "atoms_per_frame": NUM_ATOMS,
        "file_mib": size_mib,
        "rows": rows,
    }
    print(markdown(results))
    if args.json:
        write_json(args.json, __file__, results, argv)


def markdown(results: Dict) -> str:
    """The table of a ``--json`` file's ``results``."""
    lines = [
        f"{results['num_frames']} frames of {results['atoms_per_frame']} atoms with forces, "
        f"{results['file_mib']:.0f} MiB",
        "",
        "| reader | frames read | time (s) | peak RSS (MiB) |",
        "|---|---:|---:|---:|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['reader']} | {row['frames_read']} | {row['seconds']:.1f} "
            f"| {row['peak_rss_mib']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
