"""A Lightning callback that stops a training going wrong instead of letting it end "well"."""

from typing import Dict, List, Optional

import lightning
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from nequip.data.dataset import AtomicDataset
from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper
from nequip.train import NequIPLightningModule

from ..data.ase_datamodule import stage_datasets
from ..data.pyg_datamodule import PyGAtomicDataset
from .schedule import ReannTrainingSchedule


class TrainingGuard(Callback):
    """Stop ``nequip-train`` with an error rather than let it finish with a broken model.

    - **Elements.** When the trainer sets up, the element list of the data (the
      ``model_type_names`` of its ``ChemicalSpeciesToAtomTypeMapper``, or a PyG data module's
      ``type_names``) must equal the model's ``type_names``: type index i must mean the same
      element in both. They differ when a run is resumed (``++ckpt_path``) with a config of
      other elements, as nequip then takes the model from the checkpoint and the data from the
      config; the model's kernels would otherwise fail on, or silently misread, the types.
    - **Loss.** A training step whose loss is not finite stops the run before its backward pass,
      so the weights and the checkpoints keep the last finite step; the error names the epoch and
      step. With a :class:`~reann_nequip.train.ReannTrainingSchedule` among the callbacks the
      step goes on, with a warning, and the schedule rolls back to the best weights after the
      epoch's validation (it raises if there are none yet). Under DDP the ranks decide together
      (one all-reduce of a flag per step).
    - **Checkpoints.** No checkpoint is written whose weights (model and EMA) hold a non-finite
      value; the error names the first such tensor.

    .. code-block:: yaml

        trainer:
          callbacks:
            - _target_: reann_nequip.train.TrainingGuard
    """

    def __init__(self) -> None:
        self._rollback = False
        self._warned_epoch: Optional[int] = None

    def setup(
        self, trainer: lightning.Trainer, pl_module: NequIPLightningModule, stage: str
    ) -> None:
        self._rollback = any(isinstance(c, ReannTrainingSchedule) for c in trainer.callbacks)
        # nequip requires all models of a module to share their type names
        model_type_names = list(next(iter(pl_module.model.values())).type_names)
        for dataset in stage_datasets(trainer.datamodule, stage):
            data_type_names = _data_type_names(dataset)
            if data_type_names is not None and data_type_names != model_type_names:
                raise ValueError(
                    "the data and the model have different element lists: the data maps "
                    f"elements to the types {data_type_names}, the model has the `type_names` "
                    f"{model_type_names}. When resuming (`++ckpt_path`), nequip "
                    "takes the model from the checkpoint and the data transforms from the "
                    "config: give the config the checkpoint's element list, or start a new run "
                    "(fine-tune with `ModelFromCheckpoint`)"
                )

    def on_before_backward(
        self, trainer: lightning.Trainer, pl_module: NequIPLightningModule, loss: torch.Tensor
    ) -> None:
        # a collective under DDP: every rank stops, or none
        finite = trainer.strategy.reduce_boolean_decision(
            bool(torch.isfinite(loss.detach()).all()), all=True
        )
        if finite:
            return
        where = f"epoch {trainer.current_epoch}, global step {trainer.global_step}"
        if self._rollback:
            if self._warned_epoch != trainer.current_epoch:
                self._warned_epoch = trainer.current_epoch
                rank_zero_warn(
                    f"non-finite training loss at {where}: ReannTrainingSchedule rolls back to "
                    "the best weights after this epoch's validation"
                )
            return
        raise RuntimeError(
            f"the training loss is not finite ({float(loss.detach())} on this process) at "
            f"{where}; training stops before this step changes the weights, and the checkpoints "
            "keep the last finite ones. Look for bad labels in the data, lower the learning "
            "rate, or add reann_nequip.train.ReannTrainingSchedule to roll back instead"
        )

    def on_save_checkpoint(
        self, trainer: lightning.Trainer, pl_module: NequIPLightningModule, checkpoint: Dict
    ) -> None:
        # runs after the checkpoint dict is made and before it is written
        bad = [
            key
            for key, value in checkpoint["state_dict"].items()
            if torch.is_tensor(value) and value.is_floating_point() and not value.isfinite().all()
        ]
        if bad:
            raise RuntimeError(
                f"refusing to write a checkpoint at epoch {trainer.current_epoch}, global step "
                f"{trainer.global_step}: {len(bad)} weight tensor(s) hold non-finite values, "
                f"first `{bad[0]}`; the checkpoints on disk keep the last finite weights"
            )


def _data_type_names(dataset: torch.utils.data.Dataset) -> Optional[List[str]]:
    """The element list a dataset maps atoms with; ``None`` for data that arrives typed."""
    if isinstance(dataset, PyGAtomicDataset):
        return list(dataset.type_names)
    if isinstance(dataset, AtomicDataset):
        # ASEDataModule(transform_once=True) has run the transforms already and keeps them aside
        for transform in [*dataset.transforms, *getattr(dataset, "applied_transforms", [])]:
            if isinstance(transform, ChemicalSpeciesToAtomTypeMapper):
                return list(transform.model_type_names)
    return None
