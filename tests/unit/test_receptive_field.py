"""With T recursions an atom's energy feels atoms out to (T + 1) · r_max, and no further."""

import numpy as np
import pytest
import torch
from nequip.data import AtomicDataDict, compute_neighborlist_, from_dict
from nequip.utils.global_state import set_global_state

from ..utils import tiny_model

R_MAX = 3.0
SPACING = 0.55 * R_MAX  # consecutive chain atoms are neighbours, next-nearest are not


@pytest.fixture(scope="module", autouse=True)
def global_state():
    set_global_state()


def atom_zero_energy(model, positions):
    data = {
        "pos": positions,
        "atom_types": np.array([0, 1] * (len(positions) // 2) + [0] * (len(positions) % 2)),
    }
    data = compute_neighborlist_(from_dict(data), r_max=R_MAX)
    return model(data)[AtomicDataDict.PER_ATOM_ENERGY_KEY][0, 0].item()


@pytest.mark.parametrize("num_recursions", [0, 1, 3])
def test_energy_of_atom_zero_depends_on_atoms_within_receptive_field_only(num_recursions):
    model = tiny_model(
        type_names=["A", "B"],
        r_max=R_MAX,
        num_recursions=num_recursions,
        seed=2,
        perturbation_seed=4,
        num_orbitals=6,
        gaussian_centers=[0.5, 1.2, 2.0, 2.7],
        gaussian_exponents=[-1.0] * 4,
        avg_num_neighbors=0.5,
    )
    with torch.no_grad():
        # strong coefficient updates, so the signal survives T + 1 hops well above round-off
        for update in model.model.func.density.updates:
            update.network.output_linear.weight.mul_(30.0)
    # A zig-zag chain along x: atom k is k neighbour hops from atom 0, and information travels
    # one hop per density evaluation, so E_0 feels atoms 1 … T+1. Atom T+1 lies beyond r_max
    # (for T ≥ 1); every atom beyond (T+1) · r_max is more than T+1 hops away.
    receptive_field = (num_recursions + 1) * R_MAX
    num_atoms = int(receptive_field / SPACING) + 3
    positions = np.array([[k * SPACING, 0.1 * (k % 2), 0.0] for k in range(num_atoms)])
    reference = atom_zero_energy(model, positions)
    for k in range(1, num_atoms):
        moved = positions.copy()
        moved[k, 1] += 0.2  # changes k's distances to its chain neighbours
        change = abs(atom_zero_energy(model, moved) - reference)
        distance = float(np.linalg.norm(positions[k] - positions[0]))
        if k <= num_recursions + 1:
            assert change > 1e-12, (
                f"atom {k} at {distance:.2f} Å (< {receptive_field} Å) has no effect"
            )
        else:
            assert change == 0.0, (
                f"atom {k}, {k} hops and {distance:.2f} Å away, changed E_0 by {change}"
            )
    assert (
        np.linalg.norm(positions[num_recursions + 1] - positions[0]) > R_MAX or num_recursions == 0
    )
    assert np.linalg.norm(positions[-1] - positions[0]) > receptive_field
