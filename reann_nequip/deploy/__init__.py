"""Deployment: trained nequip models to the TorchScript files ``pair_reann`` and ASE load."""

from .build import METADATA_KEYS, deploy, load_trained_model, read_metadata, save_deployed
from .committee import DEVIATION_COLUMNS, check_committee, force_deviation, read_deviation_file
from .deployed_model import DeployedEnergyModel

__all__ = [
    "DEVIATION_COLUMNS",
    "METADATA_KEYS",
    "DeployedEnergyModel",
    "check_committee",
    "deploy",
    "force_deviation",
    "load_trained_model",
    "read_deviation_file",
    "read_metadata",
    "save_deployed",
]
