"""Metrics in the units chemists quote (meV, meV/Å) rather than the data's eV."""

from typing import Optional

import torch
from nequip.data import AtomicDataDict, BaseModifier


class ScaledField(BaseModifier):
    """A data field multiplied by ``factor`` for metrics, e.g. forces in meV/Å from eV/Å.

    Use as a metric ``field`` in a nequip ``MetricsManager``; the metric is then logged as
    ``<field>_<unit>_<metric>``.

    Args:
        field (str): nequip field, e.g. ``forces``
        factor (float): multiplier, e.g. ``1000.0`` for eV → meV
        unit (str): unit label used in the metric's name, e.g. ``meV_per_A``
    """

    def __init__(self, field: str, factor: float, unit: Optional[str] = None) -> None:
        super().__init__(field)
        self.factor = float(factor)
        self.unit = unit

    def _func(self, data: AtomicDataDict.Type) -> torch.Tensor:
        return self.factor * data[self.field]

    def __str__(self) -> str:
        name = super().__str__()
        return name if self.unit is None else f"{name}_{self.unit}"
