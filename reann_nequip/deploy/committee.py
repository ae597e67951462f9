"""Committees of deployed models: which files fit together, and how far apart their predictions lie.

The model deviation follows DeePMD-kit's definitions (``dp model-devi``, ``pair_style deepmd
... out_freq``), which ``pair_style reann`` also writes, so that active-learning drivers written
for DeePMD (DP-GEN and the like) read our files unchanged. Over the M models of a committee:

- force deviation of atom i: sqrt(⟨‖F_i − ⟨F_i⟩‖²⟩), with ⟨·⟩ the mean over the models;
  ``max_devi_f``, ``min_devi_f`` and ``avg_devi_f`` are its maximum, minimum and mean over atoms;
- virial: the population standard deviation of each of the 9 components of W / N (N atoms);
  ``max_devi_v``, ``min_devi_v`` and ``avg_devi_v`` are their maximum, minimum and root mean square;
- ``devi_e``: the population standard deviation of E / N.
"""

from typing import Dict, Sequence

import numpy as np

# the columns of a model deviation file: DeePMD's, then devi_e (as ``dp model-devi`` writes it)
DEVIATION_COLUMNS = (
    "step",
    "max_devi_v",
    "min_devi_v",
    "avg_devi_v",
    "max_devi_f",
    "min_devi_f",
    "avg_devi_f",
    "devi_e",
)
# what the models of a committee must share, as (metadata key, what error messages call it)
_SHARED_METADATA = (
    ("type_names", "elements"),
    ("r_max", "cutoff r_max"),
    ("num_recursions", "recursions"),
    ("units", "units"),
    ("model_dtype", "dtype"),
)


def check_committee(paths: Sequence[str], metadata: Sequence[Dict[str, str]]) -> None:
    """Raise ``ValueError`` unless the deployed files ``paths`` (with their ``metadata``, from
    :func:`~reann_nequip.deploy.read_metadata`) can form a committee: the same elements in the
    same order, cutoff, recursions, units and dtype. The message names both files and every
    difference."""
    for path, other in zip(paths[1:], metadata[1:]):
        differences = [
            f"{name} `{metadata[0][key]}` vs `{other[key]}`"
            for key, name in _SHARED_METADATA
            if metadata[0][key] != other[key]
        ]
        if differences:
            raise ValueError(
                f"committee files `{paths[0]}` and `{path}` differ in {', '.join(differences)}; "
                "the models of a committee need the same elements (in the same order), cutoff, "
                "recursions, units and dtype"
            )


def force_deviation(forces: np.ndarray) -> np.ndarray:
    """Per-atom force deviation [..., N] (eV/Å) from the models' forces [M, ..., N, 3] (eV/Å):
    sqrt(⟨‖F_i − ⟨F_i⟩‖²⟩) over the models (axis 0)."""
    forces = np.asarray(forces, dtype=np.float64)
    return np.sqrt(np.square(forces - forces.mean(axis=0)).sum(axis=-1).mean(axis=0))


def read_deviation_file(path: str) -> Dict[str, np.ndarray]:
    """The columns of a model deviation file by name, each [rows] (``step`` as int64).

    Reads ``pair_style reann``'s files, DeePMD's (7 columns, no ``devi_e``) and ``dp
    model-devi``'s (a system name on a first comment line): lines starting with ``#`` are
    comments, and the columns are DeePMD's in DeePMD's order, as DP-GEN reads them.
    """
    try:
        table = np.loadtxt(path, comments="#", ndmin=2)
    except (OSError, ValueError) as error:
        raise ValueError(f"`{path}` is not a readable model deviation file: {error}") from None
    if table.shape[1] not in (len(DEVIATION_COLUMNS) - 1, len(DEVIATION_COLUMNS)):
        raise ValueError(
            f"`{path}` has {table.shape[1]} columns; a model deviation file has "
            f"{len(DEVIATION_COLUMNS) - 1} or {len(DEVIATION_COLUMNS)}: {' '.join(DEVIATION_COLUMNS)}"
        )
    columns = {
        name: table[:, index] for index, name in enumerate(DEVIATION_COLUMNS[: table.shape[1]])
    }
    columns["step"] = columns["step"].astype(np.int64)
    return columns
