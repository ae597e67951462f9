"""nequip's ``ASEDataModule``, refusing frames that cannot be physics before anything uses them."""

from typing import List, Optional, Set

import numpy as np
import torch
from nequip.data import AtomicDataDict
from nequip.data.datamodule import ASEDataModule as _NequipASEDataModule
from nequip.data.datamodule import NequIPDataModule
from nequip.data.dataset import ASEDataset

from .frame_checks import FrameProblem, frame_problem

# Lightning stage -> the datasets NequIPDataModule.setup() builds for it
_STAGE_DATASETS = {
    "fit": ("train_dataset", "val_dataset"),
    "validate": ("val_dataset",),
    "test": ("test_dataset",),
    "predict": ("predict_dataset",),
}
# fields that are the frame's geometry or identity rather than labels
_GEOMETRY_FIELDS = (
    AtomicDataDict.POSITIONS_KEY,
    AtomicDataDict.CELL_KEY,
    AtomicDataDict.PBC_KEY,
    AtomicDataDict.ATOMIC_NUMBERS_KEY,
)


class ASEDataModule(_NequipASEDataModule):
    """nequip's ``ASEDataModule`` (same arguments) that checks every frame of the files it reads.

    With ``transform_once: true`` the transforms (type mapping, neighbour lists) run once per
    frame when the datasets are set up, and their results are kept in memory, instead of every
    time a frame is drawn; for deterministic transforms (those of the configs) and data that fit
    in memory. On small molecules this removes most of a training step's data cost.

    When its datasets are set up, before nequip computes the training-set statistics or any
    neighbour list, each frame goes through
    :func:`~reann_nequip.data.frame_checks.frame_problem`: non-finite positions, cells or labels,
    labels beyond 1e9 (energies per atom), atoms closer than 0.1 Å, frames without periodic axes
    wider than 500 Å (which crash vesin). The first problem raises ``ValueError`` naming the file,
    the frame (0-based, as ``ase.io.read`` counts) and the atoms. Each file is checked once.

    .. code-block:: yaml

        data:
          _target_: reann_nequip.data.ASEDataModule
          seed: 123
          split_dataset: {file_path: data.xyz, train: 400, val: 50, test: 50}
          transforms: [...]
    """

    def __init__(self, *args, transform_once: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.transform_once = transform_once
        self._checked_files: Set[str] = set()

    def setup(self, stage: str) -> None:
        super().setup(stage)
        for dataset in stage_datasets(self, stage):
            self._check(dataset)
            if self.transform_once and dataset.transforms:
                # every frame with its types and neighbour list, kept: the transforms no longer
                # run each time a frame is drawn (per frame, per epoch)
                dataset.data_list = [dataset._transform(data) for data in dataset.data_list]
                # kept for what reads them, e.g. TrainingGuard's check of the element list
                dataset.applied_transforms = dataset.transforms
                dataset.transforms = []

    def _check(self, dataset: ASEDataset) -> None:
        if dataset.file_path in self._checked_files:
            return
        for index, data in enumerate(dataset.data_list):
            problem = _problem(data)
            if problem is not None:
                raise ValueError(f"{dataset.file_path}, frame {index}: {problem.message}")
        self._checked_files.add(dataset.file_path)


def stage_datasets(datamodule: NequIPDataModule, stage: str) -> List[torch.utils.data.Dataset]:
    """The datasets a nequip data module has set up for a Lightning ``stage`` (``fit``,
    ``validate``, ``test``, ``predict``), each unwrapped from the torch ``Subset`` of a split."""
    datasets = []
    for name in _STAGE_DATASETS[stage]:
        for dataset in getattr(datamodule, name):
            while isinstance(dataset, torch.utils.data.Subset):
                dataset = dataset.dataset
            datasets.append(dataset)
    return datasets


def _problem(data: AtomicDataDict.Type) -> Optional[FrameProblem]:
    """:func:`frame_problem` of one frame as nequip's ``from_ase`` makes it."""

    def array(key: str) -> np.ndarray:
        return data[key].detach().to(torch.float64).numpy()

    labels = {
        key: array(key)
        for key, value in data.items()
        if key not in _GEOMETRY_FIELDS
        and key not in (AtomicDataDict.TOTAL_ENERGY_KEY, AtomicDataDict.FORCE_KEY)
        and value.is_floating_point()
    }
    return frame_problem(
        array(AtomicDataDict.POSITIONS_KEY),
        array(AtomicDataDict.CELL_KEY).reshape(3, 3),
        data[AtomicDataDict.PBC_KEY].numpy().reshape(3),
        energy=(
            float(data[AtomicDataDict.TOTAL_ENERGY_KEY])
            if AtomicDataDict.TOTAL_ENERGY_KEY in data
            else None
        ),
        forces=array(AtomicDataDict.FORCE_KEY) if AtomicDataDict.FORCE_KEY in data else None,
        labels=labels,
    )
