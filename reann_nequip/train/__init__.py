"""Training helpers usable from nequip YAML configs."""

from .density_standardization import StandardizeDensity
from .error_log import ReannErrorLog
from .guard import TrainingGuard
from .schedule import ReannTrainingSchedule, reann_force_coeff
from .tensor_metrics import (
    CartesianComponent,
    RelativeRootMeanSquaredError,
    TensorPropertyLoss,
    TensorPropertyMetrics,
)
from .units import ScaledField

__all__ = [
    "CartesianComponent",
    "ReannErrorLog",
    "ReannTrainingSchedule",
    "RelativeRootMeanSquaredError",
    "ScaledField",
    "StandardizeDensity",
    "TensorPropertyLoss",
    "TensorPropertyMetrics",
    "TrainingGuard",
    "reann_force_coeff",
]
