"""Deployment: trained nequip models to the TorchScript files ``pair_reann`` and ASE load."""

from .build import METADATA_KEYS, deploy, load_trained_model, read_metadata, save_deployed
from .deployed_model import DeployedEnergyModel

__all__ = [
    "METADATA_KEYS",
    "DeployedEnergyModel",
    "deploy",
    "load_trained_model",
    "read_metadata",
    "save_deployed",
]
