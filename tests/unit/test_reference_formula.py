"""The model equals a plain, loop-based transcription of REANN's formulas (tests/reference.py),
in float64 to 1e-10, in both of its forms (C++ kernels and torch operations), and as the graph
``nequip-compile`` captures."""

import numpy as np
import pytest
import torch
from nequip.data import AtomicDataDict
from nequip.scripts._workflow_utils import set_workflow_state
from nequip.utils.global_state import set_global_state
from torch.fx.experimental.proxy_tensor import make_fx

from reann_nequip.model import ReannModel

from ..reference import R_MAX, TYPE_NAMES, random_atoms, reference_energies
from ..utils import FORMS, model_input, randomize_parameters


@pytest.fixture(scope="module", autouse=True)
def float64_global_state():
    set_global_state()


MODEL_OPTIONS = {
    "eann": {"num_recursions": 0, "l_max": 2},
    "reann_T2_lmax3_per_step_mixing": {"num_recursions": 2, "l_max": 3, "shared_mixing": False},
    "reann_T1_two_blocks": {
        "num_recursions": 1,
        "l_max": 1,
        "energy_network": {"hidden": [6, 5], "num_blocks": 2, "activation": "tanh_like"},
        "coefficient_network": {"hidden": [4], "activation": "silu", "layer_norm": False},
    },
}


def reference_test_model(options, cpu_kernels=True):
    """A small float64 model with perturbed parameters."""
    config = {
        "seed": 5,
        "model_dtype": "float64",
        "type_names": TYPE_NAMES,
        "r_max": R_MAX,
        "num_gaussians": 3,
        "num_orbitals": 5,
        "energy_network": {"hidden": [6, 5]},
        "coefficient_network": {"hidden": [4, 4]},
        "avg_num_neighbors": 3.0,
        "per_type_energy_shifts": {"H": -1.0, "C": -2.0, "O": -3.0},
        "per_type_energy_scales": {"H": 0.7, "C": 1.3, "O": 0.9},
        "cpu_kernels": cpu_kernels,
        **options,
    }
    return randomize_parameters(ReannModel(**config), seed=3)


def assert_matches_reference(density, atomic_energies, atoms, species, model):
    rho_ref, energies_ref = reference_energies(model, atoms, species)
    np.testing.assert_allclose(density, rho_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(atomic_energies.ravel(), energies_ref, rtol=1e-10, atol=1e-12)
    assert np.abs(rho_ref).max() > 1e-3, "degenerate test: the density vanishes"


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("periodic", [True, False], ids=["periodic", "molecule"])
@pytest.mark.parametrize("options", MODEL_OPTIONS.values(), ids=MODEL_OPTIONS.keys())
def test_density_and_energy_match_reference_formula(periodic, options, form):
    atoms, species = random_atoms(np.random.default_rng(11), periodic)
    model = reference_test_model(options, FORMS[form])

    out = model(model_input(atoms, TYPE_NAMES, R_MAX))

    assert_matches_reference(
        out[AtomicDataDict.NODE_FEATURES_KEY].detach().numpy(),
        out[AtomicDataDict.PER_ATOM_ENERGY_KEY].detach().numpy(),
        atoms,
        species,
        model,
    )
    _, energies_ref = reference_energies(model, atoms, species)
    np.testing.assert_allclose(
        out[AtomicDataDict.TOTAL_ENERGY_KEY].item(), energies_ref.sum(), rtol=1e-10
    )


@pytest.mark.parametrize("periodic", [True, False], ids=["periodic", "molecule"])
@pytest.mark.parametrize("options", MODEL_OPTIONS.values(), ids=MODEL_OPTIONS.keys())
def test_graph_captured_model_matches_reference_formula(periodic, options):
    """The model ``nequip-compile`` builds (its torch form) traced as it traces it, with symbolic
    sizes on one structure, then run on another with other atom and edge counts; forces equal
    the eager ones."""
    set_workflow_state("compile")
    try:
        model = reference_test_model(options)
    finally:
        set_workflow_state(None)
    traced_atoms, _ = random_atoms(np.random.default_rng(5), periodic)
    traced_input = model_input(traced_atoms, TYPE_NAMES, R_MAX)
    keys = sorted(key for key, value in traced_input.items() if torch.is_tensor(value))

    def run(*tensors):
        out = model(dict(zip(keys, tensors)))
        return (
            out[AtomicDataDict.NODE_FEATURES_KEY],
            out[AtomicDataDict.PER_ATOM_ENERGY_KEY],
            out[AtomicDataDict.FORCE_KEY],
        )

    # as nequip-compile traces: symbolic sizes, data-dependent operations refused
    graph = make_fx(
        run, tracing_mode="symbolic", _allow_non_fake_inputs=True, _error_on_data_dependent_ops=True
    )(*[traced_input[key] for key in keys])
    assert "reann" not in graph.code, "nequip-compile's model calls the C++ kernels"

    atoms, species = random_atoms(np.random.default_rng(11), periodic)
    data = model_input(atoms, TYPE_NAMES, R_MAX)
    assert (
        data[AtomicDataDict.EDGE_INDEX_KEY].shape
        != traced_input[AtomicDataDict.EDGE_INDEX_KEY].shape
    )
    density, atomic_energies, forces = graph(*[data[key] for key in keys])
    assert_matches_reference(
        density.detach().numpy(), atomic_energies.detach().numpy(), atoms, species, model
    )
    eager_forces = model(model_input(atoms, TYPE_NAMES, R_MAX))[AtomicDataDict.FORCE_KEY]
    np.testing.assert_allclose(
        forces.detach().numpy(), eager_forces.detach().numpy(), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("options", MODEL_OPTIONS.values(), ids=MODEL_OPTIONS.keys())
def test_force_training_gradients_agree_between_forms(options):
    """Force training differentiates forces once more: the parameter gradients of an energy +
    force loss are the same with the C++ kernels and with torch operations."""
    atoms, _ = random_atoms(np.random.default_rng(12), periodic=True)
    gradients = {}
    for form, cpu_kernels in FORMS.items():
        model = reference_test_model(options, cpu_kernels).train()
        out = model(model_input(atoms, TYPE_NAMES, R_MAX))
        forces = out[AtomicDataDict.FORCE_KEY]
        loss = (
            out[AtomicDataDict.TOTAL_ENERGY_KEY].square().sum()
            + (forces * torch.linspace(-1.0, 1.0, forces.numel()).view_as(forces)).square().sum()
        )
        names, parameters = zip(*model.named_parameters())
        gradients[form] = dict(zip(names, torch.autograd.grad(loss, parameters)))
    reference, kernels = gradients["torch"], gradients["kernels"]
    assert max(g.abs().max() for g in reference.values()) > 1e-3, "degenerate test"
    for name, expected in reference.items():
        torch.testing.assert_close(kernels[name], expected, rtol=1e-9, atol=1e-11, msg=name)
