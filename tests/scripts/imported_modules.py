"""Imports the core package and prints which torch_geometric modules that brought in."""

import sys

import reann_nequip  # noqa: F401
import reann_nequip.data  # noqa: F401
import reann_nequip.data.pyg_datamodule  # noqa: F401
import reann_nequip.integrations  # noqa: F401
import reann_nequip.integrations.pyg  # noqa: F401
import reann_nequip.model  # noqa: F401

print(sorted(m for m in sys.modules if m.split(".")[0] == "torch_geometric"))
