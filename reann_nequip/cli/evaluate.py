"""``reann-nequip evaluate MODEL DATA``: errors of a nequip model on a data file, with parity plots."""

import argparse
import os
import sys
from typing import Dict, Iterator, List

import numpy as np

from reann_nequip._files import OutputPathError, atomic_output

HELP = "RMSE/MAE and parity plots of a nequip checkpoint or package on an extxyz or REANN file"

# property -> (model output key, unit label relative to the data's energy E and length L)
PROPERTIES = {
    "total_energy": ("total_energy", "E"),
    "per_atom_energy": ("total_energy", "E/atom"),
    "forces": ("forces", "E/L"),
    "total_dipole": ("total_dipole", "charge·L"),
    "polarizability": ("polarizability", "L³"),
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", metavar="MODEL", help="nequip checkpoint (.ckpt) or package (.zip)"
    )
    parser.add_argument(
        "data", metavar="DATA", help="extxyz (or any ASE-readable) file, or a REANN configuration"
    )
    parser.add_argument(
        "--coordinates",
        choices=["cartesian", "fractional"],
        help="DATA is a REANN configuration file with these coordinates (REANN table_coor); "
        "required for files named `configuration`",
    )
    parser.add_argument(
        "-o",
        "--output-dir",
        default="evaluation",
        help="where parity plots go (default evaluation)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="frames per model call")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def read_frames(path: str, coordinates) -> Iterator:
    """ASE atoms of DATA, one at a time."""
    from reann_nequip.data.configuration import iter_configuration, looks_like_configuration

    if coordinates is not None:
        for frame in iter_configuration(path, coordinates=coordinates):
            yield frame.to_atoms()
        return
    # before ASE, which fails on REANN's files in its own ways (UnknownFileTypeError; a file
    # named *.cfg goes to its AtomEye reader and an UnboundLocalError)
    if os.path.basename(path) == "configuration" or looks_like_configuration(path):
        raise ValueError(
            f"{path} is a REANN configuration file: give --coordinates cartesian or "
            "fractional (REANN's table_coor 0 or 1)"
        )
    import ase.io
    from ase.io.formats import UnknownFileTypeError

    try:
        yield from ase.io.iread(path)
    except UnknownFileTypeError as error:
        raise ValueError(
            f"{path}: ASE cannot tell the format of this file ({error}); name it *.extxyz or "
            "*.xyz, or give --coordinates for a REANN configuration file"
        ) from None


def reference_values(atoms) -> Dict[str, np.ndarray]:
    """The labels of one frame that the data holds, as float64 arrays."""
    results = dict(atoms.calc.results) if atoms.calc is not None else {}
    values = {}
    if "energy" in results:
        values["total_energy"] = np.array([[results["energy"]]])
        values["per_atom_energy"] = values["total_energy"] / len(atoms)
    if "forces" in results:
        values["forces"] = np.asarray(results["forces"], dtype=float)
    dipole = results.get("dipole", atoms.info.get("total_dipole", atoms.info.get("dipole")))
    if dipole is not None:
        values["total_dipole"] = np.asarray(dipole, dtype=float).reshape(1, 3)
    if "polarizability" in atoms.info:
        values["polarizability"] = np.asarray(atoms.info["polarizability"], dtype=float).reshape(
            1, 9
        )
    return values


def load_model(path: str, device: str):
    """The GraphModel in a nequip checkpoint or package, in eval mode."""
    from nequip.model import ModelFromCheckpoint, ModelFromPackage
    from nequip.utils.global_state import set_global_state

    set_global_state()
    if path.endswith(".zip"):
        model = ModelFromPackage(path)
    elif path.endswith(".ckpt"):
        model = ModelFromCheckpoint(path)
    else:
        raise ValueError(
            f"MODEL must be a nequip checkpoint (.ckpt) or package (.zip), found {path}"
        )
    model = model["sole_model"]
    return model.to(device).eval()


def predict(model, frames: List, r_max: float, device: str) -> Dict[str, np.ndarray]:
    """Model outputs for a batch of ASE atoms, per property as [frames or atoms, components]."""
    import torch
    from nequip.data import AtomicDataDict, compute_neighborlist_, from_dict

    from reann_nequip.data import ChemicalSpeciesToAtomTypeMapper

    mapper = ChemicalSpeciesToAtomTypeMapper(model_type_names=list(model.type_names))
    data_list = []
    for atoms in frames:
        data = from_dict(
            {
                AtomicDataDict.POSITIONS_KEY: atoms.positions,
                AtomicDataDict.CELL_KEY: np.asarray(atoms.cell),
                AtomicDataDict.PBC_KEY: atoms.pbc,
                AtomicDataDict.ATOMIC_NUMBERS_KEY: atoms.numbers,
            }
        )
        data_list.append(compute_neighborlist_(mapper(data), r_max=r_max))
    batch = AtomicDataDict.to_(AtomicDataDict.batched_from_list(data_list), torch.device(device))
    out = model(batch)
    predicted = {}
    for name, (key, _) in PROPERTIES.items():
        if key in out:
            value = out[key].detach().cpu().to(torch.float64).numpy()
            predicted[name] = value.reshape(value.shape[0], -1)
    if "total_energy" in predicted:
        num_atoms = np.array([len(atoms) for atoms in frames]).reshape(-1, 1)
        predicted["per_atom_energy"] = predicted["total_energy"] / num_atoms
    return predicted


def parity_plot(
    reference: np.ndarray, predicted: np.ndarray, title: str, unit: str, path: str, inputs
):
    """Write a PNG parity plot to ``path`` (only once complete); ``inputs`` are the files that
    ``path`` must not overwrite."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.scatter(reference.ravel(), predicted.ravel(), s=4, alpha=0.5)
    low = float(min(reference.min(), predicted.min()))
    high = float(max(reference.max(), predicted.max()))
    axis.plot([low, high], [low, high], color="black", linewidth=0.8)
    axis.set_xlabel(f"reference ({unit})")
    axis.set_ylabel(f"model ({unit})")
    axis.set_title(title)
    figure.tight_layout()
    with atomic_output(path, "wb", inputs=inputs) as stream:
        figure.savefig(stream, format="png", dpi=120)
    plt.close(figure)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    try:
        model = load_model(args.model, args.device)
    except (ValueError, FileNotFoundError) as error:
        print(f"reann-nequip evaluate: error: {error}", file=sys.stderr)
        return 2
    r_max = float(model.metadata["r_max"])
    reference: Dict[str, List[np.ndarray]] = {}
    predicted: Dict[str, List[np.ndarray]] = {}
    symbols: List[str] = []
    batch: List = []

    def flush():
        with torch.enable_grad():
            outputs = predict(model, batch, r_max, args.device)
        for atoms in batch:
            symbols.extend(atoms.get_chemical_symbols())
        labels = [reference_values(atoms) for atoms in batch]
        for name in PROPERTIES:
            have = [name in label for label in labels]
            if name not in outputs or not any(have):
                continue
            if not all(have):
                raise ValueError(f"some frames of {args.data} have `{name}`, others do not")
            reference.setdefault(name, []).append(np.concatenate([lab[name] for lab in labels]))
            predicted.setdefault(name, []).append(outputs[name])
        batch.clear()

    try:
        for atoms in tqdm(read_frames(args.data, args.coordinates), desc="frames", unit="frame"):
            batch.append(atoms)
            if len(batch) == args.batch_size:
                flush()
        if batch:
            flush()
    except ValueError as error:
        print(f"reann-nequip evaluate: error: {error}", file=sys.stderr)
        return 2
    if not reference:
        print(
            f"reann-nequip evaluate: error: {args.data} holds none of the model's outputs "
            f"({', '.join(PROPERTIES)})",
            file=sys.stderr,
        )
        return 2

    print(f"errors in the units of {args.data} (E energy, L length)")
    print(f"| {'property':<22} | {'count':>8} | {'RMSE':>12} | {'MAE':>12} | unit     |")
    print(f"|{'-' * 24}|{'-' * 10}|{'-' * 14}|{'-' * 14}|----------|")
    rows = []  # (name, reference, predicted, unit): one parity plot each, then per element
    for name, (_, unit) in PROPERTIES.items():
        if name not in reference:
            continue
        ref, pred = np.concatenate(reference[name]), np.concatenate(predicted[name])
        rows.append((name, ref, pred, unit))
    plots = list(rows)
    if "forces" in reference:
        elements = np.array(symbols)
        ref, pred = np.concatenate(reference["forces"]), np.concatenate(predicted["forces"])
        for element in sorted(set(symbols)):
            mask = elements == element
            rows.append((f"forces ({element})", ref[mask], pred[mask], "E/L"))
    for name, ref, pred, unit in rows:
        error = pred - ref
        rmse = float(np.sqrt(np.mean(error**2)))
        mae = float(np.mean(np.abs(error)))
        print(f"| {name:<22} | {error.size:>8} | {rmse:>12.6g} | {mae:>12.6g} | {unit:<8} |")
    try:
        os.makedirs(args.output_dir, exist_ok=True)
        for name, ref, pred, unit in plots:
            path = os.path.join(args.output_dir, f"parity_{name}.png")
            parity_plot(ref, pred, name, unit, path, inputs=[args.model, args.data])
    except (OSError, OutputPathError) as error:
        print(f"reann-nequip evaluate: error: {error}", file=sys.stderr)
        return 2
    print(f"parity plots in {args.output_dir}/")
    return 0
