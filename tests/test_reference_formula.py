"""The model equals a plain, loop-based transcription of REANN's formulas.

The reference below walks atom by atom and pair by pair, enumerates periodic images by brute
force, builds all 3^L *ordered* Cartesian products (as REANN does, where the model keeps only
the distinct monomials), mixes, squares, recurses and evaluates the element networks neuron by
neuron from the model's own parameters. Everything is float64 and must agree to 1e-10.
The model has two forms, dense neighbour blocks (eager, TorchScript) and edge lists (graph
capture for ``nequip-compile``); both are checked.
"""

import itertools
import math

import numpy as np
import pytest
import torch
from ase import Atoms
from nequip.data import AtomicDataDict
from nequip.utils.global_state import set_global_state
from torch.fx.experimental.proxy_tensor import make_fx

from reann_nequip.model import ReannModel
from reann_nequip.nn.element_networks import ElementLayerNorm
from reann_nequip.nn.embedded_density import neighbor_slots
from reann_nequip.nn.kernels import kernels_available

from .utils import model_input, randomize_parameters

# the C++ kernel where it is built (the torch form is checked everywhere)
DENSITY_KERNELS = ["torch"] + (["fused"] if kernels_available() else [])

TYPE_NAMES = ["H", "C", "O"]
R_MAX = 3.5


# === reference implementation ===


def reference_activation(module, t, x):
    if module.kind == "silu":
        return [v / (1.0 + math.exp(-v)) for v in x]
    alpha = module.alpha[t].tolist()
    beta = module.beta[t].tolist()
    if module.kind == "relu_like":
        return [a * (b * v) / (1.0 + math.exp(-b * v)) for a, b, v in zip(alpha, beta, x)]
    return [a * v / math.sqrt(1.0 + (b * v) ** 2) for a, b, v in zip(alpha, beta, x)]


def reference_linear(module, t, x):
    weight = module.weight[t].tolist()  # [in][out]
    bias = module.bias[t].tolist()
    return [bias[o] + sum(x[i] * weight[i][o] for i in range(len(x))) for o in range(len(bias))]


def reference_layer_norm(module, t, x):
    mean = sum(x) / len(x)
    var = sum((v - mean) ** 2 for v in x) / len(x)
    w, b = module.weight[t].tolist(), module.bias[t].tolist()
    return [(v - mean) / math.sqrt(var + 1e-5) * wi + bi for v, wi, bi in zip(x, w, b)]


def reference_network(net, t, x):
    """REANN's NNMod for one atom of element t, neuron by neuron."""
    x = reference_linear(net.input_linear, t, x)
    for block in net.blocks:
        y = x
        for layer in block.layers:
            y = reference_activation(layer.activation, t, y)
            if isinstance(layer.norm, ElementLayerNorm):
                y = reference_layer_norm(layer.norm, t, y)
            y = reference_linear(layer.linear, t, y)
        x = [a + b for a, b in zip(x, y)]
    x = reference_activation(net.output_activation, t, x)
    return reference_linear(net.output_linear, t, x)


def reference_pairs(positions, cell, pbc, r_max):
    """All (i, j, r_ij) with 0 < |r_ij| < r_max, r_ij = r_i − r_j − S·cell, images by brute force."""
    n = len(positions)
    if any(pbc):
        reciprocal = np.linalg.inv(cell).T  # rows: reciprocal vectors / 2π
        reps = [
            int(math.ceil(r_max * np.linalg.norm(reciprocal[k]))) if pbc[k] else 0 for k in range(3)
        ]
    else:
        reps = [0, 0, 0]
    pairs = []
    for i in range(n):
        for j in range(n):
            for s in itertools.product(*[range(-r, r + 1) for r in reps]):
                vec = positions[i] - positions[j] - np.asarray(s, dtype=float) @ cell
                d = float(np.linalg.norm(vec))
                if 0.0 < d < r_max:
                    pairs.append((i, j, vec))
    return pairs


def reference_density(model_parts, species, pairs, coefficients, step):
    """ρ_im = Σ_L Σ_{ordered a} (Σ_k W[L]_km Σ_j c_jk f_c g_k Π r_a)², loop by loop."""
    basis, density_module = model_parts
    n = len(species)
    num_gaussians = basis.centers.shape[1]
    mixing = density_module.mixing[step if density_module.mixing.shape[0] > 1 else 0]
    l_max, num_orbitals = mixing.shape[0] - 1, mixing.shape[2]
    rho = np.zeros((n, num_orbitals))
    for i in range(n):
        for order in range(l_max + 1):
            for axes in itertools.product(range(3), repeat=order):
                summed = np.zeros(num_gaussians)
                for center, j, vec in pairs:
                    if center != i:
                        continue
                    d = float(np.linalg.norm(vec))
                    cutoff = (0.5 * math.cos(math.pi * d / R_MAX) + 0.5) ** 2
                    angular = cutoff
                    for a in axes:
                        angular *= vec[a]
                    for k in range(num_gaussians):
                        alpha = float(basis.exponents[species[j], k])
                        mu = float(basis.centers[species[j], k])
                        summed[k] += coefficients[j][k] * angular * math.exp(alpha * (d - mu) ** 2)
                mixed = summed @ mixing[order].numpy()
                rho[i] += mixed**2
    return rho


def reference_energies(model, atoms, species):
    energy_model = model.model.func
    basis = energy_model.radial_basis
    density_module = energy_model.density
    readout = energy_model.atomic_energy.network
    scale_shift = energy_model.per_type_energy_scale_shift
    with torch.no_grad():
        pairs = reference_pairs(atoms.positions, np.asarray(atoms.cell), atoms.pbc, R_MAX)
        coefficients = [density_module.initial_coefficients[t].tolist() for t in species]
        step = 0
        for update in density_module.updates:
            rho = reference_density((basis, density_module), species, pairs, coefficients, step)
            coefficients = [
                [
                    c + u
                    for c, u in zip(
                        coefficients[i], reference_network(update.network, t, list(rho[i]))
                    )
                ]
                for i, t in enumerate(species)
            ]
            step += 1
        rho = reference_density((basis, density_module), species, pairs, coefficients, step)
        zero = [0.0] * rho.shape[1]
        energies = []
        for i, t in enumerate(species):
            raw = (
                reference_network(readout, t, list(rho[i]))[0]
                - reference_network(readout, t, zero)[0]
            )
            energies.append(raw * float(scale_shift.scales[t]) + float(scale_shift.shifts[t]))
    return rho, np.array(energies)


# === fixtures ===


def random_atoms(rng, periodic):
    """Atoms no closer than 0.9 Å, in a skewed cell (periodic) or a loose cluster (molecular)."""
    if periodic:
        cell = np.array([[4.2, 0.0, 0.0], [1.1, 3.9, 0.0], [-0.6, 0.8, 4.4]])
        num_atoms = 6
    else:
        cell = np.zeros((3, 3))
        num_atoms = 7
    positions = []
    while len(positions) < num_atoms:
        trial = rng.uniform(0.0, 1.0, 3) @ cell if periodic else rng.uniform(-2.0, 2.0, 3)
        probe = Atoms(
            "H" * (len(positions) + 1), positions=positions + [trial], cell=cell, pbc=periodic
        )
        if (
            len(positions) == 0
            or probe.get_distances(len(positions), range(len(positions)), mic=periodic).min() > 0.9
        ):
            positions.append(trial)
    species = rng.integers(0, len(TYPE_NAMES), num_atoms)
    atoms = Atoms([TYPE_NAMES[t] for t in species], positions=positions, cell=cell, pbc=periodic)
    return atoms, [int(t) for t in species]


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


def reference_test_model(options, density_kernel="auto"):
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
        "density_kernel": density_kernel,
        **options,
    }
    return randomize_parameters(ReannModel(**config), seed=3)


def assert_matches_reference(density, atomic_energies, atoms, species, model):
    rho_ref, energies_ref = reference_energies(model, atoms, species)
    np.testing.assert_allclose(density, rho_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(atomic_energies.ravel(), energies_ref, rtol=1e-10, atol=1e-12)
    assert np.abs(rho_ref).max() > 1e-3, "degenerate test: the density vanishes"


@pytest.mark.parametrize("density_kernel", DENSITY_KERNELS)
@pytest.mark.parametrize("periodic", [True, False], ids=["periodic", "molecule"])
@pytest.mark.parametrize("options", MODEL_OPTIONS.values(), ids=MODEL_OPTIONS.keys())
def test_density_and_energy_match_reference_formula(periodic, options, density_kernel):
    atoms, species = random_atoms(np.random.default_rng(11), periodic)
    model = reference_test_model(options, density_kernel)

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
    """The edge-list form that ``nequip-compile`` traces: traced with symbolic sizes on one
    structure, run on another with other atom and edge counts; forces equal the eager ones."""
    model = reference_test_model(options)
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
    # the fast form would have counted neighbours per centre to size its blocks
    assert "bincount" not in graph.code, "the traced graph is not the edge-list form"

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


@pytest.mark.skipif(len(DENSITY_KERNELS) < 2, reason="the kernel library is not built")
@pytest.mark.parametrize("options", MODEL_OPTIONS.values(), ids=MODEL_OPTIONS.keys())
def test_force_training_gradients_agree_between_density_kernels(options):
    """Force training differentiates forces once more: the parameter gradients of an energy +
    force loss are the same with the C++ kernel and with torch operations (and in training
    mode the radial functions are recomputed in the backward passes)."""
    atoms, _ = random_atoms(np.random.default_rng(12), periodic=True)
    gradients = {}
    for density_kernel in DENSITY_KERNELS:
        model = reference_test_model(options, density_kernel).train()
        out = model(model_input(atoms, TYPE_NAMES, R_MAX))
        forces = out[AtomicDataDict.FORCE_KEY]
        loss = (
            out[AtomicDataDict.TOTAL_ENERGY_KEY].square().sum()
            + (forces * torch.linspace(-1.0, 1.0, forces.numel()).view_as(forces)).square().sum()
        )
        names, parameters = zip(*model.named_parameters())
        gradients[density_kernel] = dict(zip(names, torch.autograd.grad(loss, parameters)))
    reference, fused = gradients["torch"], gradients["fused"]
    assert max(g.abs().max() for g in reference.values()) > 1e-3, "degenerate test"
    for name, expected in reference.items():
        torch.testing.assert_close(fused[name], expected, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("sorted_edges", [True, False])
def test_neighbor_slots_follow_input_order(sorted_edges):
    """Each centre's edges fill its first slots in input order, whether the edges come grouped
    by centre (pair_reann; no sort) or shuffled."""
    generator = torch.Generator().manual_seed(7)
    counts = torch.randint(0, 6, (9,), generator=generator)
    center = torch.repeat_interleave(torch.arange(9), counts)
    if not sorted_edges:
        center = center[torch.randperm(center.shape[0], generator=generator)]
    slot, width = neighbor_slots(center, 9)
    assert width == int(counts.max())
    assert torch.equal(slot // width, center)
    for atom in range(9):
        ranks = slot[center == atom] % width
        assert torch.equal(ranks, torch.arange(int(counts[atom])))
