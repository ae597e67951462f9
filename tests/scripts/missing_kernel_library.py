"""Loads the kernels as if the package's library were missing from the folder argv[1]."""

import pathlib
import sys

import reann_nequip.nn.kernels as kernels

kernels.library_path = lambda: pathlib.Path(sys.argv[1]) / kernels.LIBRARY_NAME
print(kernels.kernels_available())
kernels.load_kernels()
