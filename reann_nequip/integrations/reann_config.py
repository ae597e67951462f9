"""A complete nequip training config equivalent to a REANN run's parameter files."""

import os
from typing import Any, Dict, List, Optional, Tuple

from reann_nequip.data.configuration import count_frames

from .reann_params import (
    NO_EQUIVALENT,
    REANN_SCHEDULE,
    UNUSED_BY_REANN,
    ReannParameters,
    data_files,
    model_options,
)

MONITORED_METRIC = "val0_epoch/weighted_sum"

# lines per frame besides the atom lines: header, three lattice rows, pbc, abprop
_FRAME_LINES = 6


def _mean_atoms_per_frame(path: str) -> float:
    """Atoms per frame of a configuration file, from its line and frame counts."""
    frames = count_frames(path)
    with open(path) as stream:
        lines = sum(1 for line in stream if line.strip())
    return (lines - _FRAME_LINES * frames) / frames


def _datasets(
    p: ReannParameters, data_dir: Optional[str], warnings: List[str]
) -> Tuple[Dict[str, Any], Dict[str, Any], Optional[float]]:
    """Train and val dataset configs (REANN's split rules) and the mean atoms per frame."""
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
        return train, val, None
    mean_atoms = _mean_atoms_per_frame(train_file)
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
    return train, val, mean_atoms


def _loss_and_metrics(
    p: ReannParameters, mean_atoms: Optional[float], warnings: List[str]
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    if p["start_table"] == 0:
        loss = {"_target_": "nequip.train.EnergyOnlyLoss", "per_atom_energy": False}
        metrics = {
            "_target_": "nequip.train.EnergyOnlyMetrics",
            "coeffs": {"total_energy_rmse": 1.0, "total_energy_mae": None},
        }
        return loss, metrics
    # REANN's loss per batch is e_ceff Σ_frames ΔE² + f Σ_components ΔF² (sums). nequip's are
    # means over frames and over components; with n atoms per frame on average the same
    # balance needs the force weight 3 n f.
    if mean_atoms is None:
        mean_atoms = 1.0
        warnings.append(
            "loss: without the data the mean number of atoms per frame is unknown; the force "
            "weight is 3 init_f instead of REANN's 3 n init_f (n atoms per frame): scale "
            "`coeffs.forces` by n"
        )
    loss = {
        "_target_": "nequip.train.EnergyForceLoss",
        "per_atom_energy": False,
        "coeffs": {
            "total_energy": float(p["e_ceff"]),
            "forces": float(3.0 * mean_atoms * p["init_f"]),
        },
    }
    metrics = {
        "_target_": "nequip.train.EnergyForceMetrics",
        "coeffs": {
            "total_energy_rmse": 1.0,
            "forces_rmse": 1.0,
            "total_energy_mae": None,
            "forces_mae": None,
        },
    }
    return loss, metrics


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
    for name, why in REANN_SCHEDULE.items():
        warnings.append(f"{p.where(name)}: `{name}`: {why}")

    train, val, mean_atoms = _datasets(p, data_dir, warnings)
    loss, metrics = _loss_and_metrics(p, mean_atoms, warnings)
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
    print_epoch = p["print_epoch"]
    patience = p["patience_epoch"] / print_epoch
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
                {
                    "_target_": "lightning.pytorch.callbacks.LearningRateMonitor",
                    "logging_interval": "epoch",
                },
            ],
        },
        "training_module": {
            "_target_": "nequip.train.EMALightningModule",
            "ema_decay": 0.999,
            "loss": loss,
            "val_metrics": metrics,
            "optimizer": {
                "_target_": "torch.optim.AdamW",
                "lr": float(p["start_lr"]),
                "weight_decay": float(p["re_ceff"]),
            },
            "lr_scheduler": {
                "scheduler": {
                    "_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau",
                    "factor": float(p["decay_factor"]),
                    # REANN: patience_epoch / print_epoch scheduler steps, one per print_epoch
                    "patience": int(patience) if float(patience).is_integer() else patience,
                    "min_lr": float(p["end_lr"]),
                },
                "monitor": MONITORED_METRIC,
                "interval": "epoch",
                "frequency": print_epoch,
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
