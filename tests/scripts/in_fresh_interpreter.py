"""Runs a test helper ``module:function`` (with string arguments) in a fresh interpreter:
importing torch_geometric (tests/integration/test_pyg.py) replaces torch.index_select with a
Python function that TorchScript cannot compile, so scripting is checked away from it."""

import importlib
import pathlib
import sys

from nequip.utils.global_state import set_global_state

# the repository root, where the test package lives
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
set_global_state()
module_name, function_name = sys.argv[1].split(":")
getattr(importlib.import_module(module_name), function_name)(*sys.argv[2:])
