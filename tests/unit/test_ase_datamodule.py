"""reann_nequip.data.ASEDataModule's ``transform_once``: the frames it serves are those of
transforms run on every draw, with the transforms run once per frame."""

import torch
from nequip.data import AtomicDataDict
from nequip.utils.global_state import set_global_state

from reann_nequip.data import ASEDataModule

from ..utils import REPO_ROOT

CH4 = REPO_ROOT / "examples" / "ch4" / "ch4_b3lyp_augccpvdz.xyz"


def datamodule(transform_once):
    module = ASEDataModule(
        seed=1,
        split_dataset={"file_path": str(CH4), "train": 40, "val": 10, "test": 450},
        exclude_keys=["dipole"],
        transforms=[
            {
                "_target_": "reann_nequip.data.ChemicalSpeciesToAtomTypeMapper",
                "model_type_names": ["C", "H"],
            },
            {"_target_": "nequip.data.transforms.NeighborListTransform", "r_max": 4.0},
        ],
        transform_once=transform_once,
    )
    module.setup("fit")
    return module


def test_transforming_once_serves_the_same_frames():
    set_global_state()
    every_draw, once = datamodule(False), datamodule(True)
    (base,) = {dataset.dataset for dataset in once.train_dataset}
    assert base.transforms == [], "the transforms should have run at setup"
    for name in ("train_dataset", "val_dataset"):
        for subset_a, subset_b in zip(getattr(every_draw, name), getattr(once, name)):
            assert len(subset_a) == len(subset_b) > 0
            for index in range(len(subset_a)):
                a, b = subset_a[index], subset_b[index]
                assert a.keys() == b.keys()
                assert AtomicDataDict.EDGE_INDEX_KEY in b
                for key in a:
                    assert torch.equal(a[key], b[key]), (name, index, key)
