"""ReannCalculator gives the same energies, forces and stress with torch's allocator and with the
block cache (memory="keep"), which it installs for the rest of the process: argv[1] a deployed
model, argv[2] an extxyz frame."""

import sys

import numpy as np
import torch
from ase.io import read

from reann_nequip.integrations.ase import ReannCalculator

frame = read(sys.argv[2])
results = {}
for memory in ("release", "keep"):
    calc = ReannCalculator(sys.argv[1], memory=memory)
    results[memory] = []
    for seed in range(3):
        atoms = frame.copy()
        atoms.rattle(0.02, seed=seed)
        atoms.calc = calc
        results[memory].append(
            (atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress())
        )
assert torch.ops.reann.block_cache_bytes() > 0, "the cache kept no block"
for (e0, f0, s0), (e1, f1, s1) in zip(results["release"], results["keep"]):
    assert e0 == e1 and np.array_equal(f0, f1) and np.array_equal(s0, s1), (e0, e1)
