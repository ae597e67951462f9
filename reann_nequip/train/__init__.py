"""Training helpers usable from nequip YAML configs."""

from .error_log import ReannErrorLog
from .schedule import ReannTrainingSchedule, reann_force_coeff
from .units import ScaledField

__all__ = ["ReannErrorLog", "ReannTrainingSchedule", "ScaledField", "reann_force_coeff"]
