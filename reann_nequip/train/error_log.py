"""REANN's ``nn.err`` table written by ``nequip-train``."""

import datetime
import math
import os
from typing import List, Optional

import lightning
from lightning.pytorch.callbacks import Callback
from nequip.train import MeanSquaredError, NequIPLightningModule

from .._files import atomic_output

_TIME_FORMAT = "%Y-%m-%d-%H_%M_%S"  # REANN's timestamp


class ReannErrorLog(Callback):
    """Append one line per validation to an ``nn.err``-style file, as REANN does:

    ``Epoch= <epoch> learning rate <lr> train error: <rmse…> val error: <rmse…>``

    The columns are the root mean squared errors of the loss's MSE entries (for nequip's
    ``EnergyForceLoss(per_atom_energy=false)``: total energy, then forces), in the data's
    units. The train RMSE is accumulated over the epoch with the raw weights while they change,
    the validation RMSE uses the weights validated (EMA weights with ``EMALightningModule``),
    both as in REANN. ``epoch`` counts from 0 as in nequip's logs and checkpoints; the learning
    rate is the one the epoch trained with. A header (title, start time, column names) opens each
    run and ``terminated normal`` closes it; a restarted run appends to the same file. Under DDP
    the errors are over the frames of all ranks and only rank 0 writes.

    .. code-block:: yaml

        trainer:
          callbacks:
            - _target_: reann_nequip.train.ReannErrorLog
              file_path: ${hydra:runtime.output_dir}/nn.err

    Args:
        file_path (str): the log file; created if missing, appended to otherwise
    """

    def __init__(self, file_path: str) -> None:
        self.file_path = file_path
        self._columns: List[str] = []
        self._epoch_lr: Optional[float] = None
        self._validated_this_epoch = False

    def _write(self, trainer: lightning.Trainer, text: str) -> None:
        if trainer.is_global_zero:
            # the log is rewritten whole through a temporary file: a kill mid-write leaves the
            # previous lines intact (a few kB per thousand epochs)
            with atomic_output(self.file_path, append=True) as log:
                log.write(text)

    def on_train_start(self, trainer: lightning.Trainer, pl_module: NequIPLightningModule) -> None:
        self._columns = [
            name
            for name, entry in pl_module.loss.entries.items()
            if not entry.per_type and isinstance(pl_module.loss[name], MeanSquaredError)
        ]
        if not self._columns:
            raise ValueError(
                "`ReannErrorLog` reports the RMSE of the loss's mean squared errors, but "
                f"`training_module.loss` has no MSE entry; found {sorted(pl_module.loss.entries)}"
            )
        missing = [name for name in self._columns if name not in pl_module.val_metrics[0].entries]
        if missing:
            raise ValueError(
                f"`ReannErrorLog` needs the loss entries {missing} in `training_module."
                f"val_metrics` too (same names); found {sorted(pl_module.val_metrics[0].entries)}"
            )
        directory = os.path.dirname(os.path.abspath(self.file_path))
        if trainer.is_global_zero:
            os.makedirs(directory, exist_ok=True)
        columns = " ".join(name.removesuffix("_mse") for name in self._columns)
        self._write(
            trainer,
            "REANN-style error log of reann_nequip (RMSE in the units of the data)\n"
            f"{datetime.datetime.now().strftime(_TIME_FORMAT)}\n"
            f"# train error / val error columns: {columns}\n",
        )

    def on_train_epoch_start(
        self, trainer: lightning.Trainer, pl_module: NequIPLightningModule
    ) -> None:
        self._epoch_lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_validation_epoch_end(
        self, trainer: lightning.Trainer, pl_module: NequIPLightningModule
    ) -> None:
        if not trainer.sanity_checking:
            self._validated_this_epoch = True

    def on_train_epoch_end(
        self, trainer: lightning.Trainer, pl_module: NequIPLightningModule
    ) -> None:
        if not self._validated_this_epoch:
            return
        self._validated_this_epoch = False
        # the loss's epoch means are not yet computed by the module (it does so after the
        # callbacks); torchmetrics caches this compute() for it. Under DDP compute() sums over
        # the ranks (a collective): every rank computes, only rank 0 writes
        train = [math.sqrt(float(pl_module.loss[name].compute())) for name in self._columns]
        validation = [
            math.sqrt(pl_module.val_metrics[0].metrics_values_epoch[name]) for name in self._columns
        ]
        self._write(
            trainer,
            f"Epoch= {trainer.current_epoch:6d} learning rate {self._epoch_lr:e} train error: "
            + " ".join(f"{value:10.5f}" for value in train)
            + " val error: "
            + " ".join(f"{value:10.5f}" for value in validation)
            + "\n",
        )

    def on_train_end(self, trainer: lightning.Trainer, pl_module: NequIPLightningModule) -> None:
        self._write(
            trainer, f"{datetime.datetime.now().strftime(_TIME_FORMAT)} terminated normal\n"
        )
