"""Callbacks that corrupt the weights or pause training mid-epoch, for tests of REANN's divergence
guard and of restarts, and one that checks that the ranks of a DDP run stay in step.

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


class AssertRanksAgree(Callback):
    """After every training epoch, gather the learning rate, the stop flag and every floating-point
    parameter and buffer (raw and EMA weights) from all ranks and raise unless they are equal
    (NaN equal to NaN). Placed after the callbacks that change them; on one process it compares
    the one rank with itself."""

    def on_train_epoch_end(self, trainer: lightning.Trainer, pl_module) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        tensors = [p.detach() for p in pl_module.parameters()] + [
            b for b in pl_module.buffers() if b.is_floating_point()
        ]
        state = torch.cat(
            [torch.tensor([lr, float(trainer.should_stop)], dtype=torch.float64)]
            + [t.flatten().to(torch.float64) for t in tensors]
        )
        ranks = trainer.strategy.all_gather(state).reshape(trainer.world_size, -1)
        same = (ranks == ranks[0]) | (ranks.isnan() & ranks[0].isnan())
        if not bool(same.all()):
            raise RuntimeError(
                f"after epoch {trainer.current_epoch} the {trainer.world_size} ranks disagree on "
                f"{int((~same).any(dim=0).sum())} of {state.numel()} values (learning rate, stop "
                "flag, weights)"
            )
