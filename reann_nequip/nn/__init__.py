"""Graph modules of the REANN model. Import only torch, ``nequip.nn`` and ``nequip.data`` here:
``nequip-package`` interns these files, and anything reaching lightning or hydra breaks it."""

from .activations import ElementActivation
from .atomic_readout import AtomicScalarReadout
from .dipole import DipoleFromCharges, TransitionDipoleFromHeads
from .edge_vectors import EdgeVectors, with_edge_vectors
from .element_networks import ElementNetworks
from .embedded_density import CartesianMonomials
from .forms import KernelStage, use_kernels
from .polarizability import PolarizabilityFromGradients
from .radial_basis import SpeciesGaussianBasis, squared_cosine_cutoff
from .recursive_density import OrbitalCoefficientUpdate, RecursiveEmbeddedDensity

__all__ = [
    "AtomicScalarReadout",
    "CartesianMonomials",
    "DipoleFromCharges",
    "EdgeVectors",
    "ElementActivation",
    "ElementNetworks",
    "KernelStage",
    "OrbitalCoefficientUpdate",
    "PolarizabilityFromGradients",
    "RecursiveEmbeddedDensity",
    "SpeciesGaussianBasis",
    "TransitionDipoleFromHeads",
    "squared_cosine_cutoff",
    "use_kernels",
    "with_edge_vectors",
]
