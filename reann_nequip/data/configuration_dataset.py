"""A nequip dataset reading REANN ``configuration`` files."""

import array
import os
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import torch
from nequip.data import AtomicDataDict, from_dict
from nequip.data.dataset import AtomicDataset

from reann_nequip._keys import POLARIZABILITY_KEY, TOTAL_DIPOLE_KEY

from .configuration import frame_selection, select_frames

# abprop's property -> (nequip field, shape of one frame's value)
_PROPERTY_FIELDS = {
    "energy": (AtomicDataDict.TOTAL_ENERGY_KEY, (1, 1)),
    "dipole": (TOTAL_DIPOLE_KEY, (1, 3)),
    "polarizability": (POLARIZABILITY_KEY, (1, 3, 3)),
}


class ReannConfigurationDataset(AtomicDataset):
    """The frames of a REANN ``configuration`` file, as nequip data.

    The file is streamed (memory of one frame while parsing) and checked from start to end. The
    selected frames are kept packed in a few flat arrays (positions, forces, atomic numbers, cells,
    pbc, ``abprop``; about 2 kB per 39-atom frame with forces), and each frame becomes an
    ``AtomicDataDict`` only when it is accessed: a list of ``AtomicDataDict``s, as nequip's
    ``ASEDataset`` keeps, takes about 7 kB per such frame, 0.7 GB for 100,000 frames. Units are the
    file's own (nothing is converted). ``abprop:`` becomes ``total_energy`` [1, 1] (1 value),
    ``total_dipole`` [1, 3] (3) or ``polarizability`` [1, 3, 3] (9, row-major). Masses are not
    kept.

    Args:
        file_path (str): the ``configuration`` file
        transforms (list): nequip data transforms, applied when a frame is accessed
        frames: which frames: ``None`` (all, default), a Python slice string (``":800"``,
            ``"800:"``, ``"-191:"``, ``"::2"``) or a list of indices
        coordinates (str): ``cartesian`` or ``fractional``, how the file stores positions
            (REANN ``table_coor`` 0 or 1); required because the file does not say

    Example::

        dataset:
          _target_: reann_nequip.data.ReannConfigurationDataset
          file_path: data/train/configuration
          frames: ":800"
          coordinates: fractional
          transforms: [...]
    """

    def __init__(
        self,
        file_path: Union[str, os.PathLike],
        transforms: Optional[List[Callable]] = None,
        frames: Optional[Union[str, Sequence[int]]] = None,
        coordinates: Optional[str] = None,
    ):
        super().__init__(transforms=list(transforms or []))
        if coordinates is None:
            raise ValueError(
                "`coordinates` is required: 'cartesian' or 'fractional' (REANN's table_coor 0 "
                f"or 1) for {file_path}"
            )
        self.file_path = os.fspath(file_path)
        selection = frame_selection(frames, self.file_path)

        # === pack the frames as they stream in ===
        # array.array grows by realloc and np.frombuffer shares its memory: no list of per-frame
        # arrays, no concatenation, no second copy of the data
        positions, forces, cells = array.array("d"), array.array("d"), array.array("d")
        properties, numbers, pbc = array.array("d"), array.array("B"), array.array("B")
        atom_counts = array.array("q")
        property_name = None
        for frame in select_frames(self.file_path, coordinates, selection):
            # the reader guarantees one layout (forces or not, abprop length) per file
            property_name = frame.property_name
            positions.frombytes(frame.positions.tobytes())
            if frame.forces is not None:
                forces.frombytes(frame.forces.tobytes())
            cells.frombytes(frame.cell.tobytes())
            properties.frombytes(frame.properties.tobytes())
            numbers.frombytes(frame.numbers.astype(np.uint8).tobytes())
            pbc.frombytes(frame.pbc.astype(np.uint8).tobytes())
            atom_counts.append(len(frame.symbols))
        if property_name is None:
            raise ValueError(f"`frames` {frames!r} selects no frame of {self.file_path}")

        self._positions = np.frombuffer(positions, dtype=np.float64).reshape(-1, 3)  # [atoms, 3]
        self._forces = (
            np.frombuffer(forces, dtype=np.float64).reshape(-1, 3) if forces else None
        )  # [atoms, 3]
        self._numbers = np.frombuffer(numbers, dtype=np.uint8)  # [atoms]
        self._cells = np.frombuffer(cells, dtype=np.float64).reshape(-1, 3, 3)  # [frames, 3, 3]
        self._pbc = np.frombuffer(pbc, dtype=np.uint8).reshape(-1, 3).astype(bool)  # [frames, 3]
        self._properties = np.frombuffer(properties, dtype=np.float64).reshape(
            len(atom_counts), -1
        )  # [frames, 1 | 3 | 9]
        self._atom_offsets = np.concatenate([[0], np.cumsum(atom_counts)])  # [frames + 1]
        self._property_field = _PROPERTY_FIELDS[property_name]

    def __len__(self) -> int:
        return len(self._atom_offsets) - 1

    def _frame(self, index: int) -> AtomicDataDict.Type:
        """Frame ``index`` (0 <= index < len) as a fresh ``AtomicDataDict``."""
        start, stop = self._atom_offsets[index], self._atom_offsets[index + 1]
        # copies throughout: transforms may change tensors in place, the packed data must not
        data = {
            AtomicDataDict.POSITIONS_KEY: self._positions[start:stop].copy(),
            AtomicDataDict.CELL_KEY: self._cells[index].copy(),
            AtomicDataDict.PBC_KEY: self._pbc[index].copy(),
            AtomicDataDict.ATOMIC_NUMBERS_KEY: self._numbers[start:stop].astype(np.int64),
        }
        if self._forces is not None:
            data[AtomicDataDict.FORCE_KEY] = self._forces[start:stop].copy()
        field, shape = self._property_field
        data[field] = self._properties[index].reshape(shape).copy()
        return from_dict(data)

    def _get_data_list(
        self, indices: Union[List[int], torch.Tensor, np.ndarray, slice]
    ) -> List[AtomicDataDict.Type]:
        # indexing a range gives Python's rules: negative indices, slices, IndexError
        frames = range(len(self))
        if isinstance(indices, slice):
            return [self._frame(index) for index in frames[indices]]
        return [self._frame(frames[int(index)]) for index in indices]
