#!/usr/bin/env python
"""Speed of the REANN model itself: the deployed file on water, training steps, GFLOP/s, memory.

The default model of the benchmarks (r_max 5 Å, 8 Gaussians, l_max 2, 108 orbitals, 3 recursions,
hidden widths 64 64, as ``bench_md.py``) is measured two ways, each configuration in its own
process (one torch thread) so that its peak resident memory is its own:

- **deployed**: the TorchScript file that ``pair_style reann`` and the ASE calculator load, called
  as they call it (positions, types, edges, Cartesian shifts → energies, forces, virial) on the
  first ``water_deepmd`` frame replicated to 192, 1,536 and 12,288 atoms;
- **training**: forward with forces, energy-per-atom + force MSE, backward, Adam step of the nequip
  ``GraphModel`` in float32 on batches of CO2/Ni(100) frames (REANN ``configuration`` file) and of
  192-atom water frames, on the C++ kernels (``cpu_kernels: true``) and with torch operations
  (``cpu_kernels: false``);
- **small molecules** (``--molecules``: the shipped CH4 and ethanol): the model of
  ``configs/reann_molecules.yaml`` (r_max 5 Å, 8 Gaussians, l_max 2, 2 recursions, widths 64 64) in
  float64, where a training step costs mostly fixed overhead rather than arithmetic. *Model step*:
  one training step of the model alone (forward, forces, per-atom energy + 50 × force MSE,
  backward, AdamW) on a batch of ``--molecule-batch`` frames. *nequip-train*: training frames per
  second of ``nequip-train`` with ``--train-config`` set to that model, data and batch size, from
  the wall-clock difference between a run of ``--epochs`` epochs and a run of one epoch, so that
  start-up cancels; everything an epoch holds counts (data loading, EMA, validation, metrics,
  checkpoints).

Times are medians of wall-clock (and process CPU) times per call after warm-up calls. Achieved
GFLOP/s divide the model's arithmetic (``model_flops_per_atom``: multiply-adds of the neighbour
sums, the mixing and the element networks, the same for every implementation) by the time.

Example::

    .venv/bin/python benchmarks/bench_model.py
    .venv/bin/python benchmarks/bench_model.py --sizes 192 1536 --dtypes float32 --no-training
    .venv/bin/python benchmarks/bench_model.py --sizes 192 --no-training --molecules ch4 ethanol
"""

import argparse
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np
from bench_md import REPLICAS, deploy_default_models, water_frame
from provenance import write_json

R_MAX = 5.0
NUM_GAUSSIANS, L_MAX, NUM_RECURSIONS, HIDDEN = 8, 2, 3, [64, 64]
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# the shipped molecules: extxyz file and isolated-atom energies (eV), the per-type shifts
MOLECULES = {
    "ch4": ("examples/ch4/ch4_b3lyp_augccpvdz.xyz", "examples/ch4/isolated_atom_energies.json"),
    "ethanol": (
        "examples/molecules/ethanol_b3lyp_631gd.xyz",
        "examples/molecules/isolated_atom_energies.json",
    ),
}
# the model of configs/reann_molecules.yaml, set explicitly so that any checkout trains the same
MOLECULE_MODEL = {
    "r_max": 5.0,
    "num_gaussians": 8,
    "l_max": 2,
    "num_recursions": 2,
    "energy_network": {"hidden": [64, 64], "num_blocks": 1},
    "coefficient_network": {"hidden": [64, 64], "num_blocks": 1},
}
MOLECULE_VAL, MOLECULE_TEST = 50, 50  # frames held out of the nequip-train epochs


def model_flops_per_atom(avg_num_neighbors: float, num_recursions: int = NUM_RECURSIONS) -> float:
    """FLOPs of energy + forces per atom of the default model (with ``num_recursions``), counted
    from its definition.

    Multiply-adds (2 FLOPs each) of the forward pass: per density evaluation (T + 1 of them) the
    neighbour sum, C × K × neighbours (C = 10 distinct monomials up to L = 2), and the mixing,
    C × K × M; per element network (T coefficient networks with K outputs, one energy network)
    in × h1, one residual block h1 × h2 + h2 × h1, h1 × out. The backward pass for forces is
    counted as twice the forward. Elementwise work, gathers and padding are not counted, so the
    figure is the same for every implementation of the model.
    """
    components = (L_MAX + 1) * (L_MAX + 2) * (L_MAX + 3) // 6
    orbitals = NUM_GAUSSIANS * (NUM_GAUSSIANS + 1) // 2 * (L_MAX + 1)
    density = components * NUM_GAUSSIANS * (avg_num_neighbors + orbitals)
    block = HIDDEN[0] * HIDDEN[1] + HIDDEN[1] * HIDDEN[0]
    coefficient_network = orbitals * HIDDEN[0] + block + HIDDEN[0] * NUM_GAUSSIANS
    energy_network = orbitals * HIDDEN[0] + block + HIDDEN[0]
    forward = (num_recursions + 1) * density + num_recursions * coefficient_network + energy_network
    return 3 * 2 * forward


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _time_calls(call, warmup: int, min_repeats: int, time_limit: float) -> Dict[str, float]:
    """Median wall and CPU seconds of ``call()`` after ``warmup`` untimed calls; at least
    ``min_repeats`` timed calls, more while under ``time_limit`` seconds."""
    for _ in range(warmup):
        call()
    wall, cpu = [], []
    start = time.perf_counter()
    while len(wall) < min_repeats or time.perf_counter() - start < time_limit:
        t0, c0 = time.perf_counter(), time.process_time()
        call()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"wall": float(np.median(wall)), "cpu": float(np.median(cpu)), "calls": len(wall)}


def deployed_worker(args: argparse.Namespace) -> Dict:
    import torch
    from nequip.data import compute_neighborlist_, from_dict
    from nequip.utils.global_state import set_global_state

    # float64 geometry, as the deployed interface takes it (from_dict uses the default dtype)
    set_global_state()
    torch.set_num_threads(1)
    atoms = water_frame(args.water).repeat(REPLICAS[args.size])
    graph = compute_neighborlist_(
        from_dict(
            {
                "pos": atoms.positions,
                "cell": np.asarray(atoms.cell),
                "pbc": True,
                "atom_types": np.array([0 if s == "O" else 1 for s in atoms.symbols]),
            }
        ),
        r_max=R_MAX,
    )
    num_atoms = len(atoms)
    inputs = (
        graph["pos"],
        graph["atom_types"].view(-1),
        graph["edge_index"],
        graph["edge_cell_shift"] @ graph["cell"].view(3, 3),
        num_atoms,
    )
    avg_num_neighbors = graph["edge_index"].shape[1] / num_atoms
    from reann_nequip.deploy.kernels import load_deployed_file

    with tempfile.TemporaryDirectory() as tmp:
        path = deploy_default_models(pathlib.Path(tmp), [args.dtype])[args.dtype]
        model = load_deployed_file(str(path))
    base_rss = _peak_rss_mb()

    def call():
        # as pair_reann and ReannCalculator run it: the TorchScript executor's optimisation off
        with torch.jit.optimized_execution(False):
            forces = model(*inputs)[1]
        if not bool(torch.isfinite(forces).all()):
            raise RuntimeError("non-finite forces")

    times = _time_calls(call, args.warmup, args.min_repeats, args.time_limit)
    return {
        **times,
        "atoms": num_atoms,
        "flops_per_atom": model_flops_per_atom(avg_num_neighbors),
        "base_rss_mb": base_rss,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _training_frames(args: argparse.Namespace):
    """ASE frames with energies and forces, and their element names."""
    if args.system == "co2_ni100":
        from reann_nequip.data import read_configuration

        frames = read_configuration(args.co2, index=f":{args.batch_size}", coordinates="fractional")
        return frames, ["C", "O", "Ni"]
    from ase.calculators.singlepoint import SinglePointCalculator

    set_dir = pathlib.Path(args.water) / "data" / "data_0" / "set.000"
    template = water_frame(args.water)
    coords = np.load(set_dir / "coord.npy").reshape(-1, len(template), 3)
    cells = np.load(set_dir / "box.npy").reshape(-1, 3, 3)
    energies = np.load(set_dir / "energy.npy").reshape(-1)
    forces = np.load(set_dir / "force.npy").reshape(-1, len(template), 3)
    frames = []
    for i in range(args.batch_size):
        k = i % len(coords)
        atoms = template.copy()
        atoms.set_cell(cells[k])
        atoms.set_positions(coords[k])
        atoms.calc = SinglePointCalculator(atoms, energy=energies[k], forces=forces[k])
        frames.append(atoms)
    return frames, ["O", "H"]


def _training_step(model, optimizer, batch: Dict, atoms_per_frame, references, force_weight: float):
    """One training step as a call: forward with forces, MSE of the energy per atom
    (``atoms_per_frame`` [frames]) against ``references[0]`` (eV/atom) + ``force_weight`` × MSE of
    the forces against ``references[1]`` (eV/Å), backward, optimiser step; raises on a non-finite
    loss."""
    import torch
    from nequip.data import AtomicDataDict

    reference_energy, reference_forces = references

    def step():
        optimizer.zero_grad(set_to_none=True)
        out = model(dict(batch))
        energy = out[AtomicDataDict.TOTAL_ENERGY_KEY].view(-1) / atoms_per_frame
        loss = torch.nn.functional.mse_loss(energy, reference_energy)
        loss = loss + force_weight * torch.nn.functional.mse_loss(
            out[AtomicDataDict.FORCE_KEY], reference_forces
        )
        loss.backward()
        optimizer.step()
        if not bool(torch.isfinite(loss)):
            raise RuntimeError("non-finite training loss")

    return step


def training_worker(args: argparse.Namespace) -> Dict:
    import torch
    from nequip.data import AtomicDataDict, compute_neighborlist_, from_ase
    from nequip.utils.global_state import set_global_state

    from reann_nequip.data import ChemicalSpeciesToAtomTypeMapper
    from reann_nequip.model import ReannModel

    set_global_state()
    torch.set_num_threads(1)
    frames, type_names = _training_frames(args)
    mapper = ChemicalSpeciesToAtomTypeMapper(model_type_names=type_names)
    graphs = [compute_neighborlist_(mapper(from_ase(atoms)), r_max=R_MAX) for atoms in frames]
    batch = AtomicDataDict.batched_from_list(graphs)
    num_atoms = AtomicDataDict.num_nodes(batch)
    atoms_per_frame = torch.tensor([len(a) for a in frames], dtype=torch.float32)
    # reference energies per atom about their mean: the loss stays O(1) without energy shifts
    reference_energy = batch[AtomicDataDict.TOTAL_ENERGY_KEY].view(-1).float() / atoms_per_frame
    reference_energy = reference_energy - reference_energy.mean()
    reference_forces = batch[AtomicDataDict.FORCE_KEY].float()
    avg_num_neighbors = AtomicDataDict.num_edges(batch) / num_atoms
    model = ReannModel(
        seed=0,
        model_dtype="float32",
        type_names=type_names,
        r_max=R_MAX,
        num_gaussians=NUM_GAUSSIANS,
        l_max=L_MAX,
        num_recursions=NUM_RECURSIONS,
        energy_network={"hidden": HIDDEN},
        coefficient_network={"hidden": HIDDEN},
        avg_num_neighbors=avg_num_neighbors,
        cpu_kernels=args.form == "kernels",
    ).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    base_rss = _peak_rss_mb()

    references = (reference_energy, reference_forces)
    step = _training_step(model, optimizer, batch, atoms_per_frame, references, force_weight=1.0)
    times = _time_calls(step, args.warmup, args.min_repeats, args.time_limit)
    return {
        **times,
        "atoms": num_atoms,
        "frames": len(frames),
        # forces in the loss: the parameter gradient differentiates the energy + force graph
        # once more, counted as twice its cost
        "flops_per_atom": 3 * model_flops_per_atom(avg_num_neighbors),
        "base_rss_mb": base_rss,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _molecule(name: str):
    """The molecule's frames (ASE, with energies and forces), element names and isolated-atom
    energies (eV)."""
    import ase.io
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    path, isolated = MOLECULES[name]
    frames = []
    # geometry, energy and forces only: a CH4 frame's dipole would read as a per-atom field
    for frame in ase.io.read(REPO_ROOT / path, index=":"):
        atoms = Atoms(frame.numbers, positions=frame.positions)
        atoms.calc = SinglePointCalculator(
            atoms, energy=frame.get_potential_energy(), forces=frame.get_forces()
        )
        frames.append(atoms)
    shifts = json.loads((REPO_ROOT / isolated).read_text())
    elements = sorted({s for atoms in frames for s in atoms.get_chemical_symbols()})
    return frames, elements, {e: shifts[e] for e in elements}


def molecule_step_worker(args: argparse.Namespace) -> Dict:
    import torch
    from nequip.data import AtomicDataDict, compute_neighborlist_, from_ase
    from nequip.utils.global_state import set_global_state

    from reann_nequip.data import ChemicalSpeciesToAtomTypeMapper
    from reann_nequip.model import ReannModel

    set_global_state()
    torch.set_num_threads(1)
    frames, elements, shifts = _molecule(args.molecule)
    frames = frames[: args.batch_size]
    mapper = ChemicalSpeciesToAtomTypeMapper(model_type_names=elements)
    graphs = [
        compute_neighborlist_(mapper(from_ase(atoms)), r_max=MOLECULE_MODEL["r_max"])
        for atoms in frames
    ]
    batch = AtomicDataDict.batched_from_list(graphs)
    atoms_per_frame = torch.tensor([len(a) for a in frames], dtype=torch.float64)
    reference_energy = batch[AtomicDataDict.TOTAL_ENERGY_KEY].view(-1) / atoms_per_frame
    reference_forces = batch[AtomicDataDict.FORCE_KEY]
    avg_num_neighbors = AtomicDataDict.num_edges(batch) / AtomicDataDict.num_nodes(batch)
    model = ReannModel(
        seed=0,
        model_dtype="float64",
        type_names=elements,
        avg_num_neighbors=avg_num_neighbors,
        per_type_energy_shifts=shifts,
        per_type_energy_scales=float(reference_forces.square().mean().sqrt()),
        **MOLECULE_MODEL,
    ).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)

    references = (reference_energy, reference_forces)
    step = _training_step(model, optimizer, batch, atoms_per_frame, references, force_weight=50.0)
    return {
        **_time_calls(step, args.warmup, args.min_repeats, args.time_limit),
        "frames": len(frames),
        "atoms": AtomicDataDict.num_nodes(batch),
        # as the water training rows: forces in the loss, the parameter gradient 2 × more
        "flops_per_atom": 3
        * model_flops_per_atom(avg_num_neighbors, MOLECULE_MODEL["num_recursions"]),
    }


def _hydra_value(value) -> str:
    """``value`` as the right-hand side of a Hydra command-line override (YAML flow style)."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("...").strip()


def nequip_train_seconds(args: argparse.Namespace, epochs: int, run_dir: pathlib.Path) -> float:
    """Wall-clock seconds of ``nequip-train`` (one thread) on the molecule for ``epochs`` epochs,
    ``--train-config`` set to the molecule model, data and batch size."""
    frames, elements, shifts = _molecule(args.molecule)
    config = pathlib.Path(args.train_config).resolve()
    train = len(frames) - MOLECULE_VAL - MOLECULE_TEST
    overrides = {
        "run": ["train"],
        "data_file": str(REPO_ROOT / MOLECULES[args.molecule][0]),
        "model_type_names": elements,
        "cutoff_radius": MOLECULE_MODEL["r_max"],
        "model_dtype": "float64",
        "data.split_dataset.train": train,
        "data.split_dataset.val": MOLECULE_VAL,
        "data.split_dataset.test": MOLECULE_TEST,
        "data.train_dataloader.batch_size": args.batch_size,
        "++data.exclude_keys": ["dipole"],
        "trainer.max_epochs": epochs,
        "trainer.max_time": None,
        # r_max is the config's cutoff_radius, set above
        **{f"training_module.model.{k}": v for k, v in MOLECULE_MODEL.items() if k != "r_max"},
        "++training_module.model.per_type_energy_shifts": shifts,
    }
    command = [str(pathlib.Path(sys.executable).parent / "nequip-train")]
    command += ["-cp", str(config.parent), "-cn", config.stem, f"hydra.run.dir={run_dir}"]
    command += [f"{key}={_hydra_value(value)}" for key, value in overrides.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return seconds


def molecule_training(args: argparse.Namespace) -> Dict:
    """nequip-train's training frames per second on ``args.molecule``: ``--epochs`` epochs less
    one, divided by the wall-clock difference of the two runs."""
    frames, _, _ = _molecule(args.molecule)
    train = len(frames) - MOLECULE_VAL - MOLECULE_TEST
    with tempfile.TemporaryDirectory() as tmp:
        short = nequip_train_seconds(args, 1, pathlib.Path(tmp) / "short")
        long = nequip_train_seconds(args, args.epochs, pathlib.Path(tmp) / "long")
    return {
        "train_frames": train,
        "epochs": args.epochs,
        "seconds_per_epoch": (long - short) / (args.epochs - 1),
        "startup_seconds": short - (long - short) / (args.epochs - 1),
    }


def run_worker(args: argparse.Namespace, **options) -> Dict:
    """This script in a fresh process with ``--worker`` and ``options``; returns its JSON."""
    command = [sys.executable, __file__, "--worker", json.dumps(options)]
    for key in ("water", "co2", "warmup", "min_repeats", "time_limit"):
        command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"worker {options} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--water", default="../shared/data/water_deepmd", help="water_deepmd")
    parser.add_argument(
        "--co2",
        default="../shared/data/co2_ni100_reann/val/configuration",
        help="REANN configuration file of CO2/Ni(100) frames (fractional coordinates)",
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=[192, 1536, 12288],
        help="water sizes of the deployed file (none: skip it)",
    )
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--co2-batch", type=int, default=128, help="CO2/Ni(100) frames per step")
    parser.add_argument("--water-batch", type=int, default=128, help="water frames per step")
    parser.add_argument(
        "--forms",
        nargs="+",
        default=["kernels", "torch"],
        choices=["kernels", "torch"],
        help="training runs in these forms of the model",
    )
    parser.add_argument("--no-training", action="store_true", help="no training steps on water")
    parser.add_argument(
        "--molecules",
        nargs="*",
        default=list(MOLECULES),
        choices=list(MOLECULES),
        help="small-molecule training: model step and nequip-train (none: skip)",
    )
    parser.add_argument("--molecule-batch", type=int, default=5, help="molecule frames per step")
    parser.add_argument(
        "--train-config",
        default=str(REPO_ROOT / "configs" / "reann_molecules.yaml"),
        help="nequip-train config of the molecule runs (data, model and batch size overridden)",
    )
    parser.add_argument(
        "--epochs", type=int, default=4, help="epochs of the longer nequip-train run"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls")
    parser.add_argument("--min-repeats", type=int, default=3, help="timed calls, at least")
    parser.add_argument("--time-limit", type=float, default=10.0, help="timed seconds, at least")
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        options = json.loads(args.worker)
        vars(args).update(options)
        workers = {
            "deployed": deployed_worker,
            "training": training_worker,
            "molecule_step": molecule_step_worker,
        }
        print(json.dumps(workers[options["kind"]](args)))
        return
    if args.molecules and args.epochs < 2:
        parser.error("--epochs must be at least 2: the rate is that of the epochs after the first")
    unknown = sorted(set(args.sizes) - set(REPLICAS))
    if unknown:
        raise SystemExit(f"error: `--sizes` must be among {sorted(REPLICAS)}, found {unknown}")

    load = os.getloadavg()[0]
    deployed = []
    for dtype in args.dtypes:
        for size in args.sizes:
            row = run_worker(args, kind="deployed", dtype=dtype, size=size)
            deployed.append({"dtype": dtype, **row})
            print(
                f"  deployed {dtype} {size}: {1e6 * row['wall'] / size:.1f} µs/atom-step",
                file=sys.stderr,
                flush=True,
            )
    training = []
    if not args.no_training:
        for system, batch_size in (("co2_ni100", args.co2_batch), ("water", args.water_batch)):
            for kernel in args.forms:
                row = run_worker(
                    args,
                    kind="training",
                    system=system,
                    batch_size=batch_size,
                    form=kernel,
                )
                training.append({"system": system, "kernel": kernel, **row})
                print(
                    f"  training {system} ({kernel}): {batch_size / row['wall']:.1f} frames/s",
                    file=sys.stderr,
                    flush=True,
                )

    molecules = []
    for name in args.molecules:
        step = run_worker(args, kind="molecule_step", molecule=name, batch_size=args.molecule_batch)
        trainer = molecule_training(
            argparse.Namespace(
                **{**vars(args), "molecule": name, "batch_size": args.molecule_batch}
            )
        )
        molecules.append({"molecule": name, "step": step, "nequip_train": trainer})
        # one figure a line, as ab.py reads them
        print(f"  molecule {name} model step: {1e3 * step['wall']:.2f} ms", file=sys.stderr)
        rate = trainer["train_frames"] / trainer["seconds_per_epoch"]
        print(f"  molecule {name} nequip-train: {rate:.1f} frames/s", file=sys.stderr, flush=True)

    load_end = os.getloadavg()[0]
    results = {
        "load_average": [load, load_end],
        "deployed": deployed,
        "training": training,
        "molecules": molecules,
    }
    print(
        f"\nREANN model speed, {platform.processor() or platform.machine()}, {os.cpu_count()} "
        f"cores, 1 torch thread, load average {load:.1f} at start → {load_end:.1f}\n"
    )
    print(markdown(results))
    if args.json:
        write_json(args.json, __file__, results, argv)


def markdown(results: Dict) -> str:
    """The tables of a ``--json`` file's ``results``: those of the parts that ran (deployed
    file, training steps, small molecules)."""
    sections = []
    if results["deployed"]:
        lines = [
            "Deployed file (energy + forces + virial), bulk water; times are medians per call",
            "",
            "| dtype | atoms | µs/atom-step | CPU µs/atom-step | GFLOP/s | peak RSS (MB) |",
            "|---|---|---|---|---|---|",
        ]
        for row in results["deployed"]:
            per_atom = row["wall"] / row["atoms"]
            lines.append(
                f"| {row['dtype']} | {row['atoms']} | {1e6 * per_atom:.1f} | "
                f"{1e6 * row['cpu'] / row['atoms']:.1f} | "
                f"{1e-9 * row['flops_per_atom'] / per_atom:.2f} | {row['peak_rss_mb']:.0f} |"
            )
        sections.append(lines)
    if results["training"]:
        lines = [
            "Training step (float32; forward, forces, energy + force MSE, backward, Adam)",
            "",
            "| frames | form | batch | atoms | ms/step | frames/s | GFLOP/s | peak RSS (MB) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in results["training"]:
            lines.append(
                f"| {row['system']} | {row['kernel']} | {row['frames']} | {row['atoms']} "
                f"| {1e3 * row['wall']:.0f} | {row['frames'] / row['wall']:.1f} "
                f"| {1e-9 * row['flops_per_atom'] * row['atoms'] / row['wall']:.2f} "
                f"| {row['peak_rss_mb']:.0f} |"
            )
        sections.append(lines)
    if results["deployed"] or results["training"]:
        sections[-1] += [
            "",
            "GFLOP/s: the model's multiply-adds (neighbour sums, mixing, element networks; "
            "backward = 2 × forward; training 3 × that) per time; see model_flops_per_atom.",
        ]
    if results.get("molecules"):
        lines = [
            "Small molecules, float64, the model of configs/reann_molecules.yaml, one thread: a "
            "model step (forward, forces, loss, backward, AdamW) and nequip-train's epochs",
            "",
            "| molecule | batch | model step (ms) | model frames/s | GFLOP/s | nequip-train "
            "s/epoch | nequip-train frames/s | nequip-train start-up (s) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in results["molecules"]:
            step, trainer = row["step"], row["nequip_train"]
            lines.append(
                f"| {row['molecule']} | {step['frames']} | {1e3 * step['wall']:.1f} | "
                f"{step['frames'] / step['wall']:.0f} | "
                f"{1e-9 * step['flops_per_atom'] * step['atoms'] / step['wall']:.2f} | "
                f"{trainer['seconds_per_epoch']:.2f} | "
                f"{trainer['train_frames'] / trainer['seconds_per_epoch']:.0f} | "
                f"{trainer['startup_seconds']:.1f} |"
            )
        sections.append(lines)
    return "\n\n".join("\n".join(lines) for lines in sections)


def headline(results: Dict) -> List:
    """The README's numbers: training throughput on the C++ kernels, per system."""
    return [
        (
            f"training steps on the C++ kernels, {row['system']} batch {row['frames']}, float32",
            f"{row['frames'] / row['wall']:.0f} frames/s",
        )
        for row in results["training"]
        if row["kernel"] == "kernels"
    ]


if __name__ == "__main__":
    main()
