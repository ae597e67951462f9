"""Edge vectors and lengths, the first stage of every REANN model.

The same numbers as nequip's ``with_edge_vectors_``, from cheaper operations: the periodic
shift s_ij C of a single frame as one [E, 3] × [3, 3] product, and the squared lengths as
(r ⊙ r) (1, 1, 1)ᵀ. nequip forms [E, 3, 3] broadcast products and sums over rows of 3, which
torch runs several times slower, a noticeable share of an eager call on small systems.
"""

import torch
from nequip.data import AtomicDataDict
from nequip.nn import GraphModuleMixin


def with_edge_vectors(data: AtomicDataDict.Type) -> AtomicDataDict.Type:
    """Adds ``edge_vectors`` r_ij = x_j − x_i (+ s_ij C) [E, 3] and ``edge_lengths`` ‖r_ij‖
    [E, 1] (Å) to ``data``, each unless present, differentiable in positions and cell."""
    if AtomicDataDict.EDGE_VECTORS_KEY not in data:
        pos = data[AtomicDataDict.POSITIONS_KEY]
        edge_index = data[AtomicDataDict.EDGE_INDEX_KEY]
        vectors = torch.index_select(pos, 0, edge_index[1]) - torch.index_select(
            pos, 0, edge_index[0]
        )
        if AtomicDataDict.CELL_KEY in data:
            # cell vectors as rows (ASE); shifts in units of them
            cell = data[AtomicDataDict.CELL_KEY]
            shift = data[AtomicDataDict.EDGE_CELL_SHIFT_KEY].to(cell.dtype)
            if AtomicDataDict.BATCH_KEY in data:
                frame = torch.index_select(data[AtomicDataDict.BATCH_KEY], 0, edge_index[0])
                edge_cells = torch.index_select(cell.view(-1, 3, 3), 0, frame)  # [E, 3, 3]
                vectors = torch.baddbmm(
                    vectors.view(-1, 1, 3), shift.view(-1, 1, 3), edge_cells
                ).view(-1, 3)
            else:
                vectors = torch.addmm(vectors, shift, cell.view(3, 3))
        data[AtomicDataDict.EDGE_VECTORS_KEY] = vectors
    if AtomicDataDict.EDGE_LENGTH_KEY not in data:
        vectors = data[AtomicDataDict.EDGE_VECTORS_KEY]
        ones = torch.ones(3, dtype=vectors.dtype, device=vectors.device)
        data[AtomicDataDict.EDGE_LENGTH_KEY] = torch.mv(vectors * vectors, ones).sqrt().unsqueeze(1)
    return data


class EdgeVectors(GraphModuleMixin, torch.nn.Module):
    """Writes ``edge_vectors`` [E, 3] and ``edge_lengths`` [E, 1] (:func:`with_edge_vectors`)."""

    def __init__(self, irreps_in=None):
        super().__init__()
        self._init_irreps(
            irreps_in=irreps_in,
            irreps_out={
                AtomicDataDict.EDGE_VECTORS_KEY: "1o",
                AtomicDataDict.EDGE_LENGTH_KEY: "0e",
            },
        )

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        return with_edge_vectors(data)
