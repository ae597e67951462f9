"""A plain, loop-based transcription of REANN's formulas, the reference the model is checked
against: atom by atom and pair by pair, periodic images by brute force, all 3^L *ordered*
Cartesian products (as REANN builds them, where the model keeps only the distinct monomials),
mixing, squares, recursion, and element networks neuron by neuron from the model's own
parameters, in float64."""

import itertools
import math

import numpy as np
import torch
from ase import Atoms

from reann_nequip.nn.element_networks import ElementLayerNorm

TYPE_NAMES = ["H", "C", "O"]
R_MAX = 3.5


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
