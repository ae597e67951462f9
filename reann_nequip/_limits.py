"""Bounds that training data and calculator inputs must respect, shared by every check.

Light on purpose (no torch): the data readers, the ASE calculator and the training checks import
it. ``pair_reann`` (C++) keeps its own copy of :data:`MIN_DISTANCE` (``pair_reann.cpp``).
"""

from typing import Final

# Å: two atoms closer than this are almost surely a broken structure (coincident atoms, a
# duplicated line), not physics; ReannCalculator, pair_style reann and the data readers refuse them
MIN_DISTANCE: Final[float] = 0.1

# largest |label| accepted in training data, in the data's own units: energies per atom, every
# component of forces, stresses, dipoles and polarizabilities. The all-electron energy of a
# uranium atom is 2.8e4 Ha = 7.6e5 eV = 1.8e7 kcal/mol = 7.3e7 kJ/mol = 7.6e8 meV, so any real
# label fits whatever its unit, while its square (the loss) stays far from float32's 3.4e38
MAX_LABEL: Final[float] = 1.0e9

# Å: largest span of a frame without periodic axes along x, y or z. vesin, the configs'
# neighbour-list backend, dies by SIGFPE when such a frame spans more than ~313 cutoffs along one
# axis (its cell list rounds the cells of the other axes down to zero); 500 Å keeps it safe for
# every cutoff from 1.6 Å, and is ten times the size of a large protein
MAX_EXTENT: Final[float] = 500.0

# largest number of cell vectors between an atom and the cell along a periodic axis: vesin's
# periodic shifts are int32 and lose atoms silently beyond 2^31 cells
MAX_CELL_IMAGES: Final[float] = 1.0e6
