"""Training helpers usable from nequip YAML configs."""

from .tensor_metrics import (
    CartesianComponent,
    RelativeRootMeanSquaredError,
    TensorPropertyLoss,
    TensorPropertyMetrics,
)
from .units import ScaledField

__all__ = [
    "CartesianComponent",
    "RelativeRootMeanSquaredError",
    "ScaledField",
    "TensorPropertyLoss",
    "TensorPropertyMetrics",
]
