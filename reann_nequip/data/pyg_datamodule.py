"""nequip data module for PyTorch Geometric datasets of molecules (``reann-nequip[pyg]``).

torch_geometric is imported only when a data module or dataset is built, never on import.
"""

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
from nequip.data import AtomicDataDict
from nequip.data.datamodule import NequIPDataModule
from nequip.data.dataset import AtomicDataset
from omegaconf import DictConfig, ListConfig, OmegaConf

from reann_nequip.integrations.pyg import FieldSpec, pyg_to_atomic_data, require_torch_geometric


class PyGAtomicDataset(AtomicDataset):
    """A PyG dataset of molecules as nequip ``AtomicDataDict``s, converted when accessed.

    Each molecule goes through :func:`reann_nequip.integrations.pyg.pyg_to_atomic_data` (atom
    types, neighbour list, field map; errors name the molecule's index in ``dataset``), then
    through ``transforms``.

    Args:
        dataset (Dataset): a PyG dataset, or any sequence of PyG ``Data``
        type_names (list[str]): the model's element symbols (REANN ``atomtype``)
        r_max (float): neighbour-list cutoff in Å, the model's ``r_max`` (REANN ``cutoff``)
        fields (dict): changes to the nequip field → PyG attribute map (default ``None``)
        edges_cutoff (float): cutoff of the dataset's own radius-graph edges, reused when it
            equals ``r_max`` (default ``None``: nequip recomputes them)
        transforms (list): nequip transforms applied after the conversion (default none)
    """

    def __init__(
        self,
        dataset: Sequence,
        type_names: Sequence[str],
        r_max: float,
        fields: Optional[Mapping[str, FieldSpec]] = None,
        edges_cutoff: Optional[float] = None,
        transforms: Optional[List[Callable]] = None,
    ):
        super().__init__(transforms=list(transforms or []))
        require_torch_geometric()
        self.dataset = dataset
        self.type_names = list(type_names)
        self.r_max = float(r_max)
        self.fields = dict(fields or {})
        self.edges_cutoff = edges_cutoff

    def __len__(self) -> int:
        return len(self.dataset)

    def _indices(self, indices: Union[List[int], torch.Tensor, slice]) -> List[int]:
        if isinstance(indices, slice):
            return list(range(len(self)))[indices]
        return [int(index) for index in indices]

    def _get_data_list(
        self, indices: Union[List[int], torch.Tensor, slice]
    ) -> List[AtomicDataDict.Type]:
        return [
            pyg_to_atomic_data(
                self.dataset[index],
                self.type_names,
                self.r_max,
                fields=self.fields,
                edges_cutoff=self.edges_cutoff,
                molecule_ids=[index],
            )
            for index in self._indices(indices)
        ]

    def num_atoms(self, indices: Union[List[int], torch.Tensor, slice]) -> List[int]:
        # the atom counts need no conversion and no neighbour list
        return [int(self.dataset[index].num_nodes) for index in self._indices(indices)]


def _plain(config: Any) -> Any:
    """Hydra hands over OmegaConf containers; nequip's data module wants plain ones."""
    if isinstance(config, (DictConfig, ListConfig)):
        return OmegaConf.to_container(config, resolve=True)
    return config


def _as_list(config: Union[Dict, List, DictConfig, ListConfig]) -> List[Dict]:
    config = _plain(config)
    if isinstance(config, dict):
        return [config]
    if isinstance(config, list):
        return config
    raise TypeError(f"expected a dataset config or a list of them, found {type(config).__name__}")


class PyGDataModule(NequIPDataModule):
    """``NequIPDataModule`` for PyTorch Geometric datasets of molecules.

    Any PyG dataset class — a library one (``torch_geometric.datasets.QM9``, ``MD17``) or your
    own — is given by ``_target_`` and its arguments, and wrapped in a
    :class:`PyGAtomicDataset`. ``split_dataset`` splits one dataset at random (seeded by
    ``seed``, through nequip's ``RandomSplitAndIndexDataset``) into ``train``/``val``/``test``
    (/``predict``), given as counts summing to the dataset size or fractions summing to 1;
    ``train_dataset``, ``val_dataset``, ``test_dataset``, ``predict_dataset`` take datasets that
    come already split (e.g. ``MD17`` with ``train: true``/``false``). Both can be combined and
    take lists, as in ``NequIPDataModule``.

    Args:
        seed (int): data seed: split and shuffling
        type_names (list[str]): the model's element symbols (REANN ``atomtype``); a molecule with
            another element is an error that names it
        r_max (float): neighbour-list cutoff in Å, the model's ``r_max`` (REANN ``cutoff``)
        split_dataset (dict/list[dict]): ``dataset`` (a PyG dataset config) and the split sizes
        train_dataset (dict/list[dict]): PyG dataset config(s) used whole for training
        val_dataset (dict/list[dict]): same, for validation
        test_dataset (dict/list[dict]): same, for testing
        predict_dataset (dict/list[dict]): same, for prediction
        fields (dict): changes to the nequip field → PyG attribute map, e.g.
            ``{total_energy: [y, 7]}`` for QM9 or ``{forces: force}`` for PyG's MD17; see
            ``reann_nequip.integrations.pyg`` (default ``None``)
        edges_cutoff (float): cutoff of the datasets' own radius-graph edges, reused (after a
            check) when it equals ``r_max``; default ``None``: nequip recomputes the edges
        transforms (list): nequip transforms applied after the conversion (default none)
        **kwargs: ``NequIPDataModule``'s ``train_dataloader``, ``val_dataloader``,
            ``test_dataloader``, ``predict_dataloader`` and ``stats_manager``

    Example::

        data:
          _target_: reann_nequip.data.pyg_datamodule.PyGDataModule
          seed: 123
          type_names: [H, C, N, O, F]
          r_max: 5.0
          fields: {total_energy: [y, 7]}       # QM9: U0 in eV, column 7 of y
          split_dataset:
            dataset: {_target_: torch_geometric.datasets.QM9, root: data/qm9}
            train: 0.8
            val: 0.1
            test: 0.1
          train_dataloader: {_target_: torch.utils.data.DataLoader, batch_size: 32, shuffle: true}
          val_dataloader: {_target_: torch.utils.data.DataLoader, batch_size: 64}
          test_dataloader: ${data.val_dataloader}
          stats_manager:
            _target_: nequip.data.EnergyOnlyDataStatisticsManager
            type_names: [H, C, N, O, F]
    """

    def __init__(
        self,
        seed: int,
        type_names: Sequence[str],
        r_max: float,
        split_dataset: Optional[Union[Dict, List[Dict]]] = None,
        train_dataset: Optional[Union[Dict, List[Dict]]] = None,
        val_dataset: Optional[Union[Dict, List[Dict]]] = None,
        test_dataset: Optional[Union[Dict, List[Dict]]] = None,
        predict_dataset: Optional[Union[Dict, List[Dict]]] = None,
        fields: Optional[Mapping[str, FieldSpec]] = None,
        edges_cutoff: Optional[float] = None,
        transforms: Optional[List[Any]] = None,
        **kwargs,
    ):
        # fail at start-up, not at the first epoch, when torch-geometric is missing
        require_torch_geometric()
        wrapper = {
            "_target_": f"{PyGAtomicDataset.__module__}.{PyGAtomicDataset.__qualname__}",
            # plain dicts and lists for `fields`, `transforms` and the PyG dataset's arguments
            "_convert_": "all",
            "type_names": list(type_names),
            "r_max": float(r_max),
            "fields": dict(_plain(fields) or {}),
            "edges_cutoff": edges_cutoff,
            "transforms": _as_list(transforms or []),
        }

        def wrapped(pyg_config: Dict) -> Dict:
            return {**wrapper, "dataset": pyg_config}

        splits = []
        for split in _as_list(split_dataset or []):
            if "dataset" not in split:
                raise ValueError(
                    f"each `split_dataset` entry needs a `dataset` (a PyG dataset config with "
                    f"`_target_`) beside the split sizes, found keys {sorted(split)}"
                )
            splits.append({**split, "dataset": wrapped(split["dataset"])})

        super().__init__(
            seed=seed,
            train_dataset=[wrapped(c) for c in _as_list(train_dataset or [])],
            val_dataset=[wrapped(c) for c in _as_list(val_dataset or [])],
            test_dataset=[wrapped(c) for c in _as_list(test_dataset or [])],
            predict_dataset=[wrapped(c) for c in _as_list(predict_dataset or [])],
            split_dataset=splits,
            **kwargs,
        )
