"""Callbacks that corrupt the weights or pause training mid-epoch, for tests of REANN's divergence
guard and of restarts.

Importable by ``nequip-train`` (``_target_: tests.schedule_fixtures.PoisonWeights``) when the
repository root is on ``PYTHONPATH``.
"""

import time

import lightning
import torch
from lightning.pytorch.callbacks import Callback


class PoisonWeights(Callback):
    """Set every raw weight to NaN before training batch ``batch`` of epoch ``epoch``; the NaN
    then reaches the loss, the gradients, the EMA weights and the validation loss. ``epoch``
    -1 leaves the weights alone."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch = epoch
        self.batch = batch

    def on_train_batch_start(self, trainer: lightning.Trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            with torch.no_grad():
                for parameter in pl_module.model.parameters():
                    parameter.fill_(float("nan"))


class PauseMidEpoch(Callback):
    """Before training batch ``batch`` of epoch ``epoch``, create the file ``marker`` and wait
    there, so that a test can kill the run at a known point in the middle of an epoch. ``epoch``
    -1 never pauses."""

    def __init__(self, epoch: int, batch: int, marker: str) -> None:
        self.epoch = epoch
        self.batch = batch
        self.marker = marker

    def on_train_batch_start(self, trainer: lightning.Trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            open(self.marker, "w").close()
            time.sleep(600)
