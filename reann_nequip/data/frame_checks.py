"""Physical sanity of one training frame: what the readers and data modules refuse.

A frame is refused, by the first of these that fails:

- a non-finite position, cell or label;
- along a periodic axis, a cell thinner than 2 × ``MIN_DISTANCE`` or an atom more than
  ``MAX_CELL_IMAGES`` cell vectors from the cell; without any periodic axis, atoms spanning more
  than ``MAX_EXTENT`` Å along x, y or z (vesin, the configs' neighbour list, dies on such frames);
- a label beyond ``MAX_LABEL`` in magnitude: the energy per atom, or any component of the others;
- two atoms (or an atom and a periodic image) closer than ``MIN_DISTANCE`` Å.

The bounds live in ``reann_nequip._limits``. The functions here only describe the problem;
the callers add the file, frame and line.
"""

import dataclasses
from typing import Mapping, Optional, Tuple

import numpy as np
import scipy.spatial

from .._limits import MAX_CELL_IMAGES, MAX_EXTENT, MAX_LABEL, MIN_DISTANCE


@dataclasses.dataclass(frozen=True)
class FrameProblem:
    """Why a frame is refused.

    Attributes:
        message: what is wrong, naming atoms by their 0-based index in the frame
        field: ``positions``, ``cell`` or the name of the label at fault
        atoms: the atoms at fault, if any (for a reader to name their lines)
    """

    message: str
    field: str
    atoms: Tuple[int, ...] = ()


def frame_problem(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    energy: Optional[float] = None,
    forces: Optional[np.ndarray] = None,
    labels: Optional[Mapping[str, np.ndarray]] = None,
) -> Optional[FrameProblem]:
    """The first problem of a frame, or ``None`` for a sound frame.

    Args:
        positions: [num_atoms, 3] Cartesian positions (Å)
        cell: [3, 3] cell vectors as rows (rows of non-periodic axes may be zero)
        pbc: [3] periodicity along the cell vectors
        energy: total energy of the frame, if labelled
        forces: [num_atoms, 3] forces, if labelled
        labels: other labels by name (dipole, polarizability, stress, …), any shape
    """
    num_atoms = len(positions)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)

    # === finite geometry ===
    bad = ~np.isfinite(positions).all(axis=1)
    if bad.any():
        atom = int(np.argmax(bad))
        return FrameProblem(
            f"atom {atom} has a non-finite position {positions[atom].tolist()}",
            "positions",
            (atom,),
        )
    if not np.isfinite(cell).all():
        return FrameProblem(f"the cell is not finite: {np.asarray(cell).tolist()}", "cell")

    # === extent: periodic images, or the span of an open frame ===
    basis = fractional = None  # [3, 3] completed cell, [num_atoms, 3] fractional positions
    if pbc.any():
        basis = _completed_cell(cell, pbc)
        if basis is None:
            return FrameProblem(
                f"the cell vectors along the periodic axes {np.flatnonzero(pbc).tolist()} are "
                f"linearly dependent: {np.asarray(cell).tolist()}",
                "cell",
            )
        reciprocal = np.linalg.inv(basis)  # columns: reciprocal vectors b_k, a_i . b_k = δ_ik
        thickness = 1.0 / np.linalg.norm(reciprocal, axis=0)  # [3] distances between faces
        for axis in np.flatnonzero(pbc):
            if thickness[axis] < 2.0 * MIN_DISTANCE:
                return FrameProblem(
                    f"the cell is {thickness[axis]:.3g} Å thick (between its faces) along cell "
                    f"vector {axis}; a periodic cell must be at least {2.0 * MIN_DISTANCE:g} Å "
                    "thick",
                    "cell",
                )
        fractional = positions @ reciprocal  # [num_atoms, 3]
        images = np.abs(fractional[:, pbc]).max(axis=1)  # [num_atoms]
        if (images > MAX_CELL_IMAGES).any():
            atom = int(np.argmax(images))
            return FrameProblem(
                f"atom {atom} lies {images[atom]:.3g} cell vectors away from "
                f"the cell (at most {MAX_CELL_IMAGES:g}; wrap the positions into the cell)",
                "positions",
                (atom,),
            )
    elif num_atoms:
        low, high = positions.argmin(axis=0), positions.argmax(axis=0)
        span = positions.max(axis=0) - positions.min(axis=0)
        axis = int(np.argmax(span))
        if span[axis] > MAX_EXTENT:
            first, second = sorted((int(low[axis]), int(high[axis])))
            return FrameProblem(
                f"atoms {first} and {second} lie {span[axis]:.3g} Å apart along "
                f"{'xyz'[axis]} in a frame without periodic axes (at most {MAX_EXTENT:g} Å)",
                "positions",
                (first, second),
            )

    # === labels ===
    if energy is not None:
        per_atom = float(energy) / max(num_atoms, 1)
        if not np.isfinite(per_atom) or abs(per_atom) > MAX_LABEL:
            return FrameProblem(
                f"the energy {float(energy):g} ({per_atom:g} per atom) is beyond ±{MAX_LABEL:g} "
                "per atom, or not finite",
                "energy",
            )
    if forces is not None:
        bad = ~(np.abs(forces) <= MAX_LABEL).all(axis=1)  # NaN fails the comparison
        if bad.any():
            atom = int(np.argmax(bad))
            return FrameProblem(
                f"atom {atom} has the force {forces[atom].tolist()}, beyond ±{MAX_LABEL:g} or "
                "not finite",
                "forces",
                (atom,),
            )
    for name, values in (labels or {}).items():
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        bad = ~(np.abs(values) <= MAX_LABEL)
        if bad.any():
            return FrameProblem(
                f"`{name}` holds {values[int(np.argmax(bad))]:g} (component "
                f"{int(np.argmax(bad))}), beyond ±{MAX_LABEL:g} or not finite",
                name,
            )

    # === the closest pair ===
    closest = _closest_pair(positions, basis, fractional, pbc)
    if closest is not None:
        first, second, distance = closest
        return FrameProblem(
            f"atoms {first} and {second} are {distance:.3g} Å apart, closer than "
            f"{MIN_DISTANCE} Å (a duplicated or misplaced atom; ReannCalculator and pair_style "
            "reann refuse such geometries too)",
            "positions",
            (first, second),
        )
    return None


def _completed_cell(cell: np.ndarray, pbc: np.ndarray) -> Optional[np.ndarray]:
    """[3, 3] ``cell`` whose non-periodic rows are replaced by unit vectors normal to the
    periodic ones (their length is irrelevant: no image is taken along them); ``None`` if the
    periodic rows are linearly dependent."""
    periodic = np.asarray(cell, dtype=np.float64)[pbc]  # [num_periodic, 3]
    # the right singular vectors beyond the periodic rows' rank span their orthogonal complement
    _, singular_values, vt = np.linalg.svd(periodic)
    if singular_values.min() <= 1e-10 * max(singular_values.max(), 1e-300):
        return None
    basis = np.array(cell, dtype=np.float64)
    basis[~pbc] = vt[len(periodic) :]
    return basis


def _closest_pair(
    positions: np.ndarray, basis: Optional[np.ndarray], fractional: Optional[np.ndarray], pbc
) -> Optional[Tuple[int, int, float]]:
    """(i, j, distance) with i < j of the closest pair of atoms, periodic images included, if
    it is closer than ``MIN_DISTANCE``; ``None`` otherwise.

    A k-d tree over the atoms wrapped into the cell and, along periodic axes, copies of those
    within ``MIN_DISTANCE`` of a face shifted past the opposite face (O(N log N)). A vector d shorter than half the thickness
    h_k has |d · b_k| <= |d| / h_k < 1/2 along every periodic axis k, so in cells at least
    2 × ``MIN_DISTANCE`` thick (checked before) one shift per axis finds every close image, and
    no atom is that close to its own images.
    """
    owners = np.arange(len(positions))
    points = positions
    if basis is not None:
        wrapped = fractional.copy()  # [num_points, 3], periodic components in [0, 1)
        wrapped[:, pbc] -= np.floor(wrapped[:, pbc])
        margin = MIN_DISTANCE * np.linalg.norm(np.linalg.inv(basis), axis=0)  # [3] fractional
        # copies of copies fill the edges and corners
        for axis in np.flatnonzero(pbc):
            low = wrapped[:, axis] < margin[axis]
            high = wrapped[:, axis] > 1.0 - margin[axis]
            shifted = np.concatenate([wrapped[low], wrapped[high]])
            shifted[:, axis] += np.repeat([1.0, -1.0], [low.sum(), high.sum()])
            wrapped = np.concatenate([wrapped, shifted])
            owners = np.concatenate([owners, owners[low], owners[high]])
        points = wrapped @ basis
    pairs = scipy.spatial.cKDTree(points).query_pairs(MIN_DISTANCE, output_type="ndarray")
    # query_pairs includes pairs at exactly MIN_DISTANCE, which are accepted
    distances = np.linalg.norm(points[pairs[:, 0]] - points[pairs[:, 1]], axis=1)
    if not (distances < MIN_DISTANCE).any():
        return None
    closest = int(np.argmin(distances))
    first, second = sorted(int(owners[atom]) for atom in pairs[closest])
    return first, second, float(distances[closest])
