"""A complete nequip training config equivalent to a REANN run's parameter files."""

import math
import os
from typing import Any, Dict, List, Optional, Tuple

from reann_nequip.data.configuration import count_frames

from .reann_params import NO_EQUIVALENT, UNUSED_BY_REANN, ReannParameters, data_files, model_options

MONITORED_METRIC = "val0_epoch/weighted_sum"


def _datasets(
    p: ReannParameters, data_dir: Optional[str], warnings: List[str]
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Train and val dataset configs, split by REANN's rules."""
    train_file, val_file = data_files(p, data_dir)
    coordinates = "fractional" if p["table_coor"] == 1 else "cartesian"
    base = {"_target_": "reann_nequip.data.ReannConfigurationDataset", "coordinates": coordinates}
    train = {**base, "file_path": train_file}
    val = {**base, "file_path": val_file}
    if not os.path.isfile(train_file):
        warnings.append(
            f"data: {train_file} not found; the config names it and {val_file} as REANN does "
            "(train/ and val/ under `folder`); pass --data DIR to point elsewhere"
        )
        return train, val
    if not os.path.isfile(val_file) or count_frames(val_file) == 0:
        # REANN: with an empty validation set, the first int(N * ratio) training frames train
        total = count_frames(train_file)
        num_train = int(total * p["ratio"])
        train["frames"] = f":{num_train}"
        val = {**train, "frames": f"{num_train}:"}
        warnings.append(
            f"data: {val_file} is missing or empty, so frames :{num_train} of {train_file} "
            f"train and {num_train}: validate (REANN's ratio {p['ratio']})"
        )
    return train, val


def _loss(p: ReannParameters) -> Dict[str, Any]:
    """REANN's loss on total energies (and forces). The coefficients written are REANN's
    starting ones; ``ReannTrainingSchedule`` replaces them every batch with REANN's summed-loss
    balance at the current learning rate."""
    if p["start_table"] == 0:
        return {"_target_": "nequip.train.EnergyOnlyLoss", "per_atom_energy": False}
    return {
        "_target_": "nequip.train.EnergyForceLoss",
        "per_atom_energy": False,
        "coeffs": {"total_energy": float(p["e_ceff"]), "forces": float(p["init_f"])},
    }


def _val_metrics(p: ReannParameters) -> Dict[str, Any]:
    """The loss again, so that ``weighted_sum`` is REANN's weighted validation loss, plus RMSEs
    (in the data's units) for reading."""
    readable = [
        {
            "name": "per_atom_energy_rmse",
            "field": {"_target_": "nequip.data.PerAtomModifier", "field": "total_energy"},
            "metric": {"_target_": "nequip.train.RootMeanSquaredError"},
        }
    ]
    if p["start_table"] == 1:
        readable.append(
            {
                "name": "forces_rmse",
                "field": "forces",
                "metric": {"_target_": "nequip.train.RootMeanSquaredError"},
            }
        )
    return {**_loss(p), "extra_metrics": readable}


def _schedule(p: ReannParameters) -> Dict[str, Any]:
    """``ReannTrainingSchedule`` with REANN's schedule parameters."""
    # REANN decays after patience_epoch / print_epoch validations without improvement, one every
    # print_epoch epochs: patience_epoch epochs. nequip's EMA validates every epoch, so the
    # patience in validations is patience_epoch (torch compares `bad > patience`: floor is exact)
    schedule = {
        "_target_": "reann_nequip.train.ReannTrainingSchedule",
        "end_lr": float(p["end_lr"]),
        "decay_factor": float(p["decay_factor"]),
        "patience": math.floor(p["patience_epoch"]),
        "energy_coeff": float(p["e_ceff"]),
    }
    if p["start_table"] == 0:
        schedule["force_metric"] = None
    else:
        schedule["initial_force_coeff"] = float(p["init_f"])
        schedule["final_force_coeff"] = float(p["final_f"])
    return schedule


def nequip_config(
    p: ReannParameters, data_dir: Optional[str] = None, seed: int = 123
) -> Tuple[Dict[str, Any], List[str]]:
    """The nequip config (a plain dict) for REANN's parameters, and warnings about what differs.

    Args:
        p: REANN's parameters
        data_dir: the folder holding ``train/configuration`` and ``val/configuration``
            (default: REANN's ``folder``, relative to the directory holding ``para``)
        seed: seed of the model initialisation and the data shuffling

    Returns:
        ``(config, warnings)``; warnings list the parameters with no equivalent
    """
    warnings: List[str] = []
    for name in UNUSED_BY_REANN:
        if name in p.source:
            warnings.append(f"{p.where(name)}: `{name}` is not read by REANN either; ignored")
    for name, why in NO_EQUIVALENT.items():
        # table_init 0 (no restart) is what a fresh nequip run does anyway
        if name in p.source and not (name == "table_init" and p[name] == 0):
            warnings.append(f"{p.where(name)}: `{name}` has no equivalent ({why})")
    if p["print_epoch"] != 1:
        warnings.append(
            f"{p.where('print_epoch')}: `print_epoch` {p['print_epoch']}: validation and the "
            "nn.err line come every epoch (nequip's EMA needs it); the plateau patience is "
            f"REANN's in epochs ({p['patience_epoch']})"
        )

    train, val = _datasets(p, data_dir, warnings)
    model = {
        "_target_": "reann_nequip.model.ReannModel",
        "seed": "${seed}",
        **model_options(p),
        # REANN puts the mean energy per atom into every energy network's output bias
        "per_type_energy_shifts": "${training_data_stats:per_atom_energy_mean}",
    }
    model["type_names"] = "${model_type_names}"
    model["r_max"] = "${cutoff_radius}"
    type_names = list(p["atomtype"])
    config = {
        "run": ["train", "val"],
        "seed": seed,
        "cutoff_radius": float(p["cutoff"]),
        "model_type_names": type_names,
        "data": {
            "_target_": "nequip.data.datamodule.NequIPDataModule",
            "seed": "${seed}",
            "train_dataset": {**train, "transforms": _transforms()},
            "val_dataset": {**val, "transforms": _transforms()},
            "train_dataloader": {
                "_target_": "torch.utils.data.DataLoader",
                "batch_size": p["batchsize_train"],
                "shuffle": True,
            },
            "val_dataloader": {
                "_target_": "torch.utils.data.DataLoader",
                "batch_size": p["batchsize_val"],
            },
            "stats_manager": {
                "_target_": "nequip.data.CommonDataStatisticsManager",
                "type_names": "${model_type_names}",
            },
        },
        "trainer": {
            "_target_": "lightning.Trainer",
            "accelerator": "auto",
            # REANN's Epoch; ReannTrainingSchedule stops earlier, when the LR reaches end_lr
            "max_epochs": p["Epoch"],
            # nequip's EMA needs validation every epoch (REANN validates every print_epoch)
            "check_val_every_n_epoch": 1,
            "log_every_n_steps": 10,
            "logger": {
                "_target_": "lightning.pytorch.loggers.CSVLogger",
                "save_dir": "${hydra:runtime.output_dir}",
                "name": "metrics",
            },
            "callbacks": [
                {
                    "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "monitor": MONITORED_METRIC,
                    "dirpath": "${hydra:runtime.output_dir}",
                    "filename": "best",
                    "save_last": True,
                },
                _schedule(p),
                {
                    "_target_": "reann_nequip.train.ReannErrorLog",
                    "file_path": "${hydra:runtime.output_dir}/nn.err",
                },
                {
                    "_target_": "lightning.pytorch.callbacks.LearningRateMonitor",
                    "logging_interval": "epoch",
                },
                # no checkpoint with non-finite weights; data and model elements must agree
                {"_target_": "reann_nequip.train.TrainingGuard"},
            ],
        },
        "training_module": {
            # REANN validates and saves EMA weights (decay 0.999)
            "_target_": "nequip.train.EMALightningModule",
            "ema_decay": 0.999,
            "loss": _loss(p),
            "val_metrics": _val_metrics(p),
            # no lr_scheduler: ReannTrainingSchedule steps its own ReduceLROnPlateau
            "optimizer": {
                "_target_": "torch.optim.AdamW",
                "lr": float(p["start_lr"]),
                "weight_decay": float(p["re_ceff"]),
            },
            "model": model,
        },
    }
    return config, warnings


def _transforms() -> List[Dict[str, Any]]:
    return [
        {
            "_target_": "reann_nequip.data.ChemicalSpeciesToAtomTypeMapper",
            "model_type_names": "${model_type_names}",
        },
        {"_target_": "nequip.data.transforms.NeighborListTransform", "r_max": "${cutoff_radius}"},
    ]
