#!/usr/bin/env python
"""Time REANN against NequIP on bulk water: eager inference, a training step, deployed files.

Both models see the same frames, read from a DeePMD npy-system folder tree. Eager Python: inference
and a training step on 192-atom frames. Deployed: each model's deployed file through its ASE
calculator (REANN: TorchScript from ``nequip-deploy build``; NequIP: AOTInductor from
``nequip-compile --target ase``) on the first frame and its 2x2x2 replica (192 and 1,536 atoms).
Each model and path runs in its own subprocess (this script re-invoked with ``--worker NAME``), so
that the peak resident memory of one model is not mixed with the other's.

The models: REANN's default model of the benchmarks (``bench_md.py``: REANN's own example
hyperparameters) and ``NequIPGNNModel(num_layers=3, l_max=1, num_features=32)``, of comparable
size, both untrained (speed does not depend on the weights). Eager: ``model(data)`` with the
neighbour list precomputed; a training step is forward, energy-per-atom and force MSE, backward
and an Adam step. Deployed: ``calculator.reset()``, then energy and forces of the box, the
neighbour list included (REANN: the package's cell list; NequIP: vesin). Times are medians of
wall-clock times per call after warm-up calls; the process CPU time is given too, which another
program on the machine disturbs far less with one thread. ``NequIP/REANN`` above 1 means REANN is
faster. Peak resident memory is the worker's.

Example::

    .venv/bin/python benchmarks/bench_water.py --data ../shared/data/water_deepmd
    .venv/bin/python benchmarks/bench_water.py --data ../shared/data/water_deepmd --dtype float64
"""

import argparse
import functools
import gc
import json
import logging
import os
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any, Dict, List, Optional

import numpy as np
from bench_md import BIN, R_MAX, REANN_OPTIONS, REPLICAS, TYPE_NAMES, water_frame
from provenance import provenance

MODELS = ("reann", "nequip")
LABELS = {"reann": "REANN", "nequip": "NequIP"}
PATHS = ("eager", "deployed")
# NequIP's hyperparameters, meant to be of a size comparable to REANN's default model
NEQUIP_OPTIONS = {"num_layers": 3, "l_max": 1, "num_features": 32}


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
# the models, the same for the eager and the deployed path
# ------------------------------------------------------------------------------------------------


def frame_graphs(frames: List[Dict[str, np.ndarray]]) -> List[Dict[str, Any]]:
    """nequip ``AtomicDataDict`` of each frame, with its neighbour list at ``R_MAX`` (float64)."""
    from nequip.data import compute_neighborlist_, from_dict

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
    return graphs


def mean_num_neighbors(graphs: List[Dict[str, Any]]) -> float:
    """Edges per atom over all ``graphs``: the models' ``avg_num_neighbors``."""
    from nequip.data import AtomicDataDict

    num_edges = sum(int(AtomicDataDict.num_edges(g)) for g in graphs)
    return num_edges / sum(int(AtomicDataDict.num_nodes(g)) for g in graphs)


def model_config(name: str, dtype: str, avg_num_neighbors: float) -> Dict[str, Any]:
    """The nequip model config (``_target_`` and arguments) of model ``name`` (``reann`` or
    ``nequip``) in ``dtype``; ``avg_num_neighbors`` in edges per atom."""
    common = {
        "seed": 0,
        "model_dtype": dtype,
        "type_names": TYPE_NAMES,
        "r_max": R_MAX,
        "avg_num_neighbors": avg_num_neighbors,
    }
    if name == "reann":
        return {"_target_": "reann_nequip.model.ReannModel", **common, **REANN_OPTIONS}
    elif name == "nequip":
        return {"_target_": "nequip.model.NequIPGNNModel", **common, **NEQUIP_OPTIONS}
    else:
        raise ValueError(f"model must be one of {MODELS}, found {name!r}")


def build_model(config: Dict[str, Any]):
    """The model of a :func:`model_config` (after ``set_global_state()``)."""
    from hydra.utils import get_method

    options = dict(config)
    builder = get_method(options.pop("_target_"))
    with warnings.catch_warnings():
        # NequIP's builder nags about unset per-type scales/shifts; irrelevant for timing
        warnings.filterwarnings("ignore", message=".*per_type_energy_s.*")
        return builder(**options)


def compile_nequip(
    workdir: pathlib.Path,
    data_root: str,
    frames: List[Dict[str, np.ndarray]],
    dtype: str,
    threads: int,
) -> pathlib.Path:
    """The eager NequIP model as ``nequip-compile --mode aotinductor --target ase`` writes it.

    nequip-compile reads a checkpoint: this one is written through Lightning from an untrained
    ``NequIPLightningModule`` holding :func:`model_config` (so the weights are those of the eager
    model); its data section is the first water frame, on which nequip-compile traces the model.
    Inductor fixes the number of OpenMP threads of its kernels at compile time, so nequip-compile
    runs with ``OMP_NUM_THREADS=threads``.
    """
    import lightning
    from ase.io import write
    from nequip.train import NequIPLightningModule
    from nequip.utils import get_current_code_versions
    from nequip.utils.global_state import set_global_state

    set_global_state()
    frame_file = workdir / "water_192.xyz"
    write(frame_file, water_frame(data_root), format="extxyz")
    # nequip-compile needs a validation set too to set up the data module
    frame_data = {
        "_target_": "nequip.data.datamodule.ASEDataModule",
        "seed": 0,
        "train_file_path": str(frame_file),
        "val_file_path": str(frame_file),
        "transforms": [
            {
                "_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper",
                "model_type_names": TYPE_NAMES,
                "chemical_species_to_atom_type_map": {name: name for name in TYPE_NAMES},
            },
            {"_target_": "nequip.data.transforms.NeighborListTransform", "r_max": R_MAX},
        ],
    }
    model = model_config("nequip", dtype, mean_num_neighbors(frame_graphs(frames)))
    info_dict = {
        "versions": get_current_code_versions(verbose=False),
        "data": frame_data,
        "training_module": {"_target_": "nequip.train.NequIPLightningModule", "model": model},
    }
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*per_type_energy_s.*")
        module = NequIPLightningModule(
            model=model,
            num_datasets={"train": 1, "val": 1, "test": 0, "predict": 0},
            info_dict=info_dict,
        )
    trainer = lightning.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.strategy.connect(module)
    checkpoint = workdir / f"nequip_{dtype}.ckpt"
    trainer.save_checkpoint(checkpoint)

    compiled = workdir / f"nequip_{dtype}.nequip.pt2"
    command = [str(BIN / "nequip-compile"), str(checkpoint), str(compiled)]
    command += ["--mode", "aotinductor", "--device", "cpu", "--target", "ase"]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    )
    if result.returncode != 0 or not compiled.exists():
        raise SystemExit(
            f"error: `{' '.join(command)}` failed (exit {result.returncode}):\n"
            f"{result.stderr[-3000:]}"
        )
    return compiled


# ------------------------------------------------------------------------------------------------
# worker: one model and path, one process
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


def _versions() -> Dict[str, str]:
    import nequip
    import torch

    import reann_nequip

    return {
        "torch_version": torch.__version__,
        "nequip_version": nequip.__version__,
        "reann_nequip_version": reann_nequip.__version__,
    }


def run_eager_worker(args: argparse.Namespace) -> Dict[str, Any]:
    """Eager inference and training steps of model ``args.worker`` on the frames of ``args.data``."""
    t_start = time.perf_counter()
    import torch
    from nequip.data import AtomicDataDict
    from nequip.utils.global_state import set_global_state

    set_global_state()
    torch.set_num_threads(args.threads)

    # === data: the same frames, in the same order, for every model ===
    frames = read_frames(args.data, args.num_frames)
    graphs = frame_graphs(frames)
    num_atoms = [len(f["atom_types"]) for f in frames]
    num_edges = [int(AtomicDataDict.num_edges(g)) for g in graphs]
    avg_num_neighbors = mean_num_neighbors(graphs)

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
    model = build_model(model_config(args.worker, args.dtype, avg_num_neighbors))
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

    return {
        "model": args.worker,
        "path": "eager",
        "params": num_params,
        "trainable_params": num_trainable,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        **_versions(),
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


def run_deployed_worker(args: argparse.Namespace) -> Dict[str, Any]:
    """Energy and forces of the first water frame, replicated to each of ``args.sizes`` atoms,
    from the deployed file ``args.deployed_file`` of model ``args.worker`` through its ASE
    calculator; the sizes in increasing order, so the peak RSS after each size is its own."""
    t_start = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    frame = water_frame(args.data)

    # === the calculator: the deployed file and a neighbour list at its cutoff ===
    if args.worker == "reann":
        from reann_nequip.integrations.ase import ReannCalculator

        # with pair_style reann's default allocator, the block cache (as in MD)
        calculator = ReannCalculator(args.deployed_file, memory="keep")
    elif args.worker == "nequip":
        from nequip.integrations.ase import NequIPCalculator

        # nequip's default backend is matscipy; vesin is the faster of its backends (REANN's
        # calculator has its own, reann::neighbor_list)
        calculator = NequIPCalculator.from_compiled_model(
            args.deployed_file,
            device="cpu",
            chemical_species_to_atom_type_map=True,
            neighborlist_backend="vesin",
        )
    else:
        raise ValueError(f"--worker must be one of {MODELS}, found {args.worker!r}")

    def energy_forces(atoms, i: int) -> None:
        # forget the last result, as an MD step's new positions would
        calculator.reset()
        atoms.get_potential_energy()
        if not np.isfinite(atoms.get_forces()).all():
            raise RuntimeError(f"{args.worker}: non-finite forces at {len(atoms)} atoms")

    sizes = []
    for size in sorted(args.sizes):
        atoms = frame.repeat(REPLICAS[size])
        atoms.calc = calculator
        stats = _summary(
            _time_calls(
                functools.partial(energy_forces, atoms),
                args.warmup,
                args.inference_repeats,
                args.min_repeats,
                args.time_limit,
            )
        )
        sizes.append(
            {
                "atoms": len(atoms),
                **stats,
                "us_per_atom": 1000.0 * stats["median_ms"] / len(atoms),
                "cpu_us_per_atom": 1000.0 * stats["cpu_median_ms"] / len(atoms),
                "peak_rss_mb": _maxrss_mb(),
            }
        )
    return {
        "model": args.worker,
        "path": "deployed",
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        **_versions(),
        "deployed_file": args.deployed_file,
        "file_mb": os.path.getsize(args.deployed_file) / 2**20,
        "sizes": sizes,
        "seconds": {"total": time.perf_counter() - t_start},
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
        "sizes",
        "warmup",
        "inference_repeats",
        "train_warmup",
        "train_repeats",
        "min_repeats",
        "time_limit",
    ):
        value = getattr(args, key)
        out += [
            f"--{key.replace('_', '-')}",
            *map(str, value if isinstance(value, list) else [value]),
        ]
    return out


def run_model_in_subprocess(
    name: str, path: str, args: argparse.Namespace, deployed_file: Optional[pathlib.Path] = None
) -> Dict[str, Any]:
    """Runs model ``name`` on ``path`` (``eager`` or ``deployed``, with its ``deployed_file``) in
    a fresh process; returns the worker's numbers."""
    print(f"[bench_water] running {LABELS[name]} {path} ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, f"{name}_{path}.json")
        cmd = [sys.executable, os.path.abspath(__file__), *_forwarded_args(args)]
        cmd += ["--worker", name, "--worker-path", path, "--worker-out", out_file]
        if deployed_file is not None:
            cmd += ["--deployed-file", str(deployed_file)]
        # every library's OpenMP pool (vesin's neighbour lists too) at --threads: idle OpenMP
        # threads spin, which would show as CPU time of the model
        proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        if proc.returncode != 0 or not os.path.exists(out_file):
            raise SystemExit(
                f"error: the {LABELS[name]} {path} worker failed (exit {proc.returncode})"
            )
        with open(out_file) as f:
            return json.load(f)


def prepare_deployed_files(
    workdir: pathlib.Path, args: argparse.Namespace, frames: List[Dict[str, np.ndarray]]
) -> Dict[str, pathlib.Path]:
    """Each model's deployed file in ``args.dtype``: REANN's from ``nequip-deploy build``'s
    Python API (``bench_md``'s default model), NequIP's from ``nequip-compile`` of the eager
    model, whose ``avg_num_neighbors`` comes from ``frames``."""
    from bench_md import deploy_default_models

    files = {}
    for name in args.models:
        start = time.perf_counter()
        if name == "reann":
            files[name] = deploy_default_models(workdir, [args.dtype])[args.dtype]
        elif name == "nequip":
            files[name] = compile_nequip(workdir, args.data, frames, args.dtype, args.threads)
        else:
            raise ValueError(f"model must be one of {MODELS}, found {name!r}")
        print(
            f"[bench_water] {LABELS[name]} deployed to {files[name].name} in "
            f"{time.perf_counter() - start:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    return files


def _markdown_table(header: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(h), *(len(row[j]) for row in rows)) for j, h in enumerate(header)]

    def line(cells: List[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(row) for row in rows)])


def format_table(results: List[Dict[str, Any]]) -> str:
    """The eager workers' inference, training and memory."""
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
    return _markdown_table(header, rows)


def speed_rows(results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per path, size and model: inference µs/atom (wall and CPU), the NequIP/REANN
    ratios of the wall and of the CPU times, and the worker's peak RSS (eager: after inference, before
    training; deployed: after this size)."""
    rows = []
    for r in results:
        if r["path"] == "eager":
            atoms = int(r["atoms_per_frame"])
            rows.append(
                {
                    "path": "eager",
                    "atoms": atoms,
                    "model": r["model"],
                    "dtype": r["dtype"],
                    "us_per_atom": r["inference"]["us_per_atom"],
                    "cpu_us_per_atom": 1000.0 * r["inference"]["cpu_median_ms"] / atoms,
                    "peak_rss_mb": r["rss_mb"]["after_inference_peak"],
                }
            )
        else:
            for size in r["sizes"]:
                rows.append(
                    {
                        "path": "deployed",
                        "model": r["model"],
                        "dtype": r["dtype"],
                        **{k: size[k] for k in ("atoms", "us_per_atom", "cpu_us_per_atom")},
                        "peak_rss_mb": size["peak_rss_mb"],
                    }
                )
    rows.sort(key=lambda row: (PATHS.index(row["path"]), row["atoms"], MODELS.index(row["model"])))
    reann = {(row["path"], row["atoms"]): row for row in rows if row["model"] == "reann"}
    for row in rows:
        reference = reann.get((row["path"], row["atoms"])) if row["model"] == "nequip" else None
        for clock, key in (("wall", "us_per_atom"), ("cpu", "cpu_us_per_atom")):
            row[f"{clock}_ratio_nequip_over_reann"] = (
                None if reference is None else row[key] / reference[key]
            )
    return rows


def format_speed_table(rows: List[Dict[str, Any]]) -> str:
    header = [
        "path",
        "atoms",
        "model",
        "dtype",
        "µs/atom",
        "CPU µs/atom",
        "NequIP/REANN",
        "CPU NequIP/REANN",
        "peak RSS MB",
    ]
    cells = [
        [
            row["path"],
            f"{row['atoms']:,}",
            LABELS[row["model"]],
            row["dtype"],
            f"{row['us_per_atom']:.1f}",
            f"{row['cpu_us_per_atom']:.1f}",
            *(
                "–" if ratio is None else f"{ratio:.2f}"
                for ratio in (
                    row["wall_ratio_nequip_over_reann"],
                    row["cpu_ratio_nequip_over_reann"],
                )
            ),
            f"{row['peak_rss_mb']:.0f}",
        ]
        for row in rows
    ]
    return _markdown_table(header, cells)


def format_rounds_table(rounds: List[List[Dict[str, Any]]]) -> str:
    """Per path and size, REANN's and NequIP's µs/atom and NequIP/REANN in every round (rows of
    :func:`speed_rows`), and the median ratio: the host's speed drifts between workers, and
    rounds show how far that moves the ratio."""

    def per_round(path: str, atoms: int, model: str, key: str) -> List[float]:
        return [
            row[key]
            for rows in rounds
            for row in rows
            if (row["path"], row["atoms"], row["model"]) == (path, atoms, model)
        ]

    table = []
    for path, atoms in sorted(
        {(row["path"], row["atoms"]) for row in rounds[0]},
        key=lambda key: (PATHS.index(key[0]), key[1]),
    ):
        reann = per_round(path, atoms, "reann", "us_per_atom")
        nequip = per_round(path, atoms, "nequip", "us_per_atom")
        ratios = per_round(path, atoms, "nequip", "wall_ratio_nequip_over_reann")
        table.append(
            [
                path,
                f"{atoms:,}",
                " / ".join(f"{value:.1f}" for value in reann),
                " / ".join(f"{value:.1f}" for value in nequip),
                " / ".join(f"{value:.2f}" for value in ratios if value is not None),
                f"{float(np.median(ratios)):.2f}" if ratios and None not in ratios else "–",
            ]
        )
    header = ["path", "atoms", "REANN µs/atom", "NequIP µs/atom", "NequIP/REANN", "median"]
    return f"{len(rounds)} rounds, round by round:\n\n" + _markdown_table(header, table)


def markdown(summary: Dict[str, Any]) -> str:
    """The tables of a ``--json`` file: the eager workers' inference, training and memory, the
    speed of every path and size, and the rounds when there were several."""
    eager = [r for r in summary["results"] if r["path"] == "eager"]
    tables = [format_table(eager)] if eager else []
    tables.append(format_speed_table(summary["speed"]))
    if len(summary["rounds"]) > 1:
        tables.append(format_rounds_table(summary["rounds"]))
    return "\n\n".join(tables)


def headline(summary: Dict[str, Any]) -> List:
    """The README's number: NequIP's time over REANN's for the deployed files through ASE, at
    the largest size."""
    ratios = [
        row
        for row in summary["speed"]
        if row["path"] == "deployed" and row["wall_ratio_nequip_over_reann"] is not None
    ]
    if not ratios:
        return []
    row = max(ratios, key=lambda r: r["atoms"])
    return [
        (
            f"deployed REANN vs NequIP through ASE, {row['atoms']:,} water atoms, {row['dtype']}: "
            "NequIP's time / REANN's",
            f"{row['wall_ratio_nequip_over_reann']:.1f}×",
        )
    ]


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
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        choices=sorted(REPLICAS),
        default=[192, 1536],
        help="atoms of the water boxes of the deployed path",
    )
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed inference (or calculator) calls"
    )
    parser.add_argument(
        "--inference-repeats", type=int, default=10, help="timed inference (or calculator) calls"
    )
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
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every worker this many times, in rounds of all workers; the tables show the "
        "first round, a last table NequIP/REANN in every round and the median",
    )
    parser.add_argument("--json", metavar="OUT", help="also write all numbers to this file")
    parser.add_argument("--worker", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-path", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--deployed-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if not os.path.isdir(args.data):
        parser.error(f"--data {args.data!r} does not exist or is not a directory")
    for key in (
        "num_frames",
        "batch_size",
        "threads",
        "inference_repeats",
        "train_repeats",
        "rounds",
    ):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    args.min_repeats = max(1, args.min_repeats)

    if args.worker:
        if args.worker_path == "eager":
            result = run_eager_worker(args)
        elif args.worker_path == "deployed":
            result = run_deployed_worker(args)
        else:
            raise ValueError(f"--worker-path must be one of {PATHS}, found {args.worker_path!r}")
        with open(args.worker_out, "w") as f:
            json.dump(result, f, indent=2)
        return

    # fail here, before spending time in the workers, if the data are unreadable
    frames = read_frames(args.data, args.num_frames)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        files = (
            prepare_deployed_files(pathlib.Path(tmp), args, frames)
            if "deployed" in args.paths
            else {}
        )
        # every worker right after the other, so that they see about the same machine load
        load = os.getloadavg()
        rounds = []
        for _ in range(args.rounds):
            rounds.append(
                [
                    run_model_in_subprocess(name, path, args, files.get(name))
                    for path in args.paths
                    for name in args.models
                ]
            )
        load_end = os.getloadavg()
    wall = time.perf_counter() - start
    results = rounds[0]

    first = results[0]
    print()
    print(
        f"torch {first['torch_version']}, nequip {first['nequip_version']}, reann_nequip "
        f"{first['reann_nequip_version']}, python {platform.python_version()}, "
        f"{platform.machine()}; torch threads {first['threads']} of {os.cpu_count()} CPUs; "
        f"load average {load[0]:.2f} before the workers, {load_end[0]:.2f} after"
    )
    eager = [r for r in results if r["path"] == "eager"]
    if eager:
        print()
        print(
            f"eager: {len(frames)} frames of {int(eager[0]['atoms_per_frame'])} atoms "
            f"({eager[0]['edges_per_frame']:.0f} edges/frame, avg_num_neighbors "
            f"{eager[0]['avg_num_neighbors']:.2f}, r_max {R_MAX} Å) from {args.data}"
        )
        print(
            f"inference: energy+forces+stress of 1 frame, neighbour list precomputed, median of "
            f"{'/'.join(str(r['inference']['repeats']) for r in eager)} calls after "
            f"{args.warmup} warm-up; training: batch of {args.batch_size} frames, energy+force "
            f"MSE, backward, Adam, median of "
            f"{'/'.join(str(r['training']['repeats']) for r in eager)} steps after "
            f"{args.train_warmup} warm-up"
        )
        print()
        print(format_table(eager))
        by_name = {r["model"]: r for r in eager}
        if "reann" in by_name and "nequip" in by_name:
            reann, nequip = by_name["reann"], by_name["nequip"]
            infer_ratio = nequip["inference"]["ms_per_frame"] / reann["inference"]["ms_per_frame"]
            train_ratio = nequip["training"]["ms_per_step"] / reann["training"]["ms_per_step"]
            print()
            print(
                f"time ratio NequIP/REANN: inference {infer_ratio:.2f}x, "
                f"training {train_ratio:.2f}x"
            )
        print(
            "process CPU time, median (less sensitive to other load when --threads 1): "
            + "; ".join(
                f"{LABELS[r['model']]} inference {r['inference']['cpu_median_ms']:.1f} ms, "
                f"training {r['training']['cpu_median_ms']:.0f} ms"
                for r in eager
            )
        )
        print(
            "RSS: 'base' is the peak after imports and data loading, before the model is built; "
            "'peak' is the peak at the end (inference + training)"
        )
    deployed = [r for r in results if r["path"] == "deployed"]
    if deployed:
        print()
        print(
            "deployed: energy+forces (+stress) through each model's ASE calculator, neighbour "
            "list included (REANN: reann::neighbor_list, NequIP: vesin), of the first frame "
            "replicated to "
            f"{', '.join(str(s) for s in sorted(args.sizes))} atoms; median of "
            f"{'/'.join(str(size['repeats']) for r in deployed for size in r['sizes'])} calls "
            f"after {args.warmup} warm-up"
        )
        print(
            "; ".join(
                f"{LABELS[r['model']]}: {os.path.basename(r['deployed_file'])} "
                f"({r['file_mb']:.1f} MB)"
                for r in deployed
            )
        )
    speed_by_round = [speed_rows(round_results) for round_results in rounds]
    rows = speed_by_round[0]
    print()
    print(format_speed_table(rows))
    print(
        "µs/atom: median wall time per call / atoms (eager: model(data); deployed: calculator "
        "call); CPU µs/atom: the same with process CPU time; NequIP/REANN: ratio of the wall "
        "times, CPU NequIP/REANN: of the CPU times (less sensitive to other load when "
        "--threads 1); peak RSS: of the worker, eager after inference (before training), "
        "deployed after this size (sizes in increasing order)"
    )
    if args.rounds > 1:
        print()
        print(format_rounds_table(speed_by_round))
    print(f"total wall time {wall:.0f} s")

    if args.json:
        summary = {
            **provenance(__file__, argv),
            "args": {
                k: v
                for k, v in vars(args).items()
                if not k.startswith("worker") and k != "deployed_file"
            },
            "cpu_count": os.cpu_count(),
            "load_average_before_workers": load,
            "load_average_after_workers": load_end,
            "wall_seconds": wall,
            "results": results,
            "speed": rows,
            "rounds": speed_by_round,
        }
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
