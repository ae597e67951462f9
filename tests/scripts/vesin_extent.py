"""vesin's neighbour list of three atoms spanning argv[1] Å along two axes, without periodic axes,
at the cutoff argv[2]; prints the number of edges."""

import sys

import numpy as np
from nequip.data import AtomicDataDict, compute_neighborlist_, from_dict
from nequip.utils.global_state import set_global_state

set_global_state()  # float64 positions, as in nequip-train
extent, r_max = float(sys.argv[1]), float(sys.argv[2])
# two long axes and a flat third one: the shape for which vesin's cell list fails first
positions = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [extent, extent, 0.0]])
data = from_dict(
    {
        AtomicDataDict.POSITIONS_KEY: positions,
        AtomicDataDict.CELL_KEY: np.zeros((3, 3)),
        AtomicDataDict.PBC_KEY: np.zeros(3, dtype=bool),
    }
)
compute_neighborlist_(data, r_max=r_max, backend="vesin")
print("edges", data[AtomicDataDict.EDGE_INDEX_KEY].shape[1])
