"""Model builders; reference them from YAML as ``_target_: reann_nequip.model.ReannModel``."""

from .reann_models import (
    ReannDipoleModel,
    ReannModel,
    ReannPolarizabilityModel,
    ReannTransitionDipoleModel,
)

__all__ = [
    "ReannDipoleModel",
    "ReannModel",
    "ReannPolarizabilityModel",
    "ReannTransitionDipoleModel",
]
