"""Dipole, transition-dipole and polarizability models: symmetry, periodicity, extensivity,
REANN's polarizability formula, derivatives, TorchScript and metrics (their training:
tests/integration/test_tensor_training.py)."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.io import read
from nequip.data import AtomicDataDict, from_ase
from nequip.utils.global_state import set_global_state

from reann_nequip._keys import (
    ATOMIC_DIPOLE_KEY,
    ATOMIC_ISOTROPIC_POLARIZABILITY_KEY,
    POLARIZABILITY_KEY,
    POLARIZABILITY_POTENTIAL_0_KEY,
    POLARIZABILITY_POTENTIAL_1_KEY,
    TOTAL_DIPOLE_KEY,
    TRANSITION_DIPOLE_KEY,
)
from reann_nequip.model import (
    ReannDipoleModel,
    ReannPolarizabilityModel,
    ReannTransitionDipoleModel,
)
from reann_nequip.train import CartesianComponent, TensorPropertyMetrics

from ..utils import REPO_ROOT, model_input, run_in_fresh_interpreter, tiny_model


@pytest.fixture(scope="module", autouse=True)
def global_state():
    set_global_state()


TYPE_NAMES = ["C", "H"]
R_MAX = 3.0
TOL = 1e-10
CH4_DATA = REPO_ROOT / "examples" / "ch4" / "ch4_b3lyp_augccpvdz.xyz"
CELL = np.array([[4.6, 0.0, 0.0], [0.9, 4.3, 0.0], [-0.7, 0.5, 4.9]])

BUILDERS = {
    TOTAL_DIPOLE_KEY: ReannDipoleModel,
    TRANSITION_DIPOLE_KEY: ReannTransitionDipoleModel,
    POLARIZABILITY_KEY: ReannPolarizabilityModel,
}


def build(field: str, num_recursions: int = 1):
    model = tiny_model(
        BUILDERS[field],
        type_names=TYPE_NAMES,
        r_max=R_MAX,
        num_recursions=num_recursions,
        avg_num_neighbors=4.0,
    )
    # the heads' output layers start at zero, so perturbed ones are ~0.05: scale them up to
    # make the tensors O(1) and the 1e-10 comparisons sharp
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "output_linear" in name and ".density." not in name:
                parameter.mul_(20.0)
    return model


@pytest.fixture(scope="module", params=[0, 2], ids=["eann", "two_recursions"])
def num_recursions(request):
    return request.param


@pytest.fixture(scope="module")
def models(num_recursions):
    return {field: build(field, num_recursions) for field in BUILDERS}


def ethane() -> Atoms:
    """A distorted molecule, far from the origin, larger than r_max."""
    atoms = molecule("C2H6")
    atoms.rattle(0.15, seed=3)
    atoms.positions += [7.0, -4.0, 2.5]
    return atoms


def periodic() -> Atoms:
    """Six atoms in a triclinic cell barely larger than r_max: periodic self-images are
    neighbours."""
    fractional = np.random.default_rng(5).uniform(0.0, 1.0, (6, 3))
    return Atoms("C2H4", scaled_positions=fractional, cell=CELL, pbc=True)


SYSTEMS = {"molecule": ethane, "periodic": periodic}


def predict(model, atoms: Atoms) -> dict:
    out = model(model_input(atoms, TYPE_NAMES, R_MAX))
    return {key: value.detach().numpy() for key, value in out.items()}


def random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def assert_same(actual, expected, what: str, tol: float = TOL):
    scale = max(1.0, float(np.abs(expected).max()))
    error = float(np.abs(np.asarray(actual) - np.asarray(expected)).max())
    assert error <= tol * scale, f"{what}: max deviation {error:.3e} (scale {scale:.3e})"


def assert_not_degenerate(value, what: str):
    assert np.abs(value).max() > 1e-3, f"degenerate test: {what} is ~0"


# === symmetry ===


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("field", BUILDERS)
def test_rotation_rotates_dipoles_by_R_and_polarizability_by_R_alpha_RT(models, field, system):
    atoms = SYSTEMS[system]()
    rotation = random_rotation(11)
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rotation.T
    if atoms.pbc.any():
        rotated.cell = atoms.cell.array @ rotation.T
    original, turned = predict(models[field], atoms), predict(models[field], rotated)
    value = original[field][0]
    assert_not_degenerate(value, field)
    expected = rotation @ value @ rotation.T if value.ndim == 2 else rotation @ value
    assert_same(turned[field][0], expected, f"rotated {field}")
    if field == TOTAL_DIPOLE_KEY:
        assert_same(
            turned[ATOMIC_DIPOLE_KEY], original[ATOMIC_DIPOLE_KEY] @ rotation.T, "atomic dipoles"
        )


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("field", BUILDERS)
def test_translation_and_permutation_leave_outputs_unchanged(models, field, system):
    atoms = SYSTEMS[system]()
    moved = atoms.copy()
    moved.positions += [1.7, -3.1, 0.45]
    order = np.random.default_rng(2).permutation(len(atoms))
    permuted = atoms[order]
    original = predict(models[field], atoms)
    assert_not_degenerate(original[field], field)
    assert_same(predict(models[field], moved)[field], original[field], f"translated {field}")
    permuted_out = predict(models[field], permuted)
    assert_same(permuted_out[field], original[field], f"permuted {field}")
    if field == TOTAL_DIPOLE_KEY:
        assert_same(
            permuted_out[ATOMIC_DIPOLE_KEY], original[ATOMIC_DIPOLE_KEY][order], "atomic dipoles"
        )


@pytest.mark.parametrize("system", SYSTEMS)
def test_polarizability_is_symmetric(models, system):
    alpha = predict(models[POLARIZABILITY_KEY], SYSTEMS[system]())[POLARIZABILITY_KEY][0]
    assert_not_degenerate(alpha - np.diag(np.diag(alpha)), "off-diagonal polarizability")
    assert_same(alpha, alpha.T, "α − αᵀ", tol=1e-14)


def test_atomic_dipoles_sum_to_total_dipole(models):
    out = predict(models[TOTAL_DIPOLE_KEY], periodic())
    assert_same(out[ATOMIC_DIPOLE_KEY].sum(axis=0), out[TOTAL_DIPOLE_KEY][0], "Σ μ_i")


@pytest.mark.parametrize("field", BUILDERS)
def test_batched_equals_per_frame(models, field):
    frames = [ethane(), periodic(), molecule("CH4")]
    frames[2].rattle(0.1, seed=8)
    batch = AtomicDataDict.batched_from_list(
        [model_input(atoms, TYPE_NAMES, R_MAX) for atoms in frames]
    )
    batched = models[field](batch)[field].detach().numpy()
    for index, atoms in enumerate(frames):
        assert_same(batched[index], predict(models[field], atoms)[field][0], f"frame {index}")


# === periodic cells ===


@pytest.mark.parametrize("field", [TOTAL_DIPOLE_KEY, POLARIZABILITY_KEY])
def test_supercell_doubles_dipole_and_polarizability(models, field):
    atoms = periodic()
    single = predict(models[field], atoms)[field][0]
    double = predict(models[field], atoms.repeat((2, 1, 1)))[field][0]
    assert_not_degenerate(single, field)
    assert_same(double, 2.0 * single, f"2×1×1 supercell {field}")


def reann_position_form_polarizability(model, data: AtomicDataDict.Type) -> torch.Tensor:
    """REANN's α = J1ᵀJ2 + (J1ᵀJ2)ᵀ + (Σ E2) I with J1 = ∂E0/∂r + r, J2 = ∂E1/∂r, from the
    model's own heads, for one frame: [3, 3]."""
    heads = model.model.func  # GraphModel → PolarizabilityFromGradients → heads
    data = dict(data)
    positions = data[AtomicDataDict.POSITIONS_KEY].clone().requires_grad_(True)
    data[AtomicDataDict.POSITIONS_KEY] = positions
    out = heads(data)
    (gradient_0,) = torch.autograd.grad(
        out[POLARIZABILITY_POTENTIAL_0_KEY].sum(), positions, retain_graph=True
    )
    (gradient_1,) = torch.autograd.grad(out[POLARIZABILITY_POTENTIAL_1_KEY].sum(), positions)
    j1, j2 = gradient_0 + positions, gradient_1
    half = j1.T @ j2
    isotropic = out[ATOMIC_ISOTROPIC_POLARIZABILITY_KEY].sum()
    return (half + half.T + isotropic * torch.eye(3, dtype=half.dtype)).detach()


@pytest.mark.parametrize("field", BUILDERS)
def test_moving_an_atom_by_a_lattice_vector_leaves_outputs_unchanged(models, field):
    atoms = periodic()
    model = models[field]
    original = predict(model, atoms)[field]
    lattice_shifts = [CELL[0], -CELL[1], CELL[0] + CELL[2]]
    for atom in range(len(atoms)):
        moved = atoms.copy()
        moved.positions[atom] += lattice_shifts[atom % 3]
        assert_same(predict(model, moved)[field], original, f"{field}, atom {atom} moved")
    if field == POLARIZABILITY_KEY:
        # REANN's absolute-position term is what the pair form repairs: it changes here
        moved = atoms.copy()
        moved.positions[0] += CELL[0]
        before = reann_position_form_polarizability(model, model_input(atoms, TYPE_NAMES, R_MAX))
        after = reann_position_form_polarizability(model, model_input(moved, TYPE_NAMES, R_MAX))
        assert (after - before).abs().max() > 1e-3


def test_pair_form_equals_reann_position_form_for_a_molecule(models):
    model = models[POLARIZABILITY_KEY]
    data = model_input(ethane(), TYPE_NAMES, R_MAX)
    alpha = model(dict(data))[POLARIZABILITY_KEY][0].detach()
    reference = reann_position_form_polarizability(model, data)
    assert_not_degenerate(reference.numpy(), "REANN-form polarizability")
    assert_same(alpha.numpy(), reference.numpy(), "pair form − REANN position form")


# === derivatives ===


def test_polarizability_from_finite_difference_gradients_of_its_heads(models):
    """α with ∂E0/∂r and ∂E1/∂r from central differences of the heads equals the model's α."""
    model = models[POLARIZABILITY_KEY]
    data = model_input(ethane(), TYPE_NAMES, R_MAX)
    heads = model.model.func
    positions = data[AtomicDataDict.POSITIONS_KEY]
    step = 1e-5
    gradients = {key: torch.zeros_like(positions) for key in ("0", "1")}
    for atom in range(positions.shape[0]):
        for axis in range(3):
            sums = []
            for sign in (1.0, -1.0):
                shifted = dict(data)
                shifted[AtomicDataDict.POSITIONS_KEY] = positions.clone()
                shifted[AtomicDataDict.POSITIONS_KEY][atom, axis] += sign * step
                out = heads(shifted)
                sums.append(
                    (
                        out[POLARIZABILITY_POTENTIAL_0_KEY].sum().item(),
                        out[POLARIZABILITY_POTENTIAL_1_KEY].sum().item(),
                    )
                )
            gradients["0"][atom, axis] = (sums[0][0] - sums[1][0]) / (2 * step)
            gradients["1"][atom, axis] = (sums[0][1] - sums[1][1]) / (2 * step)
    out = heads(dict(data))
    half = (gradients["0"] + positions).T @ gradients["1"]
    isotropic = out[ATOMIC_ISOTROPIC_POLARIZABILITY_KEY].sum().detach()
    numerical = half + half.T + isotropic * torch.eye(3, dtype=half.dtype)
    alpha = model(dict(data))[POLARIZABILITY_KEY][0].detach()
    assert_same(alpha.numpy(), numerical.numpy(), "α from finite differences", tol=1e-7)


@pytest.mark.parametrize("field", [TOTAL_DIPOLE_KEY, POLARIZABILITY_KEY])
def test_position_derivatives_of_outputs_match_finite_differences(models, field):
    """dμ/dr (IR intensities) and dα/dr (Raman; and what training backpropagates through the
    polarizability's own gradients) in a periodic cell, against central differences."""
    model = models[field]
    model.train()  # the polarizability keeps its gradients' graph only when training
    try:
        data = model_input(periodic(), TYPE_NAMES, R_MAX)
        weights = torch.from_numpy(
            np.random.default_rng(6).normal(size=(3, 3) if field == POLARIZABILITY_KEY else 3)
        )

        def projected(positions: torch.Tensor) -> torch.Tensor:
            shifted = dict(data)
            shifted[AtomicDataDict.POSITIONS_KEY] = positions
            return (model(shifted)[field][0] * weights).sum()

        positions = data[AtomicDataDict.POSITIONS_KEY].clone().requires_grad_(True)
        (analytic,) = torch.autograd.grad(projected(positions), positions)
        numerical = torch.zeros_like(positions)
        step = 1e-5
        for atom in range(positions.shape[0]):
            for axis in range(3):
                plus, minus = positions.detach().clone(), positions.detach().clone()
                plus[atom, axis] += step
                minus[atom, axis] -= step
                numerical[atom, axis] = (projected(plus) - projected(minus)).item() / (2 * step)
        assert_not_degenerate(analytic.numpy(), f"d{field}/dr")
        assert_same(analytic.numpy(), numerical.numpy(), f"d{field}/dr", tol=1e-6)
    finally:
        model.eval()


# === TorchScript, data, metrics ===


def check_torchscript_matches_eager() -> None:
    """Every tensor model, scripted with ``torch.jit.script``, equals its eager self."""
    for num_recursions in (0, 2):
        for field in BUILDERS:
            model = build(field, num_recursions)
            scripted = torch.jit.script(model)
            for make in SYSTEMS.values():
                atoms = make()
                eager = predict(model, atoms)[field]
                compiled = scripted(model_input(atoms, TYPE_NAMES, R_MAX))[field]
                assert_same(compiled.detach().numpy(), eager, f"scripted {field}", tol=1e-12)


def test_torchscript_model_matches_eager():
    run_in_fresh_interpreter("tests.unit.test_tensor_models:check_torchscript_matches_eager")


def check_deployed_tensor_models_match_eager(workdir: str) -> None:
    """``save_deployed`` writes each tensor model; ReannCalculator returns what the model gives."""
    import os

    from reann_nequip.deploy import read_metadata, save_deployed
    from reann_nequip.integrations.ase import ReannCalculator

    paths = {}
    for field in BUILDERS:
        paths[field] = os.path.join(workdir, f"{field}.pth")
        save_deployed(build(field, 2), paths[field])
        assert read_metadata(paths[field])["output_field"] == field
    for dipole_field in (TOTAL_DIPOLE_KEY, TRANSITION_DIPOLE_KEY):
        calc = ReannCalculator(
            dipole_model=paths[dipole_field], polarizability_model=paths[POLARIZABILITY_KEY]
        )
        for make in SYSTEMS.values():
            atoms = make()
            atoms.calc = calc
            expected = {field: predict(build(field, 2), atoms)[field][0] for field in BUILDERS}
            assert_same(calc.get_property("dipole", atoms), expected[dipole_field], "dipole")
            assert_same(
                calc.get_property("polarizability", atoms),
                expected[POLARIZABILITY_KEY],
                "polarizability",
            )
    try:
        ReannCalculator(paths[TOTAL_DIPOLE_KEY])
    except ValueError as error:
        assert "is a `dipole` model; the energy model must be" in str(error)
    else:
        raise AssertionError("a dipole file must not be accepted as the energy model")


def test_deployed_tensor_models_give_the_models_tensors_in_ase(tmp_path):
    run_in_fresh_interpreter(
        "tests.unit.test_tensor_models:check_deployed_tensor_models_match_eager", str(tmp_path)
    )


def test_extxyz_dipole_and_polarizability_read_through_key_mapping():
    atoms = read(CH4_DATA, index=0)
    data = from_ase(
        atoms, key_mapping={"dipole": TOTAL_DIPOLE_KEY}, include_keys=[POLARIZABILITY_KEY]
    )
    assert data[TOTAL_DIPOLE_KEY].shape == (1, 3)
    assert data[POLARIZABILITY_KEY].shape == (1, 3, 3)
    np.testing.assert_array_equal(data[TOTAL_DIPOLE_KEY][0].numpy(), atoms.calc.results["dipole"])
    np.testing.assert_array_equal(
        data[POLARIZABILITY_KEY][0].numpy(), atoms.info["polarizability"].reshape(3, 3)
    )


def test_tensor_metrics_match_their_formulas():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(40, 3, 3)) + np.eye(3) * 3.0
    reference = reference + reference.transpose(0, 2, 1)
    predicted = reference + 0.3 * rng.normal(size=reference.shape)
    metrics = TensorPropertyMetrics(POLARIZABILITY_KEY)
    for chunk in (slice(0, 7), slice(7, 40)):  # two batches of different sizes
        metrics(
            {POLARIZABILITY_KEY: torch.from_numpy(predicted[chunk])},
            {POLARIZABILITY_KEY: torch.from_numpy(reference[chunk])},
        )
    values = {key: value.item() for key, value in metrics.compute().items()}
    error = predicted - reference
    spread = ((reference - reference.mean(axis=0)) ** 2).sum()
    np.testing.assert_allclose(values["polarizability_rrmse"], np.sqrt((error**2).sum() / spread))
    np.testing.assert_allclose(values["polarizability_rmse"], np.sqrt((error**2).mean()))
    np.testing.assert_allclose(values["polarizability_mae"], np.abs(error).mean())
    np.testing.assert_allclose(
        values["polarizability_xy_rmse"], np.sqrt((error[:, 0, 1] ** 2).mean())
    )
    np.testing.assert_allclose(values["polarizability_zz_mae"], np.abs(error[:, 2, 2]).mean())

    # predicting the reference mean gives RRMSE 1
    metrics.reset()
    mean = np.broadcast_to(reference.mean(axis=0), reference.shape).copy()
    metrics(
        {POLARIZABILITY_KEY: torch.from_numpy(mean)},
        {POLARIZABILITY_KEY: torch.from_numpy(reference)},
    )
    np.testing.assert_allclose(metrics.compute()["polarizability_rrmse"].item(), 1.0)


def test_cartesian_component_names_the_field_and_rejects_bad_components():
    assert str(CartesianComponent(TOTAL_DIPOLE_KEY, "y")) == "total_dipole_y"
    with pytest.raises(ValueError, match="`component` of `total_dipole` must be one of x, y, z"):
        CartesianComponent(TOTAL_DIPOLE_KEY, "xy")
    with pytest.raises(ValueError, match="`component` of `polarizability` must be two of"):
        CartesianComponent(POLARIZABILITY_KEY, "w")


def test_unknown_model_argument_is_named():
    with pytest.raises(TypeError, match=r"unknown model arguments \['nwave'\]"):
        ReannDipoleModel(seed=0, model_dtype="float64", type_names=TYPE_NAMES, r_max=3.0, nwave=4)


# === training on CH4 ===
