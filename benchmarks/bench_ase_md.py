#!/usr/bin/env python
"""ASE molecular dynamics with ``ReannCalculator``: µs per atom per step, by neighbour list.

The default model of the benchmarks (``bench_md.py``; random weights, float32) drives velocity
Verlet on bulk water (the first ``water_deepmd`` frame, replicated) in ASE, one torch thread. The
calculator's neighbour list is the package's cell list (``reann::neighbor_list``) or, for
comparison, vesin's (``vesin.NeighborList``, as nequip's data pipeline uses it), which gives the
same edges; each runs in its own process, alternately, round by round. This is the benchmark by
which the hand-written neighbour list earns its place (csrc/README.md).

Example::

    .venv/bin/python benchmarks/bench_ase_md.py --data ../shared/data/water_deepmd --rounds 3
"""

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np
from bench_md import REPLICAS, deploy_default_models, water_frame
from provenance import write_json

NEIGHBOR_LISTS = ("reann", "vesin")
# the random-weight model has no repulsion: a cool start and few steps keep atoms apart
TEMPERATURE_K = 50.0
WARMUP_STEPS, STEPS, BLOCKS = 3, 6, 4


def use_vesin(calculator) -> None:
    """Make ``calculator`` (a ReannCalculator) build its edges with vesin instead."""
    import torch
    import vesin

    model = calculator.models["energy"]

    def inputs(atoms):
        numbers = torch.from_numpy(atoms.numbers).to(torch.int64)
        neighbors = vesin.NeighborList(cutoff=model.r_max, full_list=True)
        i, j, shifts = neighbors.compute(
            points=atoms.positions,
            box=atoms.cell.array,
            periodic=bool(atoms.pbc.all()),
            quantities="ijS",
        )
        return (
            torch.from_numpy(atoms.get_positions()),
            model.type_of_number[numbers],
            torch.from_numpy(np.stack([i, j]).astype(np.int64)),
            torch.from_numpy(shifts.astype(np.float64) @ atoms.cell.array),
        )

    model.inputs = inputs


def worker(model: str, data: str, size: int, neighbor_list: str) -> Dict:
    import torch
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from reann_nequip.integrations.ase import ReannCalculator

    torch.set_num_threads(1)
    atoms = water_frame(data).repeat(REPLICAS[size])
    atoms.calc = ReannCalculator(model, memory="keep")
    if neighbor_list == "vesin":
        use_vesin(atoms.calc)
    MaxwellBoltzmannDistribution(atoms, temperature_K=TEMPERATURE_K, rng=np.random.default_rng(0))
    dynamics = VelocityVerlet(atoms, 0.5 * units.fs)
    dynamics.run(WARMUP_STEPS)
    blocks = []
    for _ in range(BLOCKS):
        start = time.perf_counter()
        dynamics.run(STEPS)
        blocks.append((time.perf_counter() - start) / STEPS / len(atoms) * 1e6)
    return {"atoms": len(atoms), "us_per_atom_step": min(blocks), "blocks": blocks}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/water_deepmd", help="water_deepmd")
    parser.add_argument("--sizes", type=int, nargs="+", default=[192, 1536], choices=[192, 1536])
    parser.add_argument("--neighbor-lists", nargs="+", default=list(NEIGHBOR_LISTS))
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every configuration")
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(**json.loads(args.worker))))
        return
    runs: Dict[tuple, List[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = str(deploy_default_models(pathlib.Path(tmp), ["float32"])["float32"])
        for round_index in range(args.rounds):
            for size in args.sizes:
                for neighbor_list in args.neighbor_lists:
                    options = {"model": model, "data": args.data, "size": size}
                    options["neighbor_list"] = neighbor_list
                    result = subprocess.run(
                        [sys.executable, __file__, "--worker", json.dumps(options)],
                        capture_output=True,
                        text=True,
                        env={**os.environ, "OMP_NUM_THREADS": "1"},
                    )
                    if result.returncode != 0:
                        raise SystemExit(f"worker {options} failed:\n{result.stderr[-3000:]}")
                    row = json.loads(result.stdout.strip().splitlines()[-1])
                    runs.setdefault((size, neighbor_list), []).append(row["us_per_atom_step"])
                    print(
                        f"  round {round_index + 1}: {size} atoms {neighbor_list}: "
                        f"{row['us_per_atom_step']:.1f} µs/atom-step",
                        file=sys.stderr,
                        flush=True,
                    )
    results = {
        "rounds": args.rounds,
        "runs": [
            {"atoms": size, "neighbor_list": neighbor_list, "us_per_atom_step": values}
            for (size, neighbor_list), values in runs.items()
        ],
    }
    print(
        f"\nASE velocity Verlet with ReannCalculator, bulk water, float32, "
        f"{platform.processor() or platform.machine()}, 1 torch thread, {args.rounds} round(s)\n"
    )
    print(markdown(results))
    if args.json:
        write_json(args.json, __file__, results, argv)


def markdown(results: Dict) -> str:
    """The table of a ``--json`` file's ``results``: every size and neighbour list's best and
    runs, and vesin / reann round by round."""
    runs = {
        (run["atoms"], run["neighbor_list"]): run["us_per_atom_step"] for run in results["runs"]
    }
    lines = [
        "| atoms | neighbour list | µs/atom-step (best) | runs | vesin / reann, same round |",
        "|---|---|---|---|---|",
    ]
    for (size, neighbor_list), values in runs.items():
        ratio = ""
        if neighbor_list == "vesin" and (size, "reann") in runs:
            ratios = [v / r for v, r in zip(values, runs[(size, "reann")])]
            ratio = " / ".join(f"{x:.2f}" for x in ratios) + f" (median {np.median(ratios):.2f})"
        runs_text = " / ".join(f"{v:.1f}" for v in values)
        lines.append(f"| {size} | {neighbor_list} | {min(values):.1f} | {runs_text} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
