#!/usr/bin/env python
"""Train on a 100,000-frame CO2/Ni(100) ``configuration`` file: setup time and peak memory.

For each ``--num-frames`` (default 1,000, which gives the memory without the data, and 100,000)
it builds a REANN ``configuration`` file in a temporary folder: the real CO2/Ni(100) frames
repeated in order, each copy with Gaussian displacements of every atom (energies and forces are
copied unchanged: only the amount of data matters here), written with
:func:`reann_nequip.data.write_configuration`. Then ``nequip-train configs/reann_co2_ni100.yaml``
runs in a subprocess with overrides that point it at that file: all frames but the last
``--val-frames`` train, the rest validate, and training stops after ``--steps`` optimizer steps.
Before the first step nequip reads the training and validation sets, computes the training-set
statistics (one pass over every training frame, neighbour lists included), reads both sets again
for the fit and runs the sanity validation. The peak resident memory of the training process is
``ru_maxrss`` of a fresh watcher process's children; Lightning's simple profiler times the
training loop.

Example::

    .venv/bin/python benchmarks/bench_data_scale.py
    .venv/bin/python benchmarks/bench_data_scale.py --num-frames 20000 --steps 5 --keep-dir out
"""

import argparse
import dataclasses
import os
import pathlib
import platform
import re
import sys
import tempfile
import time
from typing import Dict, Iterator, List, Optional

import numpy as np
from bench_md import run_with_peak_rss
from provenance import write_json

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "configs" / "reann_co2_ni100.yaml"
DATA = REPO_ROOT.parent / "shared" / "data" / "co2_ni100_reann" / "val" / "configuration"
# a row of Lightning's simple profiler report: action | mean (s) | calls | total (s) | ...
PROFILER_ROW = r"^\|\s*{action}\s*\|\s*([\d.eE+-]+)\s*\|\s*(\d+)\s*\|\s*([\d.eE+-]+)\s*\|"


def displaced_copies(source: pathlib.Path, num_frames: int, sigma: float, seed: int) -> Iterator:
    """``num_frames`` ``ase.Atoms``: the frames of ``source`` in order, repeated, each atom moved
    by a Gaussian of ``sigma`` Å per axis; labels unchanged."""
    from reann_nequip.data import iter_configuration

    originals = list(iter_configuration(source, coordinates="fractional"))
    rng = np.random.default_rng(seed)
    for index in range(num_frames):
        frame = originals[index % len(originals)]
        moved = frame.positions + rng.normal(0.0, sigma, frame.positions.shape)  # [39, 3] Å
        yield dataclasses.replace(frame, positions=moved, header=f"point= {index + 1}").to_atoms()


def build_file(path: pathlib.Path, num_frames: int, sigma: float, seed: int) -> float:
    """Write the large file; returns the seconds it took."""
    from reann_nequip.data import write_configuration

    start = time.perf_counter()
    write_configuration(
        path, displaced_copies(DATA, num_frames, sigma, seed), coordinates="fractional"
    )
    return time.perf_counter() - start


def run_training(
    workdir: pathlib.Path, data_file: pathlib.Path, num_frames: int, args: argparse.Namespace
) -> Dict[str, float]:
    """``nequip-train`` on ``data_file`` in a watcher process; wall time, peak RSS and the
    profiler's time in the training loop."""
    num_train = num_frames - args.val_frames
    command = [
        str(pathlib.Path(sys.executable).parent / "nequip-train"),
        str(CONFIG),
        f"hydra.run.dir={workdir / 'run'}",
        f"data_file={data_file}",
        "run=[train]",
        f'data.train_dataset.frames=":{num_train}"',
        f'data.val_dataset.frames="{num_train}:"',
        f"data.train_dataloader.batch_size={args.batch_size}",
        f"data.val_dataloader.batch_size={args.batch_size}",
        f"++trainer.max_steps={args.steps}",
        "++trainer.max_time=00:00:30:00",
        "++trainer.profiler=simple",
    ]
    start = time.perf_counter()
    result, peak_rss_mib = run_with_peak_rss(
        command, REPO_ROOT, {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    )
    wall = time.perf_counter() - start
    log = result.stdout + result.stderr
    (workdir / "nequip-train.log").write_text(log)
    if result.returncode != 0:
        raise SystemExit(f"nequip-train failed:\n{log[-4000:]}")
    loop = re.search(PROFILER_ROW.format(action="run_training_epoch"), log, re.M)
    steps = re.search(PROFILER_ROW.format(action="run_training_batch"), log, re.M)
    if loop is None or steps is None:
        raise SystemExit(f"no profiler report in the nequip-train output:\n{log[-4000:]}")
    return {
        "wall_s": wall,
        "loop_s": float(loop[3]),
        "steps": int(steps[2]),
        "step_s": float(steps[3]),
        "peak_rss_mib": peak_rss_mib,
    }


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--num-frames",
        type=int,
        nargs="+",
        default=[1000, 100_000],
        help="frames of each file (one run each; the small one shows the memory without data)",
    )
    parser.add_argument("--val-frames", type=int, default=200, help="last frames, validation")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps trained")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="training and validation batch (the config's 128 and 256 alone need > 1.5 GB)",
    )
    parser.add_argument("--sigma", type=float, default=0.02, help="displacement per axis, Å")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the training")
    parser.add_argument(
        "--keep-dir", type=pathlib.Path, default=None, help="keep the files and runs here"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH")
    args = parser.parse_args(argv)
    if not DATA.is_file():
        raise SystemExit(f"error: {DATA} not found (the shared data folder next to the repository)")
    for num_frames in args.num_frames:
        if not 0 < args.val_frames < num_frames:
            parser.error(
                f"--val-frames must be in (0, --num-frames), found {args.val_frames} "
                f"of {num_frames}"
            )

    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for num_frames in args.num_frames:
            workdir = (args.keep_dir or pathlib.Path(tmp)).resolve() / f"frames_{num_frames}"
            workdir.mkdir(parents=True, exist_ok=True)
            data_file = workdir / "configuration"
            write_s = build_file(data_file, num_frames, args.sigma, args.seed)
            size_mib = data_file.stat().st_size / 2**20
            print(
                f"wrote {num_frames} frames ({size_mib:.0f} MiB) in {write_s:.0f} s to {data_file}",
                file=sys.stderr,
                flush=True,
            )
            row = run_training(workdir, data_file, num_frames, args)
            rows.append({"frames": num_frames, "size_mib": size_mib, **row})
            if args.keep_dir is None:
                data_file.unlink()  # free the disk space for the next file now
    load_after = os.getloadavg()[0]

    results = {
        "val_frames": args.val_frames,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "load_average": [load_before, load_after],
        "rows": rows,
    }
    print(
        f"\nnequip-train configs/reann_co2_ni100.yaml; {platform.machine()}, {os.cpu_count()} "
        f"cores, load average {load_before:.2f} -> {load_after:.2f}\n"
    )
    print(markdown(results))
    if args.json:
        write_json(args.json, __file__, results, argv)


def markdown(results: Dict) -> str:
    """The table of a ``--json`` file's ``results``."""
    lines = [
        f"All frames but the last {results['val_frames']} train, {results['steps']} steps of "
        f"{results['batch_size']} frames, OMP_NUM_THREADS={results['threads']}",
        "",
        "| frames | file (MiB) | setup (s) | setup frames/s | peak RSS (MiB) | s/step "
        "| train frames/s |",
        "|" + "---:|" * 7,
    ]
    for row in results["rows"]:
        setup_s = row["wall_s"] - row["loop_s"]
        lines.append(
            f"| {row['frames']} | {row['size_mib']:.0f} | {setup_s:.0f} "
            f"| {(row['frames'] - results['val_frames']) / setup_s:.0f} "
            f"| {row['peak_rss_mib']:.0f} | {row['step_s'] / row['steps']:.2f} "
            f"| {row['steps'] * results['batch_size'] / row['loop_s']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
