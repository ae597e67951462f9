"""Shared fixtures.

nequip's model-test fixtures (``model_dtype``, ``atomic_batch``, ``molecules``, ``Cu_bulk``, …)
come from ``nequip.utils.unittests.conftest``, loaded as a pytest plugin.
"""

import pathlib

import pytest

pytest_plugins = ["nequip.utils.unittests.conftest"]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """``../shared/data`` beside the clone; tests that need it skip where a clone has none."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data sets not found at {SHARED_DATA} (a clone without ../shared)")
    return SHARED_DATA


# nequip's suite runs real nequip-train / nequip-package / nequip-compile for these
_INTEGRATION_TESTS = ("test_ase_compile", "test_train_time_compile", "test_mliap_integration")


def pytest_collection_modifyitems(items):
    for item in items:
        if item.originalname in _INTEGRATION_TESTS:
            item.add_marker(pytest.mark.slow)
