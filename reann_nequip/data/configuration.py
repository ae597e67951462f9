"""REANN's ``configuration`` file: a streaming reader, a writer, and ASE-style wrappers.

A file holds frames one after another, each::

    point= 1                          <- free header line (kept, not interpreted)
    7.5203  0.0     0.0               <- lattice vector a (a row)
    0.0     7.5203  0.0               <- lattice vector b
    0.0     0.0     20.3176           <- lattice vector c
    pbc 1 1 1                         <- periodicity along a, b, c (exactly three 0/1 flags)
    O  15.999  x y z  [fx fy fz]      <- one line per atom: symbol, mass, coordinates, forces
    ...
    abprop: v1 [v2 ... v9]            <- ends the frame: 1 value (energy), 3 (dipole) or
                                         9 (polarizability, row-major)

Coordinates are Cartesian or fractional (REANN's ``table_coor`` 0 or 1); which one is the
caller's choice because the file does not say. Nothing is converted: the units are the file's
own (REANN users typically have Å, eV, eV/Å, e·Å and Å³), and energies are total energies of the
frame. Frames may differ in size and composition, but every frame of one file must carry the same
fields (forces or not, the same number of ``abprop`` values), because they are trained together.

The reader is a generator: it holds one frame at a time, so memory grows with the largest frame,
not with the file. Every malformed line raises :class:`ConfigurationFormatError` naming the file
and the line; nothing is skipped. So does every frame that cannot be physics
(:func:`reann_nequip.data.frame_checks.frame_problem`: atoms closer than 0.1 Å, non-finite
positions after the fractional conversion, labels beyond 1e9 per atom, …), naming the frame and
the lines of the atoms at fault.
"""

import dataclasses
import itertools
import math
import os
from typing import IO, Iterable, Iterator, List, Optional, Sequence, Union

import ase
import ase.data
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator

from .._files import atomic_output
from .frame_checks import frame_problem

COORDINATES = ("cartesian", "fractional")

# abprop length -> the property it holds
PROPERTY_BY_LENGTH = {1: "energy", 3: "dipole", 9: "polarizability"}

_ELEMENTS = {symbol: number for number, symbol in enumerate(ase.data.chemical_symbols) if number}


class ConfigurationFormatError(ValueError):
    """A malformed REANN ``configuration`` file; the message names the file and the line."""

    def __init__(self, path: str, line: int, message: str):
        super().__init__(f"{path}, line {line}: {message}")
        self.path = path
        self.line = line


@dataclasses.dataclass
class ReannFrame:
    """One frame of a ``configuration`` file, in the file's units.

    Attributes:
        header: the free first line, without its line break
        cell: [3, 3] lattice vectors as rows
        pbc: [3] periodicity along the three lattice vectors
        symbols: [num_atoms] element symbols
        masses: [num_atoms] atomic masses
        positions: [num_atoms, 3] Cartesian positions (converted if the file is fractional)
        forces: [num_atoms, 3] forces (−gradient of the energy) or ``None``
        properties: [1] energy, [3] dipole or [9] row-major polarizability (``abprop``)
        line: line number (1-based) of the frame's header in its file
    """

    header: str
    cell: np.ndarray
    pbc: np.ndarray
    symbols: List[str]
    masses: np.ndarray
    positions: np.ndarray
    forces: Optional[np.ndarray]
    properties: np.ndarray
    line: int = 0

    @property
    def numbers(self) -> np.ndarray:
        """[num_atoms] atomic numbers."""
        return np.array([_ELEMENTS[symbol] for symbol in self.symbols], dtype=np.int64)

    @property
    def property_name(self) -> str:
        """``energy``, ``dipole`` or ``polarizability``, from the number of ``abprop`` values."""
        return PROPERTY_BY_LENGTH[len(self.properties)]

    def to_atoms(self) -> ase.Atoms:
        """The frame as ``ase.Atoms``: the masses in ``masses``, the header in
        ``info["header"]``, energy/forces/dipole in a ``SinglePointCalculator``, the
        polarizability as a [3, 3] array in ``info["polarizability"]``."""
        atoms = ase.Atoms(
            symbols=self.symbols,
            positions=self.positions,
            cell=self.cell,
            pbc=self.pbc,
            masses=self.masses,
        )
        atoms.info["header"] = self.header
        results = {}
        if self.forces is not None:
            results["forces"] = self.forces
        if self.property_name == "energy":
            results["energy"] = float(self.properties[0])
        elif self.property_name == "dipole":
            results["dipole"] = self.properties.copy()
        else:
            atoms.info["polarizability"] = self.properties.reshape(3, 3).copy()
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms

    @classmethod
    def from_atoms(cls, atoms: ase.Atoms, prop: str, header: str) -> "ReannFrame":
        """A frame holding ``prop`` (``energy``, ``dipole`` or ``polarizability``) of ``atoms``;
        forces are written when the atoms have them."""
        results = atoms.calc.results if atoms.calc is not None else {}
        if prop == "energy":
            if "energy" not in results:
                raise ValueError(f"`prop` is 'energy' but the atoms {atoms} have no energy")
            properties = np.array([results["energy"]], dtype=float)
        elif prop == "dipole":
            dipole = results.get("dipole", atoms.info.get("total_dipole"))
            if dipole is None:
                raise ValueError(f"`prop` is 'dipole' but the atoms {atoms} have no dipole")
            properties = np.asarray(dipole, dtype=float).reshape(3)
        elif prop == "polarizability":
            if "polarizability" not in atoms.info:
                raise ValueError(
                    f"`prop` is 'polarizability' but the atoms {atoms} have no "
                    "info['polarizability']"
                )
            properties = np.asarray(atoms.info["polarizability"], dtype=float).reshape(9)
        else:
            raise ValueError(
                f"`prop` must be one of {sorted(PROPERTY_BY_LENGTH.values())}, found {prop!r}"
            )
        forces = np.asarray(results["forces"], dtype=float) if "forces" in results else None
        return cls(
            header=header,
            cell=np.asarray(atoms.cell, dtype=float),
            pbc=np.asarray(atoms.pbc, dtype=bool),
            symbols=atoms.get_chemical_symbols(),
            masses=atoms.get_masses(),
            positions=atoms.positions.copy(),
            forces=forces,
            properties=properties,
        )


def _check_coordinates(coordinates: str) -> None:
    if coordinates not in COORDINATES:
        raise ValueError(
            f"`coordinates` must be one of {COORDINATES} (REANN's table_coor 0 or 1), "
            f"found {coordinates!r}"
        )


class _LineReader:
    """Numbered lines of one file opened in binary mode, decoded as UTF-8 one line at a time (so
    that a bad byte is reported on its own line), with errors that name the file and the line."""

    def __init__(self, stream: IO[bytes], path: str):
        self.stream = stream
        self.path = path
        self.number = 0

    def next(self) -> Optional[str]:
        """The next line without its line break; ``None`` at the end of the file."""
        raw = self.stream.readline()
        if not raw:
            return None
        self.number += 1
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            self.fail(
                f"not UTF-8 text: byte {raw[error.start]:#04x} at column {error.start + 1} "
                f"({error.reason}); REANN configuration files are plain text"
            )
        return line.rstrip("\r\n")

    def required(self, expected: str, frame_line: int) -> str:
        line = self.next()
        if line is None:
            self.fail(
                f"the file ends inside the frame starting at line {frame_line}: expected "
                f"{expected}",
                line=self.number + 1,
            )
        return line

    def fail(self, message: str, line: Optional[int] = None):
        raise ConfigurationFormatError(self.path, self.number if line is None else line, message)

    def numbers(self, tokens: Sequence[str], what: str, line: Optional[int] = None) -> List[float]:
        try:
            values = [float(token) for token in tokens]
        except ValueError:
            self.fail(f"{what} must be numbers, found {' '.join(tokens)!r}", line)
        if not all(math.isfinite(v) for v in values):
            self.fail(f"{what} must be finite numbers, found {' '.join(tokens)!r}", line)
        return values


def _read_frame(reader: _LineReader, header: str, coordinates: str) -> ReannFrame:
    frame_line = reader.number

    # === lattice ===
    rows = []
    for axis in "abc":
        tokens = reader.required(f"lattice vector {axis}", frame_line).split()
        if len(tokens) != 3:
            reader.fail(f"lattice vector {axis} must have 3 numbers, found {len(tokens)}")
        rows.append(reader.numbers(tokens, f"lattice vector {axis}"))
    cell = np.array(rows)
    lengths = np.linalg.norm(cell, axis=1)
    volume = abs(float(np.linalg.det(cell)))
    if not volume > 1e-8 * float(np.prod(lengths)):
        reader.fail(
            f"the cell of the frame starting at line {frame_line} is singular (volume "
            f"{volume:g}); REANN needs three independent lattice vectors (a large box for "
            "molecules)"
        )

    # === pbc ===
    tokens = reader.required("the `pbc` line", frame_line).split()
    if len(tokens) == 0 or tokens[0].lower() != "pbc":
        reader.fail(f"expected the `pbc px py pz` line, found {' '.join(tokens)!r}")
    if len(tokens) != 4:
        reader.fail(f"the `pbc` line must have exactly 3 flags, found {len(tokens) - 1}")
    flags = reader.numbers(tokens[1:], "pbc flags")
    if any(flag not in (0.0, 1.0) for flag in flags):
        reader.fail(f"pbc flags must be 0 or 1, found {' '.join(tokens[1:])!r}")
    pbc = np.array(flags) == 1.0

    # === atoms, up to the abprop line ===
    symbols: List[str] = []
    atom_tokens: List[List[str]] = []
    while True:
        tokens = reader.required("an atom line or `abprop:`", frame_line).split()
        if tokens and tokens[0] == "abprop:":
            break
        if len(tokens) not in (5, 8):
            reader.fail(
                "an atom line must be `symbol mass x y z` or `symbol mass x y z fx fy fz` "
                f"(5 or 8 columns), found {len(tokens)} columns: {' '.join(tokens)!r}"
            )
        if tokens[0] not in _ELEMENTS:
            reader.fail(f"unknown element {tokens[0]!r}")
        if atom_tokens and len(tokens) != len(atom_tokens[0]) + 1:
            reader.fail(
                f"{len(tokens)} columns, but the frame's first atom line has "
                f"{len(atom_tokens[0]) + 1}: all atoms of a frame need forces or none"
            )
        symbols.append(tokens[0])
        atom_tokens.append(tokens[1:])
    if not symbols:
        reader.fail(f"the frame starting at line {frame_line} has no atoms")
    first_atom_line = frame_line + 5
    try:
        values = np.array(atom_tokens, dtype=float)  # [num_atoms, 4 or 7]
    except ValueError:
        values = None
    if values is None or not np.isfinite(values).all():
        # find the offending line for the message
        for i, tokens in enumerate(atom_tokens):
            reader.numbers(tokens, "mass, coordinates and forces", line=first_atom_line + i)
    masses = values[:, 0]
    if not (masses > 0).all():
        i = int(np.argmin(masses > 0))
        reader.fail(f"masses must be positive, found {masses[i]}", line=first_atom_line + i)
    positions = values[:, 1:4]
    if coordinates == "fractional":
        # finite fractions times a finite cell may still overflow (1e300 in a 1e10 Å cell):
        # checked here rather than warned about by numpy
        with np.errstate(over="ignore", invalid="ignore"):
            positions = positions @ cell
        overflow = ~np.isfinite(positions).all(axis=1)
        if overflow.any():
            i = int(np.argmax(overflow))
            reader.fail(
                f"fractional coordinates {values[i, 1:4].tolist()} times the cell give the "
                f"non-finite position {positions[i].tolist()}",
                line=first_atom_line + i,
            )
    forces = values[:, 4:7] if values.shape[1] == 7 else None

    # === abprop ===
    if len(tokens) - 1 not in PROPERTY_BY_LENGTH:
        reader.fail(
            "`abprop:` must hold 1 (energy), 3 (dipole) or 9 (polarizability) values, found "
            f"{len(tokens) - 1}"
        )
    properties = np.array(reader.numbers(tokens[1:], "abprop values"))
    return ReannFrame(
        header=header,
        cell=cell,
        pbc=pbc,
        symbols=symbols,
        masses=masses,
        positions=positions,
        forces=forces,
        properties=properties,
        line=frame_line,
    )


def iter_configuration(path: Union[str, os.PathLike], coordinates: str) -> Iterator[ReannFrame]:
    """Frames of a ``configuration`` file one at a time (memory: one frame).

    Args:
        path: the file
        coordinates (str): ``cartesian`` or ``fractional`` (REANN ``table_coor`` 0 or 1)

    Yields:
        :class:`ReannFrame` with Cartesian positions, in the file's units

    Raises:
        ConfigurationFormatError: a malformed line, frames with different fields, or a frame
            that cannot be physics (see :func:`~reann_nequip.data.frame_checks.frame_problem`)
    """
    _check_coordinates(coordinates)
    path = os.fspath(path)
    layout = None  # (has forces, abprop length) of the first frame
    with open(path, "rb") as stream:
        reader = _LineReader(stream, path)
        for index in itertools.count():
            header = reader.next()
            if header is None:
                return
            if not header.strip():
                # blank lines may only end the file
                blank_line = reader.number
                while header is not None and not header.strip():
                    header = reader.next()
                if header is None:
                    return
                reader.fail("empty line between frames (a header line was expected)", blank_line)
            frame = _read_frame(reader, header, coordinates)
            frame_layout = (frame.forces is not None, len(frame.properties))
            if layout is None:
                layout = frame_layout
            elif frame_layout != layout:
                raise ConfigurationFormatError(
                    path,
                    frame.line,
                    f"the frame starting here has {'' if frame_layout[0] else 'no '}forces and "
                    f"{frame_layout[1]} abprop value(s), but the file's first frame has "
                    f"{'' if layout[0] else 'no '}forces and {layout[1]}; one file holds one "
                    "kind of labels",
                )
            _check_physics(frame, index, path, coordinates)
            yield frame


def _check_physics(frame: ReannFrame, index: int, path: str, coordinates: str) -> None:
    """Raise :class:`ConfigurationFormatError` for a frame that cannot be physics, naming the
    frame and the line of the atom, cell or ``abprop`` at fault."""
    energy = float(frame.properties[0]) if frame.property_name == "energy" else None
    labels = {} if energy is not None else {f"abprop ({frame.property_name})": frame.properties}
    problem = frame_problem(frame.positions, frame.cell, frame.pbc, energy, frame.forces, labels)
    if problem is None:
        return
    first_atom_line = frame.line + 5
    where = f"frame {index} (starting at line {frame.line})"
    if problem.atoms:
        line = first_atom_line + problem.atoms[0]
        if len(problem.atoms) > 1:
            where += ", lines " + " and ".join(str(first_atom_line + a) for a in problem.atoms)
    elif problem.field == "cell":
        line = frame.line + 1
    else:
        line = first_atom_line + len(frame.symbols)  # the abprop line
    message = f"{where}: {problem.message}"
    if coordinates == "cartesian" and problem.atoms and (np.abs(frame.positions) <= 1.0).all():
        # every coordinate within [-1, 1]: most likely REANN's fractional table_coor 1
        message += "; are these fractional coordinates (`coordinates: fractional`)?"
    raise ConfigurationFormatError(path, line, message)


def looks_like_configuration(path: Union[str, os.PathLike]) -> bool:
    """Whether the file reads like a ``configuration`` file, whatever its name: its fifth line is
    REANN's ``pbc`` line (the first four are a header and three lattice vectors)."""
    with open(path, "rb") as stream:
        lines = [stream.readline() for _ in range(5)]
    tokens = lines[4].split()
    return bool(tokens) and tokens[0].lower() == b"pbc"


def count_frames(path: Union[str, os.PathLike]) -> int:
    """Number of ``abprop:`` lines, i.e. of frames, without parsing them."""
    with open(path, "rb") as stream:
        return sum(1 for line in stream if line.lstrip().startswith(b"abprop:"))


def _format_row(values) -> str:
    return " ".join(repr(float(v)) for v in values)


def write_frames(
    path: Union[str, os.PathLike], frames: Iterable[ReannFrame], coordinates: str
) -> None:
    """Write frames to a ``configuration`` file; numbers keep full float64 precision.

    Args:
        path: the file, replaced only once complete (an error or a kill midway leaves the old
            one); a generator may read the frames from ``path`` itself
        frames: the frames, in the units wanted in the file; written as they come, so a
            generator is written with the memory of one frame
        coordinates (str): ``cartesian`` or ``fractional`` (REANN ``table_coor`` 0 or 1)
    """
    _check_coordinates(coordinates)
    with atomic_output(path) as stream:
        for index, frame in enumerate(frames):
            header = frame.header.strip() or f"point= {index + 1}"
            if "\n" in header:
                raise ValueError(f"frame {index}: the header must be one line, found {header!r}")
            stream.write(header + "\n")
            for row in frame.cell:
                stream.write(_format_row(row) + "\n")
            stream.write("pbc " + " ".join("1" if flag else "0" for flag in frame.pbc) + "\n")
            positions = frame.positions
            if coordinates == "fractional":
                positions = np.linalg.solve(frame.cell.T, positions.T).T
            for i, symbol in enumerate(frame.symbols):
                columns = [frame.masses[i], *positions[i]]
                if frame.forces is not None:
                    columns.extend(frame.forces[i])
                stream.write(f"{symbol} {_format_row(columns)}\n")
            stream.write(f"abprop: {_format_row(frame.properties)}\n")


def read_configuration(
    path: Union[str, os.PathLike], index: Union[int, str, slice] = -1, *, coordinates: str
) -> Union[ase.Atoms, List[ase.Atoms]]:
    """ASE-style reader: one frame (``index`` an int) or a list (a slice or slice string).

    Args:
        path: the file
        index: frame index, ``slice``, or slice string such as ``":"`` or ``"-10:"``
            (default ``-1``, the last frame, as ``ase.io.read``)
        coordinates (str): ``cartesian`` or ``fractional`` (REANN ``table_coor``); required

    Returns:
        ``ase.Atoms`` as made by :meth:`ReannFrame.to_atoms`, in the file's units
    """
    _check_coordinates(coordinates)
    if isinstance(index, int):
        selection = frame_selection([index], path)
        return next(select_frames(path, coordinates, selection)).to_atoms()
    selection = frame_selection(index, path)
    return [frame.to_atoms() for frame in select_frames(path, coordinates, selection)]


def write_configuration(
    path: Union[str, os.PathLike],
    images: Union[ase.Atoms, Iterable[ase.Atoms]],
    coordinates: str = "cartesian",
    prop: str = "energy",
) -> None:
    """ASE-style writer: ``images`` with their forces (if any) and one ``abprop`` property.

    Args:
        path: the file, replaced only once complete (see ``write_frames``)
        images: ``ase.Atoms`` or an iterable of them (a generator is written one frame at a
            time); energies, forces and dipoles from their calculators (dipole also from
            ``info["total_dipole"]``), polarizability from ``info["polarizability"]`` ([3, 3] or
            9 values)
        coordinates (str): ``cartesian`` or ``fractional`` (default ``cartesian``)
        prop (str): what ``abprop:`` holds: ``energy``, ``dipole`` or ``polarizability``
            (default ``energy``)
    """
    if isinstance(images, ase.Atoms):
        images = [images]
    frames = (
        ReannFrame.from_atoms(atoms, prop, header=atoms.info.get("header", f"point= {i + 1}"))
        for i, atoms in enumerate(images)
    )
    write_frames(path, frames, coordinates)


def frame_selection(
    frames: Union[None, str, slice, Sequence[int]], path: Union[str, os.PathLike]
) -> Union[slice, List[int]]:
    """Normalise a frame selection to a non-negative ``slice`` or list of indices.

    ``frames`` is ``None`` (all), a ``slice``, a Python slice string (``":800"``, ``"800:"``,
    ``"::2"``, ``"-191:"``) or a list of indices (negative ones count from the end). The file is
    scanned for its frame count only when negative indices need it.
    """
    if frames is None:
        return slice(0, None, 1)
    if isinstance(frames, str):
        parts = frames.split(":")
        if len(parts) == 1:
            try:
                return frame_selection([int(parts[0])], path)
            except ValueError:
                pass
        try:
            if len(parts) > 3:
                raise ValueError
            bounds = [int(p) if p.strip() else None for p in parts] + [None] * (3 - len(parts))
        except ValueError:
            raise ValueError(
                f"`frames` must be a slice such as ':800' or '800:' or a list of indices, "
                f"found {frames!r}"
            ) from None
        frames = slice(*bounds)
    if isinstance(frames, slice):
        step = 1 if frames.step is None else frames.step
        if step <= 0:
            raise ValueError(f"`frames` must have a positive step, found {step}")
        start, stop = frames.start, frames.stop
        if (start is not None and start < 0) or (stop is not None and stop < 0):
            start, stop, step = frames.indices(count_frames(path))
        return slice(start or 0, stop, step)
    indices = [int(i) for i in frames]
    if any(i < 0 for i in indices):
        total = count_frames(path)
        indices = [i + total if i < 0 else i for i in indices]
        if any(i < 0 for i in indices):
            raise IndexError(f"`frames` {list(frames)} out of range for {path} ({total} frames)")
    return indices


def select_frames(
    path: Union[str, os.PathLike], coordinates: str, selection: Union[slice, List[int]]
) -> Iterator[ReannFrame]:
    """The frames chosen by :func:`frame_selection`'s ``selection``, in its order.

    The whole file is read (and checked); only the selected frames are kept, and for a slice
    only one frame at a time.
    """
    if isinstance(selection, slice):
        for index, frame in enumerate(iter_configuration(path, coordinates)):
            if selection.stop is not None and index >= selection.stop:
                # keep reading: errors later in the file must not pass unnoticed
                continue
            if index >= selection.start and (index - selection.start) % selection.step == 0:
                yield frame
        return
    wanted = set(selection)
    kept = {}
    total = 0
    for index, frame in enumerate(iter_configuration(path, coordinates)):
        total = index + 1
        if index in wanted:
            kept[index] = frame
    missing = sorted(wanted - set(kept))
    if missing:
        raise IndexError(f"frame(s) {missing} out of range for {path} ({total} frames)")
    for index in selection:
        yield kept[index]
