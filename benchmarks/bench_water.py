#!/usr/bin/env python
"""Time REANN against NequIP on 192-atom bulk water: inference, a training step, peak memory.

Both models see the same frames, read from a DeePMD npy-system folder tree. Each model runs in
its own subprocess (this script re-invoked with ``--worker NAME``), so that the peak resident
memory of one model is not mixed with the other's. See ``benchmarks/README.md``.

Example::

    .venv/bin/python benchmarks/bench_water.py --data ../shared/data/water_deepmd
    .venv/bin/python benchmarks/bench_water.py --data ../shared/data/water_deepmd --dtype float64
"""

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any, Dict, List, Optional

import numpy as np

TYPE_NAMES = ["O", "H"]
R_MAX = 5.0
MODELS = ("reann", "nequip")
LABELS = {"reann": "REANN", "nequip": "NequIP"}


# ------------------------------------------------------------------------------------------------
# DeePMD npy-system reader (numpy only)
# ------------------------------------------------------------------------------------------------


def find_systems(root: str) -> List[str]:
    """Every folder under ``root`` (``root`` included) holding a ``type.raw``, in sorted order."""
    systems = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if "type.raw" in filenames:
            systems.append(dirpath)
    return sorted(systems)


def read_frames(root: str, num_frames: int) -> List[Dict[str, np.ndarray]]:
    """The first ``num_frames`` frames of the tree (systems and ``set.NNN`` folders in sorted order).

    Each frame: ``pos`` (N, 3) Å, ``cell`` (3, 3) Å with cell vectors as rows, ``atom_types`` (N,)
    indexing ``TYPE_NAMES``, ``energy`` eV and ``forces`` (N, 3) eV/Å, all float64.
    """
    systems = find_systems(root)
    if not systems:
        raise SystemExit(f"error: no DeePMD system (a folder with `type.raw`) under {root}")
    frames: List[Dict[str, np.ndarray]] = []
    for system in systems:
        types = np.loadtxt(os.path.join(system, "type.raw"), dtype=np.int64, ndmin=1)
        type_map_file = os.path.join(system, "type_map.raw")
        if os.path.exists(type_map_file):
            with open(type_map_file) as f:
                type_map = f.read().split()
        else:
            type_map = TYPE_NAMES  # DeePMD's default: the types already follow our order
        unknown = sorted({type_map[t] for t in set(types.tolist())} - set(TYPE_NAMES))
        if unknown:
            raise SystemExit(f"error: {system} has elements {unknown}, expected only {TYPE_NAMES}")
        atom_types = np.array([TYPE_NAMES.index(type_map[t]) for t in types], dtype=np.int64)
        num_atoms = len(atom_types)
        set_dirs = sorted(
            d
            for d in os.listdir(system)
            if d.startswith("set.") and os.path.isdir(os.path.join(system, d))
        )
        for set_dir in set_dirs:
            path = os.path.join(system, set_dir)
            arrays = {}
            for key in ("coord", "box", "energy", "force"):
                file = os.path.join(path, f"{key}.npy")
                if not os.path.exists(file):
                    raise SystemExit(f"error: missing {file}")
                arrays[key] = np.load(file).astype(np.float64)
            coord = arrays["coord"].reshape(-1, num_atoms, 3)
            box = arrays["box"].reshape(-1, 3, 3)
            energy = arrays["energy"].reshape(-1)
            force = arrays["force"].reshape(-1, num_atoms, 3)
            for i in range(len(coord)):
                frames.append(
                    {
                        "pos": coord[i],
                        "cell": box[i],
                        "atom_types": atom_types,
                        "energy": energy[i],
                        "forces": force[i],
                    }
                )
                if len(frames) == num_frames:
                    return frames
    if len(frames) < num_frames:
        raise SystemExit(f"error: asked for {num_frames} frames, {root} holds only {len(frames)}")
    return frames


# ------------------------------------------------------------------------------------------------
# worker: one model, one process
# ------------------------------------------------------------------------------------------------


def _maxrss_mb() -> float:
    """Peak resident set size of this process so far, MB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _current_rss_mb() -> Optional[float]:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def _time_calls(
    fn, warmup: int, repeats: int, min_repeats: int, time_limit: float
) -> Dict[str, List[float]]:
    """Call ``fn(i)`` ``warmup`` times untimed, then up to ``repeats`` timed calls.

    Returns the wall and the process CPU time (seconds) of each timed call. Stops early, after at
    least ``min_repeats`` timed calls, once ``time_limit`` seconds of timed calls have passed.
    """
    for i in range(warmup):
        fn(i)
    wall: List[float] = []
    cpu: List[float] = []
    start = time.perf_counter()
    for i in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn(warmup + i)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if len(wall) >= min_repeats and time.perf_counter() - start > time_limit:
            break
    return {"wall": wall, "cpu": cpu}


def _summary(times: Dict[str, List[float]]) -> Dict[str, float]:
    ms = 1000.0 * np.asarray(times["wall"])
    return {
        "median_ms": float(np.median(ms)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "std_ms": float(ms.std()),
        "cpu_median_ms": float(np.median(1000.0 * np.asarray(times["cpu"]))),
        "repeats": len(ms),
    }


def run_worker(args: argparse.Namespace) -> Dict[str, Any]:
    t_start = time.perf_counter()
    import torch
    from nequip.data import AtomicDataDict, compute_neighborlist_, from_dict
    from nequip.model import NequIPGNNModel
    from nequip.utils.global_state import set_global_state

    import reann_nequip
    from reann_nequip.model import ReannModel

    set_global_state()
    torch.set_num_threads(args.threads)

    # === data: the same frames, in the same order, for every model ===
    frames = read_frames(args.data, args.num_frames)
    graphs = []
    for frame in frames:
        data = from_dict(
            {
                "pos": frame["pos"],
                "cell": frame["cell"],
                "pbc": True,
                "atom_types": frame["atom_types"],
            }
        )
        graphs.append(compute_neighborlist_(data, r_max=R_MAX))
    num_atoms = [len(f["atom_types"]) for f in frames]
    num_edges = [int(AtomicDataDict.num_edges(g)) for g in graphs]
    avg_num_neighbors = sum(num_edges) / sum(num_atoms)

    # training batches cycle through the frames: frames 0..B-1, B..2B-1, ... (wrapping around)
    num_batches = max(1, len(frames) // args.batch_size)
    batches = []
    # per-atom reference energies relative to their mean: the models have no energy shift, and
    # the loss should stay O(1) (for timing, only its graph matters, not its value)
    mean_atomic_energy = sum(float(f["energy"]) for f in frames) / sum(num_atoms)
    for b in range(num_batches):
        idx = [(b * args.batch_size + k) % len(frames) for k in range(args.batch_size)]
        batch = AtomicDataDict.batched_from_list([graphs[i] for i in idx])
        ref_energy = torch.tensor(
            [
                (float(frames[i]["energy"]) - mean_atomic_energy * num_atoms[i]) / num_atoms[i]
                for i in idx
            ],
            dtype=torch.float64,
        )
        ref_forces = torch.from_numpy(np.concatenate([frames[i]["forces"] for i in idx]))
        batch_num_atoms = torch.tensor([num_atoms[i] for i in idx], dtype=torch.float64)
        batches.append((batch, batch_num_atoms, ref_energy, ref_forces))

    gc.collect()
    baseline_peak = _maxrss_mb()
    baseline_current = _current_rss_mb()
    t_setup = time.perf_counter() - t_start

    # === model ===
    common = {
        "seed": 0,
        "model_dtype": args.dtype,
        "type_names": TYPE_NAMES,
        "r_max": R_MAX,
        "avg_num_neighbors": avg_num_neighbors,
    }
    with warnings.catch_warnings():
        # NequIP's builder nags about unset per-type scales/shifts; irrelevant for timing
        warnings.filterwarnings("ignore", message=".*per_type_energy_s.*")
        if args.worker == "reann":
            model = ReannModel(
                **common,
                num_gaussians=8,
                l_max=2,
                num_recursions=3,
                energy_network={"hidden": [64, 64]},
                coefficient_network={"hidden": [64, 64]},
            )
        else:
            model = NequIPGNNModel(**common, num_layers=3, l_max=1, num_features=32)
    num_params = sum(p.numel() for p in model.parameters())
    num_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    # === 1. inference: energy + forces (+ stress: the frames are periodic) of one frame ===
    model.eval()

    def infer(i: int) -> None:
        out = model(graphs[i % len(graphs)])
        if not bool(torch.isfinite(out[AtomicDataDict.FORCE_KEY]).all()):
            raise RuntimeError(f"{args.worker}: non-finite forces")

    infer_times = _time_calls(
        infer, args.warmup, args.inference_repeats, args.min_repeats, args.time_limit
    )
    inference_peak = _maxrss_mb()

    # === 2. training step: forward, energy + force MSE, backward, Adam ===
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses: List[float] = []

    def train_step(i: int) -> None:
        batch, batch_num_atoms, ref_energy, ref_forces = batches[i % len(batches)]
        optimizer.zero_grad(set_to_none=True)
        out = model(batch)
        energy = out[AtomicDataDict.TOTAL_ENERGY_KEY].reshape(-1)
        per_atom_energy = energy / batch_num_atoms.to(energy.dtype)
        forces = out[AtomicDataDict.FORCE_KEY]
        loss = torch.nn.functional.mse_loss(
            per_atom_energy, ref_energy.to(energy.dtype)
        ) + torch.nn.functional.mse_loss(forces, ref_forces.to(forces.dtype))
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))

    train_times = _time_calls(
        train_step, args.train_warmup, args.train_repeats, args.min_repeats, args.time_limit
    )
    if not all(np.isfinite(losses)):
        raise RuntimeError(f"{args.worker}: non-finite training loss {losses}")
    final_peak = _maxrss_mb()

    infer_stats = _summary(infer_times)
    train_stats = _summary(train_times)
    atoms_per_frame = float(np.mean(num_atoms))
    infer_ms = infer_stats["median_ms"]
    train_ms = train_stats["median_ms"]
    import nequip

    return {
        "model": args.worker,
        "params": num_params,
        "trainable_params": num_trainable,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "nequip_version": nequip.__version__,
        "reann_nequip_version": reann_nequip.__version__,
        "num_frames": len(frames),
        "atoms_per_frame": atoms_per_frame,
        "edges_per_frame": float(np.mean(num_edges)),
        "avg_num_neighbors": avg_num_neighbors,
        "batch_size": args.batch_size,
        "inference": {
            **infer_stats,
            "ms_per_frame": infer_ms,
            "us_per_atom": 1000.0 * infer_ms / atoms_per_frame,
            "frames_per_s": 1000.0 / infer_ms,
        },
        "training": {
            **train_stats,
            "ms_per_step": train_ms,
            "frames_per_s": 1000.0 * args.batch_size / train_ms,
            "first_loss": losses[0],
            "last_loss": losses[-1],
        },
        "rss_mb": {
            "baseline_peak": baseline_peak,
            "baseline_current": baseline_current,
            "after_inference_peak": inference_peak,
            "peak": final_peak,
        },
        "seconds": {"setup": t_setup, "total": time.perf_counter() - t_start},
    }


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------


def _forwarded_args(args: argparse.Namespace) -> List[str]:
    out = []
    for key in (
        "data",
        "num_frames",
        "batch_size",
        "dtype",
        "threads",
        "warmup",
        "inference_repeats",
        "train_warmup",
        "train_repeats",
        "min_repeats",
        "time_limit",
    ):
        out += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    return out


def run_model_in_subprocess(name: str, args: argparse.Namespace) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, f"{name}.json")
        cmd = [sys.executable, os.path.abspath(__file__), *_forwarded_args(args)]
        cmd += ["--worker", name, "--worker-out", out_file]
        proc = subprocess.run(cmd)
        if proc.returncode != 0 or not os.path.exists(out_file):
            raise SystemExit(f"error: the {LABELS[name]} worker failed (exit {proc.returncode})")
        with open(out_file) as f:
            return json.load(f)


def format_table(results: List[Dict[str, Any]]) -> str:
    header = [
        "model",
        "params",
        "dtype",
        "infer ms/frame",
        "µs/atom",
        "infer frames/s",
        "train ms/step",
        "train frames/s",
        "base RSS MB",
        "peak RSS MB",
    ]
    rows = [
        [
            LABELS[r["model"]],
            f"{r['params']:,}",
            r["dtype"],
            f"{r['inference']['ms_per_frame']:.1f}",
            f"{r['inference']['us_per_atom']:.1f}",
            f"{r['inference']['frames_per_s']:.2f}",
            f"{r['training']['ms_per_step']:.0f}",
            f"{r['training']['frames_per_s']:.2f}",
            f"{r['rss_mb']['baseline_peak']:.0f}",
            f"{r['rss_mb']['peak']:.0f}",
        ]
        for r in results
    ]
    widths = [max(len(h), *(len(row[j]) for row in rows)) for j, h in enumerate(header)]

    def line(cells: List[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(row) for row in rows)])


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", required=True, help="DeePMD npy-system folder tree")
    parser.add_argument("--num-frames", type=int, default=8, help="frames read from --data")
    parser.add_argument("--batch-size", type=int, default=4, help="frames per training step")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--warmup", type=int, default=3, help="untimed inference calls")
    parser.add_argument("--inference-repeats", type=int, default=10, help="timed inference calls")
    parser.add_argument("--train-warmup", type=int, default=2, help="untimed training steps")
    parser.add_argument("--train-repeats", type=int, default=5, help="timed training steps")
    parser.add_argument(
        "--min-repeats", type=int, default=3, help="timed calls made even past --time-limit"
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=30.0,
        help="seconds of timed calls per measurement after which repeats stop early",
    )
    parser.add_argument("--json", metavar="OUT", help="also write all numbers to this file")
    parser.add_argument("--worker", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if not os.path.isdir(args.data):
        parser.error(f"--data {args.data!r} does not exist or is not a directory")
    for key in ("num_frames", "batch_size", "threads", "inference_repeats", "train_repeats"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    args.min_repeats = max(1, args.min_repeats)

    if args.worker:
        result = run_worker(args)
        with open(args.worker_out, "w") as f:
            json.dump(result, f, indent=2)
        return

    # fail here, before spending time in the workers, if the data are unreadable
    frames = read_frames(args.data, args.num_frames)
    start = time.perf_counter()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    results = []
    for name in args.models:
        print(f"[bench_water] running {LABELS[name]} ...", file=sys.stderr, flush=True)
        results.append(run_model_in_subprocess(name, args))
    wall = time.perf_counter() - start

    first = results[0]
    print()
    print(
        f"bench_water: {len(frames)} frames of {int(first['atoms_per_frame'])} atoms "
        f"({first['edges_per_frame']:.0f} edges/frame, avg_num_neighbors "
        f"{first['avg_num_neighbors']:.2f}, r_max {R_MAX} Å) from {args.data}"
    )
    print(
        f"torch {first['torch_version']}, nequip {first['nequip_version']}, reann_nequip "
        f"{first['reann_nequip_version']}, python {platform.python_version()}, "
        f"{platform.machine()}; torch threads {first['threads']} of {os.cpu_count()} CPUs"
        + (f"; load average at start {load[0]:.2f}" if load else "")
    )
    print(
        f"inference: energy+forces+stress of 1 frame, median of "
        f"{'/'.join(str(r['inference']['repeats']) for r in results)} calls after "
        f"{args.warmup} warm-up; training: batch of {args.batch_size} frames, energy+force MSE, "
        f"backward, Adam, median of {'/'.join(str(r['training']['repeats']) for r in results)} "
        f"steps after {args.train_warmup} warm-up"
    )
    print()
    print(format_table(results))
    by_name = {r["model"]: r for r in results}
    if "reann" in by_name and "nequip" in by_name:
        reann, nequip = by_name["reann"], by_name["nequip"]
        infer_ratio = nequip["inference"]["ms_per_frame"] / reann["inference"]["ms_per_frame"]
        train_ratio = nequip["training"]["ms_per_step"] / reann["training"]["ms_per_step"]
        print()
        print(f"time ratio NequIP/REANN: inference {infer_ratio:.2f}x, training {train_ratio:.2f}x")
    print(
        "process CPU time, median (less sensitive to other load when --threads 1): "
        + "; ".join(
            f"{LABELS[r['model']]} inference {r['inference']['cpu_median_ms']:.1f} ms, "
            f"training {r['training']['cpu_median_ms']:.0f} ms"
            for r in results
        )
    )
    print(
        "RSS: 'base' is the peak after imports and data loading, before the model is built; "
        "'peak' is the peak at the end (inference + training)"
    )
    print(f"total wall time {wall:.0f} s")

    if args.json:
        summary = {
            "args": {k: v for k, v in vars(args).items() if not k.startswith("worker")},
            "cpu_count": os.cpu_count(),
            "load_average_at_start": load,
            "wall_seconds": wall,
            "results": results,
        }
        if "reann" in by_name and "nequip" in by_name:
            summary["ratio_nequip_over_reann"] = {
                "inference": infer_ratio,
                "training": train_ratio,
            }
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
