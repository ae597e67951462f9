"""Data transforms and readers."""

from .configuration import (
    ConfigurationFormatError,
    ReannFrame,
    iter_configuration,
    read_configuration,
    write_configuration,
)
from .configuration_dataset import ReannConfigurationDataset
from .type_mapper import ChemicalSpeciesToAtomTypeMapper

__all__ = [
    "ChemicalSpeciesToAtomTypeMapper",
    "ConfigurationFormatError",
    "ReannConfigurationDataset",
    "ReannFrame",
    "iter_configuration",
    "read_configuration",
    "write_configuration",
]
