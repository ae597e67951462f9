#!/usr/bin/env python
"""Time nequip's neighbour-list backends on the systems and cutoffs of our configs.

Each frame goes through ``nequip.data.transforms.NeighborListTransform(r_max, backend=...)``, the
transform every ``configs/*.yaml`` applies to each frame it trains on, so the times include
nequip's conversions around the backend call. Systems: CH4 molecules (``examples/ch4``, no cell),
the 39-atom periodic CO2/Ni(100) slab frames, and bulk water of 192 atoms and of 1,536 atoms (the
192-atom box repeated 2 × 2 × 2). Every backend's edges (pair and periodic shift) are checked
against matscipy's, frame by frame.

Example::

    .venv/bin/python benchmarks/bench_neighbor_lists.py
    .venv/bin/python benchmarks/bench_neighbor_lists.py --backends matscipy vesin --min-time 1
"""

import argparse
import importlib.util
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
from provenance import write_json

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared" / "data"
CH4 = REPO_ROOT / "examples" / "ch4" / "ch4_b3lyp_augccpvdz.xyz"
CO2_NI100 = SHARED / "co2_ni100_reann" / "val" / "configuration"
WATER = SHARED / "water_deepmd" / "data" / "data_0" / "set.000"
# nequip's backend name -> the module it needs
BACKEND_MODULES = {
    "ase": "ase",
    "matscipy": "matscipy",
    "vesin": "vesin",
    "alchemiops": "nvalchemiops",
}
REFERENCE_BACKEND = "matscipy"
# (system, r_max in Å, frames timed); CH4 and CO2/Ni(100) at their configs' cutoffs
CASES = [
    ("CH4 (5 atoms, no cell)", 3.5, 200),
    ("CH4 (5 atoms, no cell)", 4.0, 200),
    ("CO2/Ni(100) (39 atoms, periodic)", 5.0, 100),
    ("water (192 atoms)", 5.0, 20),
    ("water (192 atoms)", 6.0, 20),
    ("water (1,536 atoms)", 5.0, 4),
    ("water (1,536 atoms)", 6.0, 4),
]


def load_frames(system: str, num_frames: int) -> List:
    """``num_frames`` frames of ``system`` as ``ase.Atoms``."""
    import ase
    import ase.io

    from reann_nequip.data import iter_configuration

    if system.startswith("CH4"):
        return ase.io.read(CH4, f":{num_frames}")
    if system.startswith("CO2"):
        frames = iter_configuration(CO2_NI100, coordinates="fractional")
        return [next(frames).to_atoms() for _ in range(num_frames)]
    if system.startswith("water"):
        coordinates = np.load(WATER / "coord.npy")[:num_frames].astype(np.float64)
        boxes = np.load(WATER / "box.npy")[:num_frames].astype(np.float64)
        types = np.loadtxt(WATER.parent / "type.raw", dtype=int)
        symbols = [["O", "H"][t] for t in types]
        repeat = 2 if "1,536" in system else 1
        return [
            ase.Atoms(
                symbols, positions=xyz.reshape(-1, 3), cell=box.reshape(3, 3), pbc=True
            ).repeat(repeat)
            for xyz, box in zip(coordinates, boxes)
        ]
    raise ValueError(f"unknown system {system!r}")


def geometry(atoms):
    """The fields a neighbour list reads, as nequip data (no labels)."""
    from nequip.data import AtomicDataDict, from_dict

    return from_dict(
        {
            AtomicDataDict.POSITIONS_KEY: atoms.positions,
            AtomicDataDict.CELL_KEY: np.asarray(atoms.cell),
            AtomicDataDict.PBC_KEY: atoms.pbc,
            AtomicDataDict.ATOMIC_NUMBERS_KEY: atoms.numbers,
        }
    )


def edge_set(data) -> Set[Tuple[int, ...]]:
    """Edges as (center, neighbour, shift_a, shift_b, shift_c)."""
    from nequip.data import AtomicDataDict

    index = data[AtomicDataDict.EDGE_INDEX_KEY].T.tolist()  # [num_edges, 2]
    if AtomicDataDict.EDGE_CELL_SHIFT_KEY in data:
        shifts = data[AtomicDataDict.EDGE_CELL_SHIFT_KEY].round().long().tolist()
    else:
        shifts = [[0, 0, 0]] * len(index)
    return {(i, j, *shift) for (i, j), shift in zip(index, shifts)}


def time_backends(frames: List, r_max: float, backends: List[str], min_time: float) -> Dict:
    """Per backend: the median CPU µs per frame over passes through ``frames`` (after one untimed
    pass; at least 3 passes and ``min_time`` seconds each), and the edges of every frame.

    The backends still timing take turns pass by pass, so a change of load on a shared machine
    hits them alike; process CPU time (the backends run on one thread) is much less affected by
    that load than wall time."""
    from nequip.data.transforms import NeighborListTransform

    transforms = {b: NeighborListTransform(r_max=r_max, backend=b) for b in backends}
    edges = {b: [edge_set(t(frame.copy())) for frame in frames] for b, t in transforms.items()}
    per_frame = {b: [] for b in backends}
    spent = dict.fromkeys(backends, 0.0)
    while True:
        pending = [b for b in backends if len(per_frame[b]) < 3 or spent[b] < min_time]
        if not pending:
            break
        for backend in pending:
            tick = time.process_time()
            for frame in frames:
                transforms[backend](frame.copy())
            seconds = time.process_time() - tick
            spent[backend] += seconds
            per_frame[backend].append(seconds / len(frames))
    return {
        b: {"us_per_frame": 1e6 * statistics.median(per_frame[b]), "edges": edges[b]}
        for b in backends
    }


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backends", nargs="+", default=list(BACKEND_MODULES), choices=list(BACKEND_MODULES)
    )
    parser.add_argument(
        "--min-time", type=float, default=0.5, help="CPU seconds of timed passes per backend"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH")
    args = parser.parse_args(argv)
    for path in (CO2_NI100, WATER):
        if not path.exists():
            raise SystemExit(f"error: {path} not found (the shared data folder)")

    from nequip.utils.global_state import set_global_state

    set_global_state()
    backends = [b for b in args.backends if importlib.util.find_spec(BACKEND_MODULES[b])]
    missing = sorted(set(args.backends) - set(backends))
    if REFERENCE_BACKEND not in backends:
        raise SystemExit(f"error: the reference backend {REFERENCE_BACKEND} is not installed")
    load_before = os.getloadavg()[0]
    rows = []
    for system, r_max, num_frames in CASES:
        frames = [geometry(atoms) for atoms in load_frames(system, num_frames)]
        results = time_backends(frames, r_max, backends, args.min_time)
        reference = results[REFERENCE_BACKEND]["edges"]
        for backend, result in results.items():
            if result["edges"] != reference:
                differing = [i for i, e in enumerate(result["edges"]) if e != reference[i]]
                raise SystemExit(
                    f"error: {backend} and {REFERENCE_BACKEND} disagree on {system} at r_max "
                    f"{r_max} Å, frames {differing[:5]}"
                )
        edges = statistics.mean(len(e) for e in reference)
        rows.append(
            {
                "system": system,
                "r_max": r_max,
                "edges": edges,
                "us_per_frame": {b: r["us_per_frame"] for b, r in results.items()},
            }
        )
        print(f"  {system}, r_max {r_max} Å done", file=sys.stderr, flush=True)

    load_after = os.getloadavg()[0]
    results = {
        "backends": backends,
        "not_installed": missing,
        "load_average": [load_before, load_after],
        "rows": rows,
    }
    print(
        f"\nNeighborListTransform, {platform.machine()}, {os.cpu_count()} cores, load average "
        f"{load_before:.2f} -> {load_after:.2f}\n"
    )
    print(markdown(results))
    if args.json:
        write_json(args.json, __file__, results, argv)


def markdown(results: Dict) -> str:
    """The table of a ``--json`` file's ``results``."""
    backends = results["backends"]
    missing = results["not_installed"]
    lines = [
        "CPU µs per frame (median of passes); edges identical across backends"
        + (f"; not installed: {', '.join(missing)}" if missing else ""),
        "",
        f"| system | r_max (Å) | edges/frame | {' | '.join(backends)} | fastest |",
        "|---|---:|---:|" + "---:|" * len(backends) + "---|",
    ]
    for row in results["rows"]:
        times = row["us_per_frame"]
        fastest = min(times, key=times.get)
        cells = " | ".join(f"{times[b]:.0f}" for b in backends)
        lines.append(
            f"| {row['system']} | {row['r_max']:g} | {row['edges']:.0f} | {cells} | {fastest} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
