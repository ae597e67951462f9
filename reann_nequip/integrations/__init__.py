"""Bridges to other software.

- ``reann_nequip.integrations.pyg``: PyTorch Geometric ``Data``/``Batch`` ↔ nequip
  ``AtomicDataDict``, and REANN models evaluated on PyG batches (``pip install reann-nequip[pyg]``).

Nothing is imported here, so that ``import reann_nequip.integrations`` never pulls an optional
dependency; import the submodule you need.
"""
