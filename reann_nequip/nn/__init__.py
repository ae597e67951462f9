"""Graph modules of the REANN model. Import only torch, ``nequip.nn`` and ``nequip.data`` here:
``nequip-package`` interns these files, and anything reaching lightning or hydra breaks it."""

from .activations import ElementActivation
from .atomic_energy import AtomicEnergyReadout
from .element_networks import ElementNetworks
from .embedded_density import CartesianMonomials, embedded_density
from .radial_basis import SpeciesGaussianBasis, squared_cosine_cutoff
from .recursive_density import OrbitalCoefficientUpdate, RecursiveEmbeddedDensity

__all__ = [
    "AtomicEnergyReadout",
    "CartesianMonomials",
    "ElementActivation",
    "ElementNetworks",
    "OrbitalCoefficientUpdate",
    "RecursiveEmbeddedDensity",
    "SpeciesGaussianBasis",
    "embedded_density",
    "squared_cosine_cutoff",
]
