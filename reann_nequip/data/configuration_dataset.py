"""A nequip dataset reading REANN ``configuration`` files."""

import os
from typing import Callable, List, Optional, Sequence, Union

import torch
from nequip.data import AtomicDataDict, from_dict
from nequip.data.dataset import AtomicDataset

from reann_nequip._keys import POLARIZABILITY_KEY, TOTAL_DIPOLE_KEY

from .configuration import ReannFrame, frame_selection, select_frames


def frame_to_atomic_data(frame: ReannFrame) -> AtomicDataDict.Type:
    """One frame as nequip data: ``pos``, ``cell``, ``pbc``, ``atomic_numbers``, ``forces`` (if
    the file has them) and ``total_energy`` [1, 1], ``total_dipole`` [1, 3] or
    ``polarizability`` [1, 3, 3] from ``abprop``, in the file's units. Masses are not kept."""
    data = {
        AtomicDataDict.POSITIONS_KEY: frame.positions,
        AtomicDataDict.CELL_KEY: frame.cell,
        AtomicDataDict.PBC_KEY: frame.pbc,
        AtomicDataDict.ATOMIC_NUMBERS_KEY: frame.numbers,
    }
    if frame.forces is not None:
        data[AtomicDataDict.FORCE_KEY] = frame.forces
    if frame.property_name == "energy":
        data[AtomicDataDict.TOTAL_ENERGY_KEY] = frame.properties.reshape(1, 1)
    elif frame.property_name == "dipole":
        data[TOTAL_DIPOLE_KEY] = frame.properties.reshape(1, 3)
    else:
        data[POLARIZABILITY_KEY] = frame.properties.reshape(1, 3, 3)
    return from_dict(data)


class ReannConfigurationDataset(AtomicDataset):
    """The frames of a REANN ``configuration`` file, as nequip data.

    The file is streamed (memory of one frame while parsing) and checked from start to end; the
    selected frames are kept in memory as ``AtomicDataDict``s, as nequip's ``ASEDataset`` does.
    Units are the file's own (nothing is converted). ``abprop:`` becomes ``total_energy`` (1
    value), ``total_dipole`` (3) or ``polarizability`` (9, row-major, [3, 3]).

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
        self.data_list: List[AtomicDataDict.Type] = [
            frame_to_atomic_data(frame)
            for frame in select_frames(self.file_path, coordinates, selection)
        ]
        if not self.data_list:
            raise ValueError(f"`frames` {frames!r} selects no frame of {self.file_path}")

    def __len__(self) -> int:
        return len(self.data_list)

    def _get_data_list(
        self, indices: Union[List[int], torch.Tensor, slice]
    ) -> List[AtomicDataDict.Type]:
        if isinstance(indices, slice):
            return self.data_list[indices]
        return [self.data_list[int(index)] for index in indices]
