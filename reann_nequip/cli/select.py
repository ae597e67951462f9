"""``reann-nequip select TRAJECTORY``: the frames of an MD run to label next (active learning).

A frame is a candidate when the largest force deviation of a committee over its atoms
(DeePMD's ``max_devi_f``) lies in the trust window [lo, hi): below it the committee agrees and
the frame teaches nothing new; at or above it the geometry is usually unphysical (the run has
already gone wrong). The deviation comes from the committee itself (``--committee``, deployed
files, evaluated here through the ASE calculator) or from the deviation file ``pair_style reann
... out_freq N`` wrote during the run (``--deviation``). At most ``--max-frames`` candidates
are kept, spread evenly over the run, and written as extended XYZ for labelling.
"""

import argparse
import sys
from typing import List, Optional, Tuple

import numpy as np

from reann_nequip._files import OutputPathError, atomic_output, check_output_path

HELP = (
    "pick the frames of an MD trajectory whose committee force deviation lies in a trust "
    "window, for labelling (active learning)"
)
# the first line of a LAMMPS text dump
_DUMP_START = "ITEM: TIMESTEP"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "trajectory",
        metavar="TRAJECTORY",
        help="the MD run: extxyz (or any ASE-readable file) or a LAMMPS text dump",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--committee",
        nargs="+",
        metavar="MODEL",
        help="deployed model files (nequip-deploy build) whose force deviation is computed here",
    )
    source.add_argument(
        "--deviation",
        metavar="FILE",
        help="the model deviation file of the run (pair_style reann ... out_freq N out_file "
        "FILE, or DeePMD's model_devi.out); dump frames are matched to its rows by step",
    )
    parser.add_argument(
        "--lo", type=float, required=True, help="trust window: lowest max_devi_f selected (eV/Å)"
    )
    parser.add_argument(
        "--hi", type=float, required=True, help="trust window: max_devi_f from here up is refused"
    )
    parser.add_argument(
        "--max-frames",
        type=int,
        default=50,
        help="at most this many frames of the run, spread over it (default 50)",
    )
    parser.add_argument(
        "--elements",
        nargs="+",
        metavar="ELEMENT",
        help="LAMMPS dumps without an `element` column: the element of each atom type, in type "
        "order (as in pair_coeff)",
    )
    parser.add_argument(
        "-o", "--output", required=True, help="extxyz file of the selected frames (no labels)"
    )


def select_frames(
    max_deviation: np.ndarray, lo: float, hi: float, max_frames: int
) -> Tuple[np.ndarray, int, int, int]:
    """Indices of the frames to label, and how many frames fell below, inside and above the
    window.

    Args:
        max_deviation: [frames] the largest atomic force deviation of each frame (eV/Å)
        lo, hi: the trust window [lo, hi) (eV/Å)
        max_frames: at most this many indices; among more candidates, one from the middle of
            each of ``max_frames`` equal runs of consecutive candidates

    Returns:
        selected [≤ max_frames] increasing frame indices, then the counts below, inside, above
    """
    below = max_deviation < lo
    above = max_deviation >= hi
    candidates = np.flatnonzero(~below & ~above)
    if len(candidates) > max_frames:
        picks = ((np.arange(max_frames) + 0.5) * len(candidates) / max_frames).astype(np.int64)
        candidates = candidates[picks]
    return candidates, int(below.sum()), int((~below & ~above).sum()), int(above.sum())


def read_trajectory(path: str, elements: Optional[List[str]]) -> List:
    """The frames of ``path`` as ASE atoms; a LAMMPS dump's types become ``elements``, and each
    dump frame keeps its step in ``info["timestep"]``."""
    import ase.io
    from ase.io.formats import UnknownFileTypeError

    with open(path) as stream:
        first_line = stream.readline().strip()
    if first_line != _DUMP_START:
        try:
            return ase.io.read(path, ":")
        except UnknownFileTypeError as error:
            raise ValueError(
                f"ASE cannot tell the format of `{path}` ({error}); name it *.extxyz, or give "
                "a LAMMPS text dump"
            ) from None
    with open(path) as stream:
        columns = next(line for line in stream if line.startswith("ITEM: ATOMS")).split()[2:]
    if "element" not in columns and not elements:
        raise ValueError(
            f"the LAMMPS dump `{path}` names atom types, not elements: give --elements, one "
            "element per atom type in type order"
        )
    if not {"x", "xu", "xs", "xsu"} & set(columns) or "id" not in columns:
        raise ValueError(
            f"the LAMMPS dump `{path}` has the columns {' '.join(columns)}; selecting frames "
            "needs id and positions (x y z or xu yu zu)"
        )
    return ase.io.read(path, ":", format="lammps-dump-text", specorder=elements)


def committee_deviation(frames: List, models: List[str]) -> np.ndarray:
    """max_devi_f [frames] (eV/Å) of the committee ``models`` on each frame."""
    from reann_nequip.integrations.ase import ReannCalculator

    if len(models) < 2:
        raise ValueError(f"--committee needs two or more model files, found {len(models)}")
    calculator = ReannCalculator(models)
    deviation = np.empty(len(frames))
    for index, atoms in enumerate(frames):
        deviation[index] = calculator.get_property("forces_deviation", atoms.copy()).max()
    return deviation


def file_deviation(frames: List, path: str) -> np.ndarray:
    """max_devi_f [frames] (eV/Å) of each frame, from a deviation file: the row of the frame's
    step (LAMMPS dumps), or row i for frame i (other trajectories, which carry no step)."""
    from reann_nequip.deploy import read_deviation_file

    columns = read_deviation_file(path)
    if all("timestep" in atoms.info for atoms in frames):
        row_of_step = {int(step): row for row, step in enumerate(columns["step"])}
        missing = [
            atoms.info["timestep"] for atoms in frames if atoms.info["timestep"] not in row_of_step
        ]
        if missing:
            raise ValueError(
                f"`{path}` has no row for step {missing[0]} ({len(missing)} dump frames "
                "unmatched): dump at multiples of the deviation file's out_freq"
            )
        rows = [row_of_step[atoms.info["timestep"]] for atoms in frames]
        return columns["max_devi_f"][rows]
    if len(columns["step"]) != len(frames):
        raise ValueError(
            f"`{path}` has {len(columns['step'])} rows and the trajectory {len(frames)} frames "
            "without steps: one row per frame is needed"
        )
    return columns["max_devi_f"]


def run(args: argparse.Namespace) -> int:
    from ase import Atoms
    from ase.io import write

    try:
        if not 0.0 <= args.lo < args.hi:
            raise ValueError(
                f"the trust window needs 0 <= --lo < --hi, found [{args.lo}, {args.hi})"
            )
        if args.max_frames < 1:
            raise ValueError(f"--max-frames must be >= 1, found {args.max_frames}")
        inputs = [
            path for path in (args.trajectory, args.deviation, *(args.committee or [])) if path
        ]
        check_output_path(args.output, inputs=inputs)
        frames = read_trajectory(args.trajectory, args.elements)
        if args.committee:
            deviation = committee_deviation(frames, args.committee)
        else:
            deviation = file_deviation(frames, args.deviation)
        selected, below, inside, above = select_frames(deviation, args.lo, args.hi, args.max_frames)
        # geometry only: the frame's position in the run and its deviation as info
        chosen = []
        for index in selected:
            frame = frames[index]
            info = {
                "frame": int(index),
                "step": int(frame.info.get("timestep", index)),
                "max_devi_f": float(deviation[index]),
            }
            chosen.append(
                Atoms(frame.numbers, frame.positions, cell=frame.cell, pbc=frame.pbc, info=info)
            )
        with atomic_output(args.output, inputs=inputs) as stream:
            write(stream, chosen, format="extxyz")
    except (OSError, ValueError, OutputPathError) as error:
        print(f"reann-nequip select: error: {error}", file=sys.stderr)
        return 2
    print(
        f"{len(frames)} frames of {args.trajectory} by max force deviation (eV/Å): {below} below "
        f"{args.lo}, {inside} in [{args.lo}, {args.hi}), {above} at or above {args.hi}"
    )
    capped = (
        f" (capped at {args.max_frames}, spread over the run)" if inside > len(selected) else ""
    )
    print(f"selected {len(selected)} frames{capped} -> {args.output}")
    return 0
