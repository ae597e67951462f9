"""Shared fixtures.

nequip's model-test fixtures (``model_dtype``, ``atomic_batch``, ``molecules``, ``Cu_bulk``, …)
come from ``nequip.utils.unittests.conftest``, loaded as a pytest plugin.
"""

import pytest

pytest_plugins = ["nequip.utils.unittests.conftest"]

# nequip's suite runs real nequip-train / nequip-package / nequip-compile for these
_INTEGRATION_TESTS = ("test_ase_compile", "test_train_time_compile", "test_mliap_integration")


def pytest_collection_modifyitems(items):
    for item in items:
        if item.originalname in _INTEGRATION_TESTS:
            item.add_marker(pytest.mark.slow)
