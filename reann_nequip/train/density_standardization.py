"""A Lightning callback that sets the scale REANN's element networks start training from."""

import itertools

import lightning
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from nequip.train import NequIPLightningModule

from ..nn.element_networks import ElementNetworks, standardize_new_networks


class StandardizeDensity(Callback):
    """Standardise what each new element network reads, from the first training batches.

    REANN's densities are small numbers that vary little between atoms. Read raw, the input
    layer needs weights as large as the inverse of that spread, and the optimiser takes much of
    the training to grow them. Before the first step, this callback runs the model on
    ``num_batches`` training batches and sets each new network's input shift to the mean of
    the density it reads (per element and feature) and its scale to the root mean square of the
    features' spreads (per element; ``ElementNetworks.standardize_inputs``). Networks
    already trained (a resumed run, an imported REANN model) are left alone; the shift and scale
    are saved with the model, so a deployed model computes exactly what was trained. Under DDP
    the ranks use rank 0's values.

    .. code-block:: yaml

        trainer:
          callbacks:
            - _target_: reann_nequip.train.StandardizeDensity

    Args:
        num_batches (int): training batches the statistics are taken over
    """

    def __init__(self, num_batches: int = 20) -> None:
        if num_batches < 1:
            raise ValueError(f"`num_batches` must be at least 1, found {num_batches}")
        self.num_batches = num_batches

    def on_fit_start(self, trainer: lightning.Trainer, pl_module: NequIPLightningModule) -> None:
        loader = trainer.datamodule.train_dataloader()
        batches = (
            trainer.strategy.batch_to_device(batch)
            for batch in itertools.islice(loader, self.num_batches)
        )
        count = standardize_new_networks(pl_module, batches)
        for network in pl_module.modules():
            if isinstance(network, ElementNetworks):
                for buffer in (network.input_shift, network.input_scale):
                    buffer.copy_(trainer.strategy.broadcast(buffer, src=0))
        if count:
            rank_zero_info(f"standardised the inputs of {count} element networks")
