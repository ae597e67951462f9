"""Errors of dipoles and polarizabilities as REANN papers report them, for nequip configs.

- :class:`RelativeRootMeanSquaredError`: RRMSE = RMSE / standard deviation of the reference,
  the figure the REANN papers quote (predicting the reference mean gives 1).
- :class:`CartesianComponent`: one component of a vector or 3×3 frame field (``total_dipole_x``,
  ``polarizability_xy``), for per-component errors.
- :func:`TensorPropertyMetrics` and :func:`TensorPropertyLoss`: ready-made nequip
  ``MetricsManager`` s for one tensor field.
"""

from typing import Dict, List, Optional

import torch
from nequip.data import AtomicDataDict, BaseModifier
from nequip.data._key_registry import _CARTESIAN_TENSOR_FIELDS, get_field_type
from nequip.train import MeanAbsoluteError, MeanSquaredError, MetricsManager, RootMeanSquaredError
from torchmetrics import Metric

_AXES = "xyz"


class RelativeRootMeanSquaredError(Metric):
    """RRMSE = sqrt(Σ (pred − ref)² / Σ (ref − mean ref)²), summed over frames and components.

    The reference mean is taken per component (per row of ``[num_frames, ...]``), so the
    denominator is the spread of the reference around its own mean; predicting that mean gives
    exactly 1. NaN when the reference does not vary (one frame, or a constant label).
    """

    # the per-component sums are sized by the first batch, so torchmetrics must not add a
    # batch's fresh state to the accumulated one (it would add tensors of different sizes)
    full_state_update = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("squared_error", default=torch.tensor(0.0, dtype=torch.float64))
        self.add_state("count", default=torch.tensor(0, dtype=torch.long))
        self.add_state("target_sum", default=torch.zeros(0, dtype=torch.float64))
        self.add_state("target_square_sum", default=torch.zeros(0, dtype=torch.float64))

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """``preds``, ``target``: [num_frames, ...] of equal shape."""
        if preds.shape != target.shape:
            raise ValueError(
                f"RRMSE needs predictions and references of one shape, found "
                f"{tuple(preds.shape)} and {tuple(target.shape)}"
            )
        if target.numel() == 0:
            return
        target = target.to(torch.float64).reshape(target.shape[0], -1)  # [frames, components]
        preds = preds.to(torch.float64).reshape(target.shape)
        if self.target_sum.numel() == 0:
            self.target_sum = torch.zeros(target.shape[1], dtype=torch.float64, device=self.device)
            self.target_square_sum = torch.zeros_like(self.target_sum)
        elif self.target_sum.numel() != target.shape[1]:
            raise ValueError(
                f"RRMSE: {target.shape[1]} components per frame in this batch, "
                f"{self.target_sum.numel()} before"
            )
        self.squared_error = self.squared_error + (preds - target).square().sum()
        self.count = self.count + target.shape[0]
        self.target_sum = self.target_sum + target.sum(dim=0)
        self.target_square_sum = self.target_square_sum + target.square().sum(dim=0)

    def compute(self) -> torch.Tensor:
        mean = self.target_sum / self.count
        spread = (self.target_square_sum - self.count * mean.square()).sum()
        if not spread > 0:
            return torch.tensor(float("nan"), dtype=torch.float64, device=self.device)
        return torch.sqrt(self.squared_error / spread)

    def __str__(self) -> str:
        return "rrmse"


class CartesianComponent(BaseModifier):
    """One component of a frame vector ([num_frames, 3]) or tensor ([num_frames, 3, 3]) field.

    Args:
        field (str): e.g. ``total_dipole`` or ``polarizability``
        component (str): ``x``, ``y``, ``z`` for a vector; ``xx``, ``xy``, … for a tensor
    """

    def __init__(self, field: str, component: str) -> None:
        super().__init__(field)
        rank = 2 if field in _CARTESIAN_TENSOR_FIELDS else 1
        if len(component) != rank or any(axis not in _AXES for axis in component):
            expected = "one of x, y, z" if rank == 1 else "two of x, y, z, e.g. xy"
            raise ValueError(f"`component` of `{field}` must be {expected}, found {component!r}")
        self.component = component
        self.index = [_AXES.index(axis) for axis in component]

    def _func(self, data: AtomicDataDict.Type) -> torch.Tensor:
        value = data[self.field]
        if len(self.index) == 1:
            return value[:, self.index[0]]
        return value[:, self.index[0], self.index[1]]

    def __str__(self) -> str:
        return f"{super().__str__()}_{self.component}"


def _components(field: str) -> List[str]:
    if get_field_type(field, error_on_unregistered=False) != "graph":
        raise ValueError(f"`field` must be a registered per-frame field, found `{field}`")
    if field in _CARTESIAN_TENSOR_FIELDS:
        # the six independent entries of a symmetric tensor
        return ["xx", "yy", "zz", "xy", "xz", "yz"]
    return list(_AXES)


def TensorPropertyMetrics(
    field: str,
    rrmse_coeff: Optional[float] = 1.0,
    per_component: bool = True,
    type_names: Optional[List[str]] = None,
) -> MetricsManager:
    """RMSE, MAE and RRMSE of a dipole or polarizability field, and RMSE and MAE per component.

    Names: ``<field>_rmse``, ``<field>_mae``, ``<field>_rrmse`` and ``<field>_<c>_rmse``,
    ``<field>_<c>_mae`` for c in x, y, z (vectors) or xx, yy, zz, xy, xz, yz (symmetric tensors).

    Example::

        val_metrics:
          _target_: reann_nequip.train.TensorPropertyMetrics
          field: total_dipole

    Args:
        field (str): ``total_dipole``, ``transition_dipole`` or ``polarizability``
        rrmse_coeff (float): weight of the RRMSE in ``weighted_sum`` (default ``1.0``; ``None``
            leaves ``weighted_sum`` out)
        per_component (bool): also log every component (default ``True``)
        type_names (list[str]): passed on to ``MetricsManager`` (nequip-train sets it)
    """
    components = _components(field)
    metrics: List[Dict] = [
        {"name": f"{field}_rmse", "field": field, "metric": RootMeanSquaredError()},
        {"name": f"{field}_mae", "field": field, "metric": MeanAbsoluteError()},
        {
            "name": f"{field}_rrmse",
            "field": field,
            "metric": RelativeRootMeanSquaredError(),
            "coeff": rrmse_coeff,
        },
    ]
    if per_component:
        for component in components:
            selected = CartesianComponent(field, component)
            metrics += [
                {"name": f"{selected}_rmse", "field": selected, "metric": RootMeanSquaredError()},
                {"name": f"{selected}_mae", "field": selected, "metric": MeanAbsoluteError()},
            ]
    return MetricsManager(metrics, type_names=type_names)


def TensorPropertyLoss(field: str, type_names: Optional[List[str]] = None) -> MetricsManager:
    """Mean squared error over all components of ``field`` (REANN's loss for tensors).

    Example::

        loss:
          _target_: reann_nequip.train.TensorPropertyLoss
          field: polarizability

    Args:
        field (str): ``total_dipole``, ``transition_dipole`` or ``polarizability``
        type_names (list[str]): passed on to ``MetricsManager`` (nequip-train sets it)
    """
    _components(field)
    return MetricsManager(
        [{"name": f"{field}_mse", "field": field, "metric": MeanSquaredError(), "coeff": 1.0}],
        type_names=type_names,
    )
