"""What ``nequip-deploy build`` refuses before it writes a file that LAMMPS or ASE would run."""

import itertools

import torch

# LAMMPS' `units` styles (https://docs.lammps.org/units.html); pair_style reann requires the
# deployed style of the input, so any other string would make the file unusable
LAMMPS_UNITS = ("lj", "real", "metal", "si", "cgs", "electron", "micro", "nano")


def check_deployable(graph_model: torch.nn.Module, units: str, source: str) -> None:
    """Raise ``ValueError`` for an unknown ``units`` style or a model (of ``source``) with a
    non-finite parameter or buffer, naming it: such a model runs and returns NaN energies."""
    if units not in LAMMPS_UNITS:
        raise ValueError(
            f"`units` must be a LAMMPS units style ({' '.join(LAMMPS_UNITS)}), the style of the "
            f"training data, found {units!r}"
        )
    for name, tensor in itertools.chain(
        graph_model.named_parameters(), graph_model.named_buffers()
    ):
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            count = int((~tensor.isfinite()).sum())
            raise ValueError(
                f"`{source}` holds non-finite weights: {count} of the {tensor.numel()} values of "
                f"`{name}` are NaN or infinite (a diverged training); deploy an earlier checkpoint"
            )
