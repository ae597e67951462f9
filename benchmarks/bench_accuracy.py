#!/usr/bin/env python
"""REANN against NequIP at equal training time: test errors, learning curves and MD cost.

For each data set, both models train with ``nequip-train``, one after the other, each for the
same wall-clock budget (``--minutes``) on the same threads, on the same training and validation
frames; both are then tested on the same held-out frames. REANN trains with the recommended
config of the data set's kind (``configs/reann_molecules.yaml``, ``configs/reann_condensed.yaml``);
NequIP with the same data, loss, metrics, EMA and budget, its model and optimiser those of
``NEQUIP`` below. A checkpoint every ``--curve-seconds`` gives the learning curve (test force MAE
against training wall-clock time, read from Lightning's timer in each checkpoint), and the report
gives REANN's time to reach NequIP's final test force error. MD cost: energy and forces of a test
frame through each model's ASE calculator (REANN: ``nequip-deploy``'s TorchScript file; NequIP:
``nequip-compile``'s AOTInductor file), µs per atom, one thread. ``--json`` is written after every
data set and seed; with ``--merge`` a run adds its rows to the file's, so seeds and data sets can
be run one at a time.

Data sets (``--datasets``):

- ``ch4``: examples/ch4, 450 frames for training and validation, 50 test frames, drawn at random;
- ``ethanol``: examples/molecules, MD trajectory A for training and validation, B for testing;
- ``malonaldehyde``: the same, a molecule the recommended settings were not tuned on;
- ``water``: ../shared/data/water_deepmd, systems data_0 to data_2 for training and validation,
  data_3 for testing (192 atoms, periodic);
- ``co2_ni100``: ../shared/data/co2_ni100_reann, frames 0 to 799 for training and validation, the
  last 191 for testing (39 atoms, periodic slab).

Example::

    .venv/bin/python benchmarks/bench_accuracy.py --datasets ethanol --minutes 15 --seeds 1 2 3
    .venv/bin/python benchmarks/bench_accuracy.py --datasets ch4 --minutes 1 --no-md-cost
    .venv/bin/python benchmarks/bench_accuracy.py --datasets water --seeds 2 --merge --json r.json
"""

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np
from provenance import machine, provenance

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared" / "data"
BIN = pathlib.Path(sys.executable).parent
MODELS = ("reann", "nequip")
LABELS = {"reann": "REANN", "nequip": "NequIP"}
# NequIP: its model (of a size comparable to REANN's) and optimiser, the other settings shared
NEQUIP = {
    "model": {
        "_target_": "nequip.model.NequIPGNNModel",
        "num_layers": 3,
        "l_max": 1,
        "num_features": 32,
        "radial_mlp_depth": 2,
        "radial_mlp_width": 64,
    },
    "optimizer": {"_target_": "torch.optim.Adam", "lr": 0.005},
    "lr_scheduler": {
        "scheduler": {
            "_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau",
            "factor": 0.5,
            "patience": 20,
            "min_lr": 1.0e-5,
        },
        "monitor": "val0_epoch/weighted_sum",
        "interval": "epoch",
        "frequency": 1,
    },
}


@dataclasses.dataclass
class Dataset:
    """A data set: its frames for training and validation (``pool``) and for testing."""

    type_names: List[str]
    r_max: float
    config: str  # REANN's recommended config
    frames: Callable[[], tuple]  # () -> (pool, test), lists of ase.Atoms with energy and forces
    val: int  # validation frames, out of the pool
    isolated_atom_energies: Optional[Dict[str, float]] = None  # eV, the per-type shifts


def _read_xyz(path: pathlib.Path) -> list:
    import ase.io

    return ase.io.read(path, ":")


def _ch4():
    frames = _read_xyz(REPO_ROOT / "examples" / "ch4" / "ch4_b3lyp_augccpvdz.xyz")
    order = np.random.default_rng(0).permutation(len(frames))
    return [frames[i] for i in order[:450]], [frames[i] for i in order[450:]]


def _molecule(name: str) -> Callable[[], tuple]:
    def frames():
        path = REPO_ROOT / "examples" / "molecules" / f"{name}_b3lyp_631gd.xyz"
        atoms = _read_xyz(path)
        return (
            [a for a in atoms if a.info["trajectory"] == "A"],
            [a for a in atoms if a.info["trajectory"] == "B"],
        )

    return frames


def _water():
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    root = SHARED / "water_deepmd" / "data"
    if not root.is_dir():
        raise SystemExit(f"error: no water data at {root} (the shared data folder)")
    systems = {}
    for system in sorted(root.glob("data_*")):
        names = (system / "type_map.raw").read_text().split()
        symbols = [names[t] for t in np.loadtxt(system / "type.raw", dtype=int)]
        frames = []
        for folder in sorted(system.glob("set.*")):
            coord, box = np.load(folder / "coord.npy"), np.load(folder / "box.npy")
            energy, force = np.load(folder / "energy.npy"), np.load(folder / "force.npy")
            for i in range(len(coord)):
                atoms = Atoms(
                    symbols, positions=coord[i].reshape(-1, 3), cell=box[i].reshape(3, 3), pbc=True
                )
                atoms.calc = SinglePointCalculator(
                    atoms, energy=float(energy[i]), forces=force[i].reshape(-1, 3)
                )
                frames.append(atoms)
        systems[system.name] = frames
    pool = [a for name in ("data_0", "data_1", "data_2") for a in systems[name]]
    return pool, systems["data_3"]


def _co2_ni100():
    from reann_nequip.data import read_configuration

    path = SHARED / "co2_ni100_reann" / "val" / "configuration"
    if not path.is_file():
        raise SystemExit(f"error: no CO2/Ni(100) data at {path} (the shared data folder)")
    frames = read_configuration(str(path), ":", coordinates="fractional")
    return frames[:800], frames[800:]


def _isolated(path: pathlib.Path) -> Dict[str, float]:
    return json.loads(path.read_text())


def _labelled(frames: list) -> list:
    """The frames with their geometry, energy and forces only (no other ASE info: a CH4 frame's
    dipole would be read by nequip as a per-atom field)."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    out = []
    for frame in frames:
        atoms = Atoms(frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
        atoms.calc = SinglePointCalculator(
            atoms, energy=frame.get_potential_energy(), forces=frame.get_forces()
        )
        out.append(atoms)
    return out


DATASETS = {
    "ch4": Dataset(
        ["C", "H"],
        4.0,
        "reann_molecules",
        _ch4,
        50,
        _isolated(REPO_ROOT / "examples" / "ch4" / "isolated_atom_energies.json"),
    ),
    **{
        name: Dataset(
            ["C", "H", "O"],
            5.0,
            "reann_molecules",
            _molecule(name),
            50,
            _isolated(REPO_ROOT / "examples" / "molecules" / "isolated_atom_energies.json"),
        )
        for name in ("ethanol", "malonaldehyde")
    },
    "water": Dataset(["O", "H"], 5.0, "reann_condensed", _water, 30),
    "co2_ni100": Dataset(["O", "C", "Ni"], 5.0, "reann_condensed", _co2_ni100, 80),
}


# === training ===


def training_config(
    model: str, dataset: Dataset, pool_file: pathlib.Path, num_pool: int, args, seed: int
) -> dict:
    """The nequip-train config of ``model`` on ``dataset``: REANN's recommended config with the
    data set's files, elements and cutoff; for NequIP, the same with NequIP's model and optimiser."""
    import yaml
    from omegaconf import ListConfig, OmegaConf

    config = OmegaConf.load(REPO_ROOT / "configs" / f"{args.reann_config or dataset.config}.yaml")
    for override in [*args.overrides, *(args.reann_overrides if model == "reann" else [])]:
        key, value = override.split("=", 1)
        # values as YAML: numbers, lists, mappings and booleans keep their types
        value = yaml.safe_load(value)
        if key.endswith("+"):
            target = OmegaConf.select(config, key[:-1])
            if not isinstance(target, ListConfig):
                raise SystemExit(f"error: `{override}`: `{key[:-1]}` is not a list of the config")
            target.append(value)
        else:
            OmegaConf.update(config, key, value, force_add=True)
    config = OmegaConf.to_container(config)
    config.update(
        seed=seed,
        data_file=str(pool_file),
        cutoff_radius=dataset.r_max,
        model_type_names=dataset.type_names,
        run=["train"],
    )
    config["data"]["split_dataset"].update(
        train=num_pool - dataset.val, val=dataset.val, test=0, file_path="${data_file}"
    )
    config["data"].pop("exclude_keys", None)
    trainer = config["trainer"]
    if args.epochs:
        # a fixed amount of training, whatever the host's speed: for comparing settings by what
        # they learn per epoch on a busy machine
        trainer.pop("max_time", None)
        trainer["max_epochs"] = args.epochs
        # the timer max_time adds: the learning curve reads the training time from it
        trainer["callbacks"].append({"_target_": "lightning.pytorch.callbacks.Timer"})
    else:
        trainer["max_time"] = f"00:{args.minutes // 60:02d}:{args.minutes % 60:02d}:00"
        trainer["max_epochs"] = -1
    # checkpoints for the learning curve, every few seconds of training
    trainer["callbacks"].append(
        {
            "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
            "dirpath": "${hydra:runtime.output_dir}/curve",
            "filename": "{step}",
            "save_top_k": -1,
            "train_time_interval": {
                "_target_": "datetime.timedelta",
                "seconds": args.curve_seconds,
            },
        }
    )
    module = config["training_module"]
    model_config = module["model"]
    if dataset.isolated_atom_energies:
        model_config["per_type_energy_shifts"] = {
            name: dataset.isolated_atom_energies[name] for name in dataset.type_names
        }
    if model == "nequip":
        module["model"] = {
            **NEQUIP["model"],
            **{
                key: model_config[key]
                for key in (
                    "seed",
                    "model_dtype",
                    "type_names",
                    "r_max",
                    "avg_num_neighbors",
                    "per_type_energy_shifts",
                    "per_type_energy_scales",
                )
            },
        }
        module["optimizer"] = dict(NEQUIP["optimizer"])
        module["lr_scheduler"] = dict(NEQUIP["lr_scheduler"])
        # the REANN training schedule, where a config has one, is REANN's
        trainer["callbacks"] = [
            c for c in trainer["callbacks"] if "ReannTrainingSchedule" not in c["_target_"]
        ]
    return config


def train(model: str, run_dir: pathlib.Path, config: dict, threads: int) -> float:
    """nequip-train of ``config`` in ``run_dir``; returns its wall-clock seconds."""
    import yaml

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    result = subprocess.run(
        [
            str(BIN / "nequip-train"),
            "-cd",
            str(run_dir),
            "-cn",
            "config",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    seconds = time.perf_counter() - start
    (run_dir / "train.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(
            f"error: {model} training failed, see {run_dir / 'train.log'}:\n{result.stderr[-3000:]}"
        )
    return seconds


# === evaluation ===


def graph(atoms, type_names: List[str], r_max: float) -> dict:
    """``atoms`` as a nequip data dict with atom types and its neighbour list."""
    from nequip.data import compute_neighborlist_, from_ase

    from reann_nequip.data import ChemicalSpeciesToAtomTypeMapper

    mapper = ChemicalSpeciesToAtomTypeMapper(model_type_names=type_names)
    return compute_neighborlist_(mapper(from_ase(atoms)), r_max=r_max)


def test_errors(
    checkpoint: pathlib.Path, frames: list, type_names: List[str], r_max: float
) -> dict:
    """Energy (meV, meV/atom) and force (meV/Å) MAE and RMSE of a checkpoint (EMA weights) on
    ``frames``."""
    from nequip.data import AtomicDataDict
    from nequip.model.saved_models.load_utils import load_saved_model

    model = load_saved_model(str(checkpoint)).eval()
    energy_errors, per_atom_errors, force_errors = [], [], []
    for start in range(0, len(frames), 32):
        chunk = frames[start : start + 32]
        graphs = [graph(a, type_names, r_max) for a in chunk]
        out = model(AtomicDataDict.batched_from_list(graphs))
        energies = out[AtomicDataDict.TOTAL_ENERGY_KEY].detach().double().view(-1).numpy()
        forces = out[AtomicDataDict.FORCE_KEY].detach().double().numpy()
        reference_forces = np.concatenate([a.get_forces() for a in chunk])
        for atoms, energy in zip(chunk, energies):
            error = energy - atoms.get_potential_energy()
            energy_errors.append(error)
            per_atom_errors.append(error / len(atoms))
        force_errors.append((forces - reference_forces).ravel())
    energy, per_atom = np.abs(energy_errors), np.abs(per_atom_errors)
    force = np.abs(np.concatenate(force_errors))
    return {
        "energy_mae_meV": 1000 * float(energy.mean()),
        "energy_rmse_meV": 1000 * float(np.sqrt((energy**2).mean())),
        "energy_mae_meV_per_atom": 1000 * float(per_atom.mean()),
        "forces_mae_meV_per_A": 1000 * float(force.mean()),
        "forces_rmse_meV_per_A": 1000 * float(np.sqrt((force**2).mean())),
    }


def learning_curve(run_dir: pathlib.Path, frames, dataset: Dataset) -> List[dict]:
    """Test force MAE of every curve checkpoint against its training time (Lightning's timer)."""
    import torch

    points = []
    for checkpoint in sorted((run_dir / "curve").glob("*.ckpt")):
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        (timer,) = [v for k, v in state["callbacks"].items() if k.startswith("Timer")]
        seconds = float(timer["time_elapsed"]["train"])
        errors = test_errors(checkpoint, frames, dataset.type_names, dataset.r_max)
        points.append({"seconds": seconds, "step": int(state["global_step"]), **errors})
    return sorted(points, key=lambda p: p["seconds"])


def compile_data(frame, dataset: Dataset, path: pathlib.Path) -> None:
    """``frame`` in a periodic box, as the data file of ``nequip-compile --data-path`` (a
    TorchScript module whose buffers are the fields): nequip-compile checks the compiled model
    against the eager one on every output, and the stress of a frame without a cell is NaN on
    both, which fails the check."""
    import torch

    atoms = frame.copy()
    if not atoms.pbc.all():
        extent = np.ptp(atoms.positions, axis=0).max()
        atoms.set_cell([extent + 2 * dataset.r_max + 1.0] * 3)
        atoms.center()
        atoms.pbc = True
    data = graph(atoms, dataset.type_names, dataset.r_max)
    holder = torch.nn.Module()
    for key, value in data.items():
        if isinstance(value, torch.Tensor):
            holder.register_buffer(key, value)
    torch.jit.save(torch.jit.script(holder), str(path))


def md_cost(model: str, run_dir: pathlib.Path, frame, dataset: Dataset, threads: int) -> float:
    """µs per atom of one energy and force evaluation of ``frame`` through the model's ASE
    calculator, on its deployed file (one torch thread, median of repeated calls)."""
    import torch

    checkpoint = run_dir / "best.ckpt"
    if model == "reann":
        from reann_nequip.deploy import deploy
        from reann_nequip.integrations.ase import ReannCalculator

        deployed = run_dir / "model.pth"
        deploy(str(checkpoint), str(deployed))
        calculator = ReannCalculator(str(deployed), memory="keep")
    else:
        from nequip.integrations.ase import NequIPCalculator

        compiled = run_dir / "model.nequip.pt2"
        compile_data(frame, dataset, run_dir / "compile_data.pt")
        command = [str(BIN / "nequip-compile"), str(checkpoint), str(compiled)]
        command += ["--mode", "aotinductor", "--device", "cpu", "--target", "ase"]
        command += ["--data-path", str(run_dir / "compile_data.pt")]
        result = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
        if result.returncode != 0:
            raise SystemExit(f"error: {' '.join(command)} failed:\n{result.stderr[-3000:]}")
        calculator = NequIPCalculator.from_compiled_model(
            str(compiled),
            device="cpu",
            chemical_species_to_atom_type_map=True,
            neighborlist_backend="vesin",
        )
    torch.set_num_threads(1)
    atoms = frame.copy()
    atoms.calc = calculator
    times = []
    for i in range(23):
        atoms.rattle(0.001, seed=i)
        start = time.perf_counter()
        atoms.get_forces()
        if i >= 3:
            times.append(time.perf_counter() - start)
    torch.set_num_threads(threads)
    return 1e6 * float(np.median(times)) / len(atoms)


def time_to_reach(curve: List[dict], target: float) -> Optional[float]:
    """The first training time (s) at which the curve's test force MAE is at most ``target``."""
    for point in curve:
        if point["forces_mae_meV_per_A"] <= target:
            return point["seconds"]
    return None


# === driver ===


def run_dataset(name: str, args, workdir: pathlib.Path) -> Iterator[dict]:
    """Train and test both models on data set ``name``, one seed after another; yields each
    seed's row as soon as it is complete."""
    import ase.io

    dataset = DATASETS[name]
    pool, test = (_labelled(frames) for frames in dataset.frames())
    pool_file = workdir / f"{name}_pool.xyz"
    ase.io.write(pool_file, pool, format="extxyz")
    for seed in args.seeds:
        row = {
            "dataset": name,
            "seed": seed,
            "pool": len(pool),
            "test": len(test),
            "host": host(machine()),
        }
        for model in args.models:
            run_dir = workdir / name / f"seed{seed}" / model
            config = training_config(model, dataset, pool_file, len(pool), args, seed)
            print(f"{name} seed {seed}: training {LABELS[model]} ...", file=sys.stderr, flush=True)
            wall = train(model, run_dir, config, args.threads)
            final = test_errors(run_dir / "best.ckpt", test, dataset.type_names, dataset.r_max)
            curve = learning_curve(run_dir, test, dataset)
            steps = max((p["step"] for p in curve), default=0)
            cost = md_cost(model, run_dir, test[0], dataset, args.threads) if args.md_cost else None
            row[model] = {
                "final": final,
                "curve": curve,
                "wall_seconds": wall,
                "steps": steps,
                "md_us_per_atom": cost,
            }
            print(
                f"  {LABELS[model]}: test force MAE {final['forces_mae_meV_per_A']:.1f} meV/Å, "
                f"energy MAE {final['energy_mae_meV']:.1f} meV",
                file=sys.stderr,
                flush=True,
            )
        if set(MODELS) <= set(args.models):
            target = row["nequip"]["final"]["forces_mae_meV_per_A"]
            row["reann_seconds_to_nequip_final"] = time_to_reach(row["reann"]["curve"], target)
        yield row


def host(entry: dict) -> str:
    """The CPU and kernel level of a ``machine()`` entry, which a row records: its steps in its
    minutes depend on them, and ``--merge`` files gather rows of several runs."""
    return f"{entry['cpu']}, {entry['isa']}"


def rows_with_hosts(document: dict) -> List[dict]:
    """The rows of a ``--json`` file, each with its host ("not recorded" in files older than
    the host entry: their rows may come from several runs)."""
    return [{"host": "not recorded", **row} for row in document["rows"]]


# settings a --merge run must share with the file it adds to
MERGE_SETTINGS = (
    "models",
    "minutes",
    "epochs",
    "threads",
    "curve_seconds",
    "md_cost",
    "reann_config",
    "overrides",
    "reann_overrides",
)


def previous_rows(path: pathlib.Path, args) -> List[dict]:
    """The rows of an earlier ``--json`` file (none if there is no file), for ``--merge``; its
    settings must be this run's."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    for key in MERGE_SETTINGS:
        if data["arguments"].get(key) != getattr(args, key):
            raise SystemExit(
                f"error: {path} was made with {key}={data['arguments'].get(key)!r}, this run "
                f"has {getattr(args, key)!r}; --merge adds only to results of the same settings"
            )
    return rows_with_hosts(data)


def merged(previous: List[dict], new: List[dict]) -> List[dict]:
    """One row per data set and seed, a new row replacing a previous one of the same data set
    and seed, ordered by data set (as in ``DATASETS``) and seed."""
    by_key = {(row["dataset"], row["seed"]): row for row in [*previous, *new]}
    order = list(DATASETS)
    return [by_key[key] for key in sorted(by_key, key=lambda k: (order.index(k[0]), k[1]))]


def one_run_argv(args, rows: List[dict]) -> List[str]:
    """The arguments of a single run that makes all of ``rows`` (the command a ``--json``
    file records, also when it was filled by several ``--merge`` runs)."""
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    seeds = sorted({row["seed"] for row in rows})
    argv = ["--datasets", *datasets, "--models", *args.models]
    argv += ["--epochs", str(args.epochs)] if args.epochs else ["--minutes", str(args.minutes)]
    argv += ["--seeds", *map(str, seeds), "--threads", str(args.threads)]
    argv += ["--curve-seconds", str(args.curve_seconds)]
    argv += [] if args.md_cost else ["--no-md-cost"]
    argv += ["--reann-config", args.reann_config] if args.reann_config else []
    argv += ["--overrides", *args.overrides] if args.overrides else []
    argv += ["--reann-overrides", *args.reann_overrides] if args.reann_overrides else []
    argv += ["--json", args.json] + (["--plot", args.plot] if args.plot else [])
    return argv


def write_results(path: pathlib.Path, rows: List[dict], args) -> None:
    """The ``--json`` file of ``rows``: the command of one run that makes them all, the machine,
    the arguments and the rows."""
    argv = one_run_argv(args, rows)
    arguments = {
        **vars(args),
        "datasets": list(dict.fromkeys(row["dataset"] for row in rows)),
        "seeds": sorted({row["seed"] for row in rows}),
    }
    document = {**provenance(__file__, argv), "arguments": arguments, "rows": rows}
    path.write_text(json.dumps(document, indent=1))


def format_report(rows: List[dict], args) -> str:
    budget = f"{args.epochs} epochs" if args.epochs else f"{args.minutes} min"
    lines = [
        f"Each model {budget} of nequip-train on {args.threads} threads; test errors of "
        "the best (validation) checkpoint, EMA weights."
        + (f" Learning curves: `{args.plot}`." if args.plot else ""),
        "",
        "| data | seed | model | energy MAE (meV) | energy RMSE (meV) | force MAE (meV/Å) | "
        "force RMSE (meV/Å) | steps | MD cost (µs/atom) | host |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for model in args.models:
            result = row[model]
            f = result["final"]
            cost = "–" if result["md_us_per_atom"] is None else f"{result['md_us_per_atom']:.1f}"
            lines.append(
                f"| {row['dataset']} | {row['seed']} | {LABELS[model]} | "
                f"{f['energy_mae_meV']:.1f} | {f['energy_rmse_meV']:.1f} | "
                f"{f['forces_mae_meV_per_A']:.1f} | {f['forces_rmse_meV_per_A']:.1f} | "
                f"{result['steps']} | {cost} | {row['host']} |"
            )
    if set(MODELS) <= set(args.models):
        lines += [
            "",
            "| data | seed | REANN / NequIP force MAE | energy MAE ratio | REANN reaches NequIP's "
            "final force MAE after |",
            "|---|---|---|---|---|",
        ]
        for row in rows:
            reann, nequip = row["reann"]["final"], row["nequip"]["final"]
            reach = row["reann_seconds_to_nequip_final"]
            lines.append(
                f"| {row['dataset']} | {row['seed']} | "
                f"{reann['forces_mae_meV_per_A'] / nequip['forces_mae_meV_per_A']:.2f} | "
                f"{reann['energy_mae_meV'] / nequip['energy_mae_meV']:.2f} | "
                f"{'not reached' if reach is None else f'{reach / 60:.1f} min'} |"
            )
        lines += [
            "",
            "| data | seeds | REANN force MAE (meV/Å) | NequIP force MAE (meV/Å) | "
            "REANN / NequIP | median REANN / NequIP |",
            "|---|---|---|---|---|---|",
        ]
        for name, group in by_dataset(rows).items():
            reann, nequip = ([force_mae(row, m) for row in group] for m in MODELS)
            ratios = [a / b for a, b in zip(reann, nequip)]
            lines.append(
                f"| {name} | {', '.join(str(row['seed']) for row in group)} | "
                f"{' / '.join(f'{x:.1f}' for x in reann)} | "
                f"{' / '.join(f'{x:.1f}' for x in nequip)} | "
                f"{' / '.join(f'{x:.2f}' for x in ratios)} | {float(np.median(ratios)):.2f} |"
            )
    return "\n".join(lines)


def by_dataset(rows: List[dict]) -> Dict[str, List[dict]]:
    """``rows`` grouped by data set, in their order."""
    groups: Dict[str, List[dict]] = {}
    for row in rows:
        groups.setdefault(row["dataset"], []).append(row)
    return groups


def force_mae(row: dict, model: str) -> float:
    """The test force MAE (meV/Å) of ``model`` in ``row``."""
    return row[model]["final"]["forces_mae_meV_per_A"]


def markdown(data: dict) -> str:
    """The tables of a ``--json`` file (:func:`format_report` of its rows and arguments)."""
    return format_report(rows_with_hosts(data), argparse.Namespace(**data["arguments"]))


def headline(data: dict) -> list:
    """The README's numbers: REANN's test force MAE over NequIP's at equal training time, the
    median over seeds, per data set; only of the recommended configs as they are (files made with
    overrides give none)."""
    arguments = data["arguments"]
    if not set(MODELS) <= set(arguments["models"]):
        return []
    if arguments.get("overrides") or arguments.get("reann_overrides"):
        return []
    budget = (
        f"{arguments['epochs']} epochs"
        if arguments.get("epochs")
        else f"{arguments['minutes']} min"
    )
    rows = []
    for name, group in by_dataset(data["rows"]).items():
        ratios = [force_mae(row, "reann") / force_mae(row, "nequip") for row in group]
        rows.append(
            (
                f"test force MAE, REANN / NequIP, {name}, {budget} of training each"
                + (f" (median of {len(ratios)} seeds)" if len(ratios) > 1 else ""),
                f"{float(np.median(ratios)):.2f}",
            )
        )
    return rows


def plot_curves(rows: List[dict], args, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    figure, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
    colors = {"reann": "tab:blue", "nequip": "tab:orange"}
    for axis, name in zip(axes[0], datasets):
        for index, row in enumerate(r for r in rows if r["dataset"] == name):
            for model in args.models:
                curve = row[model]["curve"]
                axis.plot(
                    [p["seconds"] / 60 for p in curve],
                    [p["forces_mae_meV_per_A"] for p in curve],
                    color=colors[model],
                    alpha=0.8,
                    label=LABELS[model] if index == 0 else None,
                )
        axis.set_title(name)
        axis.set_xlabel("training time (min)")
        axis.set_ylabel("test force MAE (meV/Å)")
        axis.set_yscale("log")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["ch4"], choices=list(DATASETS))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--minutes", type=int, default=15, help="training budget per model")
    parser.add_argument(
        "--epochs", type=int, help="train this many epochs instead of --minutes (ablations)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads")
    parser.add_argument("--curve-seconds", type=int, default=60, help="checkpoint interval")
    parser.add_argument("--no-md-cost", dest="md_cost", action="store_false")
    parser.add_argument("--reann-config", help="REANN's config (default: the data set's)")
    parser.add_argument(
        "--overrides",
        nargs="*",
        default=[],
        help="KEY=VALUE changes of the config both models train with (its trainer, data, loss), "
        "as --reann-overrides",
    )
    parser.add_argument(
        "--reann-overrides",
        nargs="*",
        default=[],
        help="KEY=VALUE changes of REANN's config (dotted keys, YAML values), KEY+=VALUE to "
        "append to a list (e.g. trainer.callbacks); for ablations",
    )
    parser.add_argument("--workdir", help="keep the runs here (default: a temporary folder)")
    parser.add_argument(
        "--json", help="write the results here, after every data set and seed is complete"
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="add to the --json file's rows (same settings) instead of replacing them; a data "
        "set and seed run again replaces its row",
    )
    parser.add_argument("--plot", help="the learning curves' PNG (default: none)")
    args = parser.parse_args(argv)
    if args.merge and not args.json:
        parser.error("--merge needs --json")
    previous = previous_rows(pathlib.Path(args.json), args) if args.merge else []

    from nequip.utils.global_state import set_global_state

    set_global_state()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in args.datasets:
            for row in run_dataset(name, args, workdir):
                rows.append(row)
                if args.json:
                    write_results(pathlib.Path(args.json), merged(previous, rows), args)
                if args.plot:
                    plot_curves(merged(previous, rows), args, pathlib.Path(args.plot))
    print(format_report(merged(previous, rows), args))


if __name__ == "__main__":
    main()
