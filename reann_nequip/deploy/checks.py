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


# the largest values a deployed file's metadata may give (pair_reann.cpp has the same)
MAX_CUTOFF = 100.0  # Å
MAX_RECURSIONS = 64
MAX_COEFFICIENTS = 4096


def check_metadata(metadata: dict, path: str) -> None:
    """Raise ``ValueError`` naming ``path`` unless the metadata that the calculators size their
    neighbour lists and arrays from is plausible (a corrupted or edited file)."""
    try:
        type_names = metadata["type_names"].split()
        r_max = float(metadata["r_max"])
        num_recursions = int(metadata["num_recursions"])
        coefficient_size = int(metadata["coefficient_size"])
        interaction_range = float(metadata["interaction_range"])
    except ValueError as error:
        raise ValueError(f"`{path}` has unreadable metadata ({error}): redeploy it") from None
    plausible = (
        len(type_names) > 0
        and len(set(type_names)) == len(type_names)
        and 0.0 < r_max <= MAX_CUTOFF
        and 0 <= num_recursions <= MAX_RECURSIONS
        and 1 <= coefficient_size <= MAX_COEFFICIENTS
        and abs(interaction_range - (num_recursions + 1) * r_max) <= 1e-6 * interaction_range
        and metadata["model_dtype"] in ("float32", "float64")
        and metadata["units"] in LAMMPS_UNITS
    )
    if not plausible:
        shown = {key: metadata[key] for key in ("type_names", "r_max", "num_recursions")}
        raise ValueError(
            f"`{path}` has inconsistent metadata ({shown}, coefficient_size "
            f"{metadata['coefficient_size']}, interaction_range {metadata['interaction_range']}, "
            f"model_dtype {metadata['model_dtype']}, units {metadata['units']}): a corrupted or "
            "edited file? Redeploy it with `nequip-deploy build`"
        )
