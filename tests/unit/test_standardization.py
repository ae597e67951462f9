"""The element networks' input standardisation: it sets the scale training starts from and
changes nothing a model computes."""

import numpy as np
import pytest
import torch
from ase import Atoms
from nequip.data import AtomicDataDict
from nequip.utils.global_state import set_global_state

from reann_nequip.model import ReannModel
from reann_nequip.nn.element_networks import ElementNetworks, standardize_new_networks

from ..utils import model_input, randomize_parameters

TYPE_NAMES = ["O", "H"]
R_MAX = 3.5


@pytest.fixture(scope="module", autouse=True)
def global_state():
    set_global_state()


def batches(num_batches=3, frames_per_batch=4, seed=0):
    """Batches of random water-like clusters (one frame with an isolated H far away)."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(num_batches * frames_per_batch):
        positions = rng.uniform(0.0, 4.0, (6, 3))
        frames.append(Atoms("OH2OH2", positions=positions))
    frames[0] = frames[0] + Atoms("H", positions=[[30.0, 0.0, 0.0]])
    data = [model_input(frame, TYPE_NAMES, R_MAX) for frame in frames]
    return [
        AtomicDataDict.batched_from_list(data[i : i + frames_per_batch])
        for i in range(0, len(data), frames_per_batch)
    ]


def new_model(**options):
    return ReannModel(
        seed=2,
        model_dtype="float64",
        type_names=TYPE_NAMES,
        r_max=R_MAX,
        num_gaussians=4,
        num_recursions=2,
        avg_num_neighbors=4.0,
        energy_network={"hidden": [8]},
        coefficient_network={"hidden": [8]},
        **options,
    )


def networks(model):
    return [m for m in model.modules() if isinstance(m, ElementNetworks)]


def test_standardisation_of_a_new_model_changes_no_output():
    model = new_model()
    data = batches()
    before = [model(dict(batch)) for batch in data]
    assert standardize_new_networks(model, [dict(batch) for batch in data]) == 3
    for network in networks(model):
        assert float(network.input_scale.min()) < 0.5, "degenerate test: nothing to standardise"
    for batch, reference in zip(data, before):
        after = model(dict(batch))
        for key in (AtomicDataDict.TOTAL_ENERGY_KEY, AtomicDataDict.FORCE_KEY):
            assert torch.equal(after[key], reference[key])


def test_the_energy_networks_read_the_density_standardised():
    """μ is the mean of the density the energy networks read, per element and feature, and σ
    the root mean square of its spreads, per element, over the atoms that have neighbours."""
    model = new_model()
    data = batches()
    standardize_new_networks(model, [dict(batch) for batch in data])
    densities, types = [], []
    for batch in data:
        out = model(dict(batch))
        densities.append(out[AtomicDataDict.NODE_FEATURES_KEY].detach())
        types.append(out[AtomicDataDict.ATOM_TYPE_KEY].view(-1))
    density, atom_types = torch.cat(densities), torch.cat(types)
    readout = networks(model)[-1]
    assert readout.input_shift.shape == (len(TYPE_NAMES), density.shape[1])
    for element in range(len(TYPE_NAMES)):
        rows = density[(atom_types == element) & (density != 0).any(dim=1)]
        standardised = (rows - readout.input_shift[element]) / readout.input_scale[element]
        torch.testing.assert_close(standardised.mean(dim=0), torch.zeros_like(rows[0]))
        torch.testing.assert_close(
            standardised.var(dim=0, unbiased=False).mean(), torch.ones_like(rows[0, 0])
        )
        # one scale for all features: their relative spreads are kept
        assert torch.all(readout.input_scale[element] == readout.input_scale[element, 0])


def test_a_standardised_network_reads_the_standardised_input():
    """With μ, σ set, the network computes what it computes without them on (x − μ) / σ."""
    generator = torch.Generator().manual_seed(0)
    network = randomize_parameters(
        ElementNetworks(2, 5, 2, [6], 1, "tanh_like", True, [0.0]).double(), seed=1
    )
    x = torch.randn(9, 5, generator=generator, dtype=torch.float64)
    atom_types = torch.tensor([0, 1, 1, 0, 0, 1, 0, 1, 1])
    shift = torch.randn(2, 5, generator=generator, dtype=torch.float64)
    scale = 0.01 + torch.rand(2, 5, generator=generator, dtype=torch.float64)
    reference = network((x - shift[atom_types]) / scale[atom_types], atom_types)
    network.input_shift.copy_(shift)
    network.input_scale.copy_(scale)
    torch.testing.assert_close(network(x, atom_types), reference)


def test_trained_networks_are_left_alone():
    model = new_model()
    randomize_parameters(model, seed=3)
    data = batches()
    before = model(dict(data[0]))[AtomicDataDict.TOTAL_ENERGY_KEY]
    assert standardize_new_networks(model, [dict(batch) for batch in data]) == 0
    for network in networks(model):
        assert torch.all(network.input_shift == 0) and torch.all(network.input_scale == 1)
    assert torch.equal(model(dict(data[0]))[AtomicDataDict.TOTAL_ENERGY_KEY], before)


def test_models_saved_without_standardisation_load_with_none():
    """Checkpoints of versions before the standardisation read their input raw."""
    model = new_model()
    randomize_parameters(model, seed=3)
    state = {
        key: value
        for key, value in model.state_dict().items()
        if not key.endswith(("input_shift", "input_scale"))
    }
    loaded = new_model()
    standardize_new_networks(loaded, [dict(batch) for batch in batches()])
    loaded.load_state_dict(state, strict=True)
    for network in networks(loaded):
        assert torch.all(network.input_shift == 0) and torch.all(network.input_scale == 1)
    batch = batches()[0]
    torch.testing.assert_close(
        loaded(dict(batch))[AtomicDataDict.TOTAL_ENERGY_KEY],
        model(dict(batch))[AtomicDataDict.TOTAL_ENERGY_KEY],
    )
