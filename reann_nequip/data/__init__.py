"""Data transforms and readers."""

from .ase_datamodule import ASEDataModule
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
    "ASEDataModule",
    "ChemicalSpeciesToAtomTypeMapper",
    "ConfigurationFormatError",
    "ReannConfigurationDataset",
    "ReannFrame",
    "iter_configuration",
    "read_configuration",
    "write_configuration",
]
