"""Model builders; reference them from YAML as ``_target_: reann_nequip.model.ReannModel``."""

from .reann_models import ReannModel

__all__ = ["ReannModel"]
