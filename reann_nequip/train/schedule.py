"""REANN's training schedule as a Lightning callback for ``nequip-train``.

REANN (``run/train.py``, ``src/optimize.py``) trains with AdamW and, after every validation:
steps ReduceLROnPlateau on the weighted validation loss, moves the force-loss weight linearly
with the learning rate from ``init_f`` to ``final_f``, rolls back to the best weights when the
validation loss diverges, and stops once the learning rate has fallen to ``end_lr``. This module
does the same inside nequip's Lightning loop, with nequip's EMA weights and checkpoints.
"""

import math
from typing import Dict, List, Optional, Tuple

import lightning
import torch
from lightning.pytorch.callbacks import Callback
from nequip.data import AtomicDataDict
from nequip.train import EMALightningModule, NequIPLightningModule

# REANN adds 1e-8 to the denominator of its force-weight interpolation; kept so that the weights
# match REANN's to all digits (it moves f by ~1e-8 / (start_lr - end_lr) relative).
_REANN_DENOMINATOR_OFFSET = 1.0e-8


def reann_force_coeff(
    lr: float, start_lr: float, end_lr: float, initial_force_coeff: float, final_force_coeff: float
) -> float:
    """REANN's force-loss weight at learning rate ``lr``, linear in the learning rate:

    f(lr) = init_f + (final_f − init_f) · (lr − start_lr) / (end_lr − start_lr + 1e-8)

    so f = init_f at ``start_lr`` and f ≈ final_f at ``end_lr``.
    """
    return initial_force_coeff + (final_force_coeff - initial_force_coeff) * (lr - start_lr) / (
        end_lr - start_lr + _REANN_DENOMINATOR_OFFSET
    )


class ReannTrainingSchedule(Callback):
    """REANN's schedule: force weight tied to the learning rate, plateau decay, divergence
    rollback and stop at ``end_lr``.

    Every training batch, the loss coefficients are set to REANN's: ``energy_coeff`` on
    ``energy_metric`` and ``f(lr) · 3 · atoms/frames`` on ``force_metric``, with f(lr) from
    :func:`reann_force_coeff`. The factor 3 · atoms/frames (force components per frame in the
    batch) reproduces REANN's summed squared errors (``MSELoss(reduction="sum")`` over energies
    and over force components) from nequip's means. The validation metrics get the same
    coefficients (atoms/frames over the whole validation set), so their ``weighted_sum`` is
    REANN's weighted validation loss. nequip normalises coefficients to sum to one: the loss is
    then a weighted mean, whose scale does not jump when the force weight falls (REANN's sum
    does, which skews its plateau test); the optimum and Adam's steps are unchanged.

    Under DDP (``trainer.strategy: ddp``) atoms and frames are counted over all ranks: each rank
    weights its share of a batch as one process weights the whole global batch, every rank gets
    the same validation loss (nequip's metrics are summed over the ranks) and so takes the same
    decisions below: learning rate, rollback and stop.

    After each validation, with ``loss`` the monitored validation loss (computed with the EMA
    weights when the training module is an ``EMALightningModule``):

    - ``loss`` is NaN or exceeds ``divergence_factor`` × the best loss so far (REANN: 25):
      the best weights are loaded into both the model and the EMA, Adam's moment estimates
      (which may hold NaN) are cleared, and the learning rate is multiplied by ``decay_factor``;
    - otherwise the best loss and weights are updated and ReduceLROnPlateau (``decay_factor``,
      ``patience``, ``threshold``, ``min_lr = end_lr``) is stepped on ``loss``;
    - training stops once the learning rate is ``<= end_lr``.

    The starting learning rate is the optimizer's ``lr``; configure ``torch.optim.AdamW`` with
    ``lr: start_lr`` and ``weight_decay: re_ceff`` and no ``lr_scheduler`` (this callback owns the
    plateau scheduler). Its state (best loss and weights, plateau counters, start learning rate,
    number of rollbacks) is saved in nequip's checkpoints, so ``nequip-train ... ++ckpt_path=
    <run>/last.ckpt`` continues the schedule where it stopped.

    .. code-block:: yaml

        trainer:
          callbacks:
            - _target_: reann_nequip.train.ReannTrainingSchedule
              end_lr: 1.0e-5            # REANN end_lr
              decay_factor: 0.5         # REANN decay_factor
              patience: 100             # REANN patience_epoch (validating every epoch)
              energy_coeff: 0.1         # REANN e_ceff
              initial_force_coeff: 10.0 # REANN init_f
              final_force_coeff: 0.5    # REANN final_f
        training_module:
          _target_: nequip.train.EMALightningModule
          ema_decay: 0.999
          loss:
            _target_: nequip.train.EnergyForceLoss
            per_atom_energy: false      # REANN fits total energies
            coeffs: {total_energy: 0.1, forces: 10.0}   # replaced every batch
          optimizer: {_target_: torch.optim.AdamW, lr: 1.0e-3, weight_decay: 0.0}

    Args:
        end_lr (float): REANN's ``end_lr``: plateau ``min_lr`` and stop criterion
        decay_factor (float): REANN's ``decay_factor``: plateau factor and rollback factor
            (default ``0.5``)
        patience (int): validations without improvement before the learning rate decays
            (default ``100``). REANN waits ``patience_epoch / print_epoch`` validations of
            ``print_epoch`` epochs; validating every epoch (nequip's EMA needs it), REANN's
            ``patience_epoch`` gives the same wait in epochs
        threshold (float): relative improvement that counts as better, as in torch's
            ReduceLROnPlateau (default ``1e-4``, REANN's)
        energy_coeff (float): REANN's ``e_ceff``, constant (default ``0.1``)
        initial_force_coeff (float): REANN's ``init_f``, the force weight at the start learning
            rate (default ``10.0``)
        final_force_coeff (float): REANN's ``final_f``, the force weight at ``end_lr``
            (default ``0.5``)
        divergence_factor (float): rollback when the validation loss exceeds this multiple of
            the best (default ``25.0``, REANN's)
        energy_metric (str): name of the energy MSE entry in the loss and validation metrics
            (default ``total_energy_mse``, nequip's ``EnergyForceLoss`` name)
        force_metric (str): name of the force MSE entry (default ``forces_mse``); ``null`` for
            an energy-only fit (REANN's ``start_table 0``): the force weights are then unused
        monitor (str): logged validation loss the schedule follows
            (default ``val0_epoch/weighted_sum``)
    """

    def __init__(
        self,
        end_lr: float,
        decay_factor: float = 0.5,
        patience: int = 100,
        threshold: float = 1.0e-4,
        energy_coeff: float = 0.1,
        initial_force_coeff: float = 10.0,
        final_force_coeff: float = 0.5,
        divergence_factor: float = 25.0,
        energy_metric: str = "total_energy_mse",
        force_metric: Optional[str] = "forces_mse",
        monitor: str = "val0_epoch/weighted_sum",
    ) -> None:
        if not end_lr > 0.0:
            raise ValueError(f"`end_lr` must be > 0, found {end_lr}")
        if not 0.0 < decay_factor < 1.0:
            raise ValueError(f"`decay_factor` must lie in (0, 1), found {decay_factor}")
        if patience < 0:
            raise ValueError(f"`patience` must be >= 0, found {patience}")
        if not divergence_factor > 1.0:
            raise ValueError(f"`divergence_factor` must be > 1, found {divergence_factor}")
        for name, value in (
            ("energy_coeff", energy_coeff),
            ("initial_force_coeff", initial_force_coeff),
            ("final_force_coeff", final_force_coeff),
        ):
            if not value >= 0.0:
                raise ValueError(f"`{name}` must be >= 0, found {value}")
        self.end_lr = float(end_lr)
        self.decay_factor = float(decay_factor)
        self.patience = int(patience)
        self.threshold = float(threshold)
        self.energy_coeff = float(energy_coeff)
        self.initial_force_coeff = float(initial_force_coeff)
        self.final_force_coeff = float(final_force_coeff)
        self.divergence_factor = float(divergence_factor)
        self.energy_metric = energy_metric
        self.force_metric = force_metric
        self.monitor = monitor

        # === schedule state, saved in checkpoints ===
        self.start_lr: Optional[float] = None
        self.best_loss = math.inf
        self.best_weights: Optional[List[torch.Tensor]] = None
        self.num_rollbacks = 0
        self._plateau: Optional[torch.optim.lr_scheduler.ReduceLROnPlateau] = None
        self._restored_plateau_state: Optional[Dict] = None

        # validation-set force components per frame, accumulated over one validation pass
        self._val_atoms = 0
        self._val_frames = 0
        self._validated_this_epoch = False

    # === setup ===
    def on_train_start(self, trainer: lightning.Trainer, pl_module: NequIPLightningModule) -> None:
        if trainer.lr_scheduler_configs:
            raise ValueError(
                "`ReannTrainingSchedule` steps its own ReduceLROnPlateau; remove "
                f"`training_module.lr_scheduler` (found {type(trainer.lr_scheduler_configs[0].scheduler).__name__})"
            )
        if len(trainer.optimizers) != 1:
            raise ValueError(
                f"`ReannTrainingSchedule` expects one optimizer, found {len(trainer.optimizers)}"
            )
        for manager_name, manager in [("loss", pl_module.loss)] + [
            (f"val_metrics[{index}]", metrics)
            for index, metrics in enumerate(pl_module.val_metrics)
        ]:
            for metric in self._metrics():
                if metric not in manager.entries:
                    raise ValueError(
                        f"`ReannTrainingSchedule` sets the coefficient of `{metric}` but "
                        f"`training_module.{manager_name}` has no such entry; found "
                        f"{sorted(manager.entries)}"
                    )
        optimizer = trainer.optimizers[0]
        if self.start_lr is None:
            self.start_lr = float(optimizer.param_groups[0]["lr"])
        if not self.end_lr < self.start_lr:
            raise ValueError(
                f"`end_lr` ({self.end_lr}) must be below the optimizer's starting `lr` "
                f"({self.start_lr})"
            )
        self._plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=self.decay_factor,
            patience=self.patience,
            threshold=self.threshold,
            min_lr=self.end_lr,
        )
        if self._restored_plateau_state is not None:
            self._plateau.load_state_dict(self._restored_plateau_state)
            self._restored_plateau_state = None

    # === loss coefficients ===
    def _metrics(self) -> List[str]:
        """The loss entries whose coefficients the schedule sets."""
        return [self.energy_metric] + ([] if self.force_metric is None else [self.force_metric])

    def force_coeff(self, lr: float) -> float:
        """REANN's force weight f(lr) for this schedule (per force component summed)."""
        return reann_force_coeff(
            lr, self.start_lr, self.end_lr, self.initial_force_coeff, self.final_force_coeff
        )

    def _set_coeffs(self, managers, lr: float, atoms: int, frames: int) -> None:
        coeffs = {self.energy_metric: self.energy_coeff}
        if self.force_metric is not None:
            coeffs[self.force_metric] = self.force_coeff(lr) * 3.0 * atoms / frames
        for manager in managers:
            # entries without a coefficient stay out of the weighted sum
            manager.set_coeffs(
                {name: entry.coeff for name, entry in manager.entries.items()} | coeffs
            )

    def on_train_batch_start(
        self,
        trainer: lightning.Trainer,
        pl_module: NequIPLightningModule,
        batch: AtomicDataDict.Type,
        batch_idx: int,
    ) -> None:
        atoms, frames = _summed_over_ranks(trainer, *_atoms_and_frames(batch))
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self._set_coeffs([pl_module.loss], lr, atoms, frames)

    def on_validation_epoch_start(
        self, trainer: lightning.Trainer, pl_module: NequIPLightningModule
    ) -> None:
        self._val_atoms = 0
        self._val_frames = 0

    def on_validation_batch_start(
        self,
        trainer: lightning.Trainer,
        pl_module: NequIPLightningModule,
        batch: AtomicDataDict.Type,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        atoms, frames = _atoms_and_frames(batch)
        self._val_atoms += atoms
        self._val_frames += frames

    def on_validation_epoch_end(
        self, trainer: lightning.Trainer, pl_module: NequIPLightningModule
    ) -> None:
        # runs before the module computes the epoch's metrics, so they get these coefficients
        if self.start_lr is None:  # Lightning's sanity check runs before on_train_start
            return
        atoms, frames = _summed_over_ranks(trainer, self._val_atoms, self._val_frames)
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self._set_coeffs(pl_module.val_metrics, lr, atoms, frames)
        if not trainer.sanity_checking:
            self._validated_this_epoch = True

    # === after each validation: rollback or plateau step, then stop test ===
    def on_train_epoch_end(
        self, trainer: lightning.Trainer, pl_module: NequIPLightningModule
    ) -> None:
        if not self._validated_this_epoch:
            return
        self._validated_this_epoch = False
        if self.monitor not in trainer.callback_metrics:
            raise KeyError(
                f"`ReannTrainingSchedule.monitor` is `{self.monitor}`, which was not logged; "
                f"logged metrics: {sorted(trainer.callback_metrics)}"
            )
        loss = float(trainer.callback_metrics[self.monitor])
        optimizer = trainer.optimizers[0]
        # the weights just validated: the EMA weights when there is an EMA
        validated = _validated_weights(pl_module)

        if math.isnan(loss) or loss > self.divergence_factor * self.best_loss:
            if self.best_weights is None:
                raise RuntimeError(
                    f"validation loss `{self.monitor}` = {loss} at epoch "
                    f"{trainer.current_epoch} before any finite validation: no weights to "
                    "roll back to"
                )
            with torch.no_grad():
                for best, weight, parameter in zip(
                    self.best_weights, validated, pl_module.model.parameters()
                ):
                    weight.copy_(best)
                    parameter.copy_(best)
            optimizer.state.clear()
            for group in optimizer.param_groups:
                group["lr"] *= self.decay_factor
            self.num_rollbacks += 1
        else:
            if loss < self.best_loss:
                self.best_loss = loss
                self.best_weights = [weight.detach().clone() for weight in validated]
            self._plateau.step(loss)

        if optimizer.param_groups[0]["lr"] <= self.end_lr:
            trainer.should_stop = True

    # === checkpointing ===
    def state_dict(self) -> Dict:
        return {
            "start_lr": self.start_lr,
            "best_loss": self.best_loss,
            "best_weights": self.best_weights,
            "num_rollbacks": self.num_rollbacks,
            "plateau": None if self._plateau is None else self._plateau.state_dict(),
        }

    def load_state_dict(self, state_dict: Dict) -> None:
        self.start_lr = state_dict["start_lr"]
        self.best_loss = state_dict["best_loss"]
        self.best_weights = state_dict["best_weights"]
        self.num_rollbacks = state_dict["num_rollbacks"]
        self._restored_plateau_state = state_dict["plateau"]


def _atoms_and_frames(batch: AtomicDataDict.Type) -> Tuple[int, int]:
    """Number of atoms and of frames in a batch (on this process)."""
    return (
        int(batch[AtomicDataDict.POSITIONS_KEY].shape[0]),
        int(batch[AtomicDataDict.NUM_NODES_KEY].shape[0]),
    )


def _summed_over_ranks(trainer: lightning.Trainer, atoms: int, frames: int) -> Tuple[int, int]:
    """``atoms`` and ``frames`` summed over the processes of a DDP run; unchanged on one process.
    A collective under DDP: every rank must call it at the same point."""
    counts = torch.tensor([atoms, frames], device=trainer.strategy.root_device)
    atoms, frames = trainer.strategy.reduce(counts, reduce_op="sum").tolist()
    return atoms, frames


def _validated_weights(pl_module: NequIPLightningModule) -> List[torch.Tensor]:
    """The weights the last validation used, in ``model.parameters()`` order: the EMA buffers of
    an ``EMALightningModule`` (outside validation the model holds the raw weights), else the
    model's parameters."""
    if isinstance(pl_module, EMALightningModule):
        return pl_module.ema.ema_weights
    return list(pl_module.model.parameters())
