"""nequip's shared model test suite, run on REANN (T = 2) and EANN (T = 0) in float32 and float64."""

import pytest
import torch
from nequip.utils.unittests.model_tests import BaseEnergyModelTests
from nequip.utils.unittests.model_tests_basic import BasicModelTestsMixin, EnergyModelTestsMixin

from ..utils import randomize_parameters

BASE_CONFIG = {
    "_target_": "reann_nequip.model.ReannModel",
    "seed": 123,
    "type_names": ["H", "C", "O"],
    "r_max": 4.0,
    "num_gaussians": 4,
    "l_max": 2,
    "num_orbitals": 12,
    "energy_network": {"hidden": [16, 16], "num_blocks": 1},
    "coefficient_network": {"hidden": [16], "num_blocks": 1},
    "avg_num_neighbors": 1.0,
    # evenly spread Gaussians, so that every pair distance the suite probes feels the density
    "gaussian_centers": [0.0, 1.0, 2.0, 3.0],
    "gaussian_exponents": [-0.8, -0.8, -0.8, -0.8],
    "per_type_energy_shifts": {"H": -13.6, "C": -1027.5, "O": -2041.0},
    "per_type_energy_scales": {"H": 0.5, "C": 1.5, "O": 1.0},
}


@pytest.fixture(autouse=True)
def seeded_torch():
    """The suite draws random rotations and translations from torch's global generator; a
    translation of a few hundred Å puts ~4e-10 Å of float64 round-off into nequip's own
    edge vectors, above the float64 tolerance, in about one run out of twenty. Seeded, each
    test draws the same ones every run."""
    torch.manual_seed(20261201)


class PerturbedReannMixin:
    """Tolerances for REANN, and models perturbed away from REANN's zero-output start."""

    @pytest.fixture(scope="class")
    @classmethod
    def equivariance_tol(cls, model_dtype):
        return {"float32": 5e-5, "float64": 1e-10}[model_dtype]

    @staticmethod
    def make_model(model_config, device):
        model = BasicModelTestsMixin.make_model(model_config, device)
        return randomize_parameters(model, seed=7)


class TestReannModel(PerturbedReannMixin, BaseEnergyModelTests):
    @pytest.fixture(
        scope="class",
        params=[
            {"num_recursions": 0},
            {"num_recursions": 2, "energy_network": {"hidden": [16, 8], "activation": "tanh_like"}},
        ],
        ids=["eann", "reann_T2"],
    )
    @classmethod
    def config(cls, request):
        return {**BASE_CONFIG, **request.param}

    @pytest.fixture
    def strict_locality(self, config):
        return config["num_recursions"] == 0

    @pytest.fixture(scope="class", params=["minimal_toy_emt.yaml"])
    @classmethod
    def conffile(cls, request):
        # nequip's default list also has minimal_aspirin.yaml, which downloads its data
        return request.param

    @pytest.fixture(scope="class", params=["package"])
    @classmethod
    def model_source(cls, request):
        # nequip also runs "fresh" (compile the training checkpoint); "package" trains, packages,
        # trains on from the package and compiles, a superset of that path; the checkpoint path
        # itself is tested by tests/integration/test_deploy.py. Halves the AOTInductor
        # compilations (CI time)
        return request.param

    @pytest.fixture(scope="class")
    @classmethod
    def ase_compile_modifiers(cls, config):
        """AOTInductor-compiles EANN in float32 and REANN in float64 only: each model and each
        dtype is compiled once, at two minutes of CI per compilation instead of four."""
        compiled = {0: "float32", 2: "float64"}[config["num_recursions"]]

        def modifiers(mode, device, model_dtype):
            if model_dtype != compiled:
                pytest.skip(
                    f"num_recursions={config['num_recursions']} is AOTInductor-compiled in "
                    f"{compiled} only"
                )
            return []

        return modifiers


class TestReannPerEdgeTypeCutoff(PerturbedReannMixin, EnergyModelTestsMixin):
    """Shorter cutoffs for some element pairs (nequip's ``per_edge_type_cutoff``).

    Physics tests only; the train/compile integration runs are covered by ``TestReannModel``.
    """

    @pytest.fixture(scope="class")
    @classmethod
    def config(cls):
        return {
            **BASE_CONFIG,
            "num_recursions": 1,
            "per_edge_type_cutoff": {"H": 2.5, "C": {"H": 3.0, "O": 3.5}},
        }

    @pytest.fixture
    def strict_locality(self):
        return False
