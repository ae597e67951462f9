"""``with_edge_vectors`` gives nequip's edge vectors and lengths, with their gradients, for one
periodic frame, a batch of frames with different cells and a molecule."""

import numpy as np
import pytest
import torch
from ase import Atoms
from nequip.data import AtomicDataDict
from nequip.nn import with_edge_vectors_
from nequip.utils.global_state import set_global_state

from reann_nequip.nn import with_edge_vectors

from ..utils import model_input


@pytest.fixture(scope="module", autouse=True)
def global_state():
    set_global_state()


def frame(seed, periodic=True):
    rng = np.random.default_rng(seed)
    cell = np.diag([4.1, 3.7, 4.4]) + rng.uniform(-0.6, 0.6, (3, 3))
    positions = rng.uniform(0.0, 1.0, (7, 3)) @ cell
    return Atoms("OH2OH2O", positions=positions, cell=cell if periodic else None, pbc=periodic)


def vectors_lengths_and_gradients(function, data):
    data = {key: value.clone() for key, value in data.items()}
    leaves = [data[AtomicDataDict.POSITIONS_KEY].requires_grad_(True)]
    if AtomicDataDict.CELL_KEY in data:
        leaves.append(data[AtomicDataDict.CELL_KEY].requires_grad_(True))
    data = function(data)
    vectors = data[AtomicDataDict.EDGE_VECTORS_KEY]
    lengths = data[AtomicDataDict.EDGE_LENGTH_KEY]
    weights = torch.cos(torch.arange(vectors.numel(), dtype=vectors.dtype)).view_as(vectors)
    gradients = torch.autograd.grad((vectors * weights).sum() + lengths.square().sum(), leaves)
    return [vectors.detach(), lengths.detach(), *gradients]


@pytest.mark.parametrize("case", ["periodic", "batch", "molecule"])
def test_edge_vectors_equal_nequip(case):
    if case == "batch":
        data = AtomicDataDict.batched_from_list(
            [model_input(frame(seed), ["O", "H"], 3.0) for seed in (1, 2)]
        )
    else:
        data = model_input(frame(1, periodic=case == "periodic"), ["O", "H"], 3.0)
    assert AtomicDataDict.num_edges(data) > 20
    expected = vectors_lengths_and_gradients(lambda d: with_edge_vectors_(d, True), data)
    actual = vectors_lengths_and_gradients(with_edge_vectors, data)
    for e, a in zip(expected, actual):
        torch.testing.assert_close(a, e, rtol=1e-13, atol=1e-13)
