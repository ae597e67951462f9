"""Shared fixtures.

nequip's model-test fixtures (``model_dtype``, ``atomic_batch``, ``molecules``, ``Cu_bulk``, …)
come from ``nequip.utils.unittests.conftest``, loaded as a pytest plugin.
"""

import pytest

from .utils import shared_data

pytest_plugins = ["nequip.utils.unittests.conftest"]

# nequip's suite runs real nequip-train / nequip-package / nequip-compile for these
_INTEGRATION_TESTS = ("test_ase_compile", "test_train_time_compile", "test_mliap_integration")


@pytest.fixture(scope="session")
def co2_ni100():
    """REANN's CO2/Ni(100) ``configuration`` file in ../shared/data (skips without it)."""
    return shared_data("co2_ni100_reann", "val", "configuration")


@pytest.fixture(scope="session")
def water_deepmd():
    """The DeePMD water systems in ../shared/data (skips without them)."""
    return shared_data("water_deepmd")


@pytest.fixture(scope="session")
def ch4_checkpoint(tmp_path_factory):
    """``best.ckpt`` of a two-epoch run of the CH4 tutorial config with a small model and EMA."""
    from .utils import run_nequip_train

    run_dir = tmp_path_factory.mktemp("ch4_run")
    run_nequip_train(
        "configs/reann_ch4.yaml",
        "trainer.max_epochs=2",
        "training_module.ema_decay=0.5",
        "training_module.model.num_gaussians=4",
        "training_module.model.energy_network.hidden=[16]",
        "training_module.model.coefficient_network.hidden=[16]",
        f"hydra.run.dir={run_dir}",
    )
    return run_dir / "best.ckpt"


def pytest_collection_modifyitems(items):
    for item in items:
        if item.originalname in _INTEGRATION_TESTS:
            item.add_marker(pytest.mark.slow)
