"""Evaluates each deployed file named on the command line (argv[2:]) with ReannCalculator on the
extxyz frame argv[1], printing one line per file before it is loaded: `try NAME`, then `ok` or
`refused: MESSAGE`. A file that crashes the process is the last one tried."""

import sys

from ase.io import read

from reann_nequip.integrations.ase import ReannCalculator

frame = read(sys.argv[1])
for path in sys.argv[2:]:
    print("try", path, flush=True)
    try:
        atoms = frame.copy()
        atoms.calc = ReannCalculator(path)
        atoms.get_forces()
        print("ok", flush=True)
    except (ValueError, RuntimeError) as error:
        print("refused:", str(error).splitlines()[0][:200], flush=True)
