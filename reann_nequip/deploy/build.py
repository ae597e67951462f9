"""From a nequip checkpoint or package to the TorchScript file that ``pair_reann`` and ASE load."""

import copy
import pathlib
from typing import Dict, Optional

import torch
from nequip.data import AtomicDataDict

from .._files import atomic_output, check_output_path
from .._version import __version__
from ..nn.forms import use_kernels
from ..nn.kernels import load_kernels
from .checks import check_deployable, check_metadata
from .deployed_model import EXCHANGE_METHODS, DeployedEnergyModel, DeployedTensorModel

# the layout of the deployed file; pair_reann refuses files of another format
# (2: energy models call the torch.ops.reann density kernel; 3: and its radial-function kernel;
# 4: the neighbour-block and edge-geometry kernels, radial_functions for species_gaussians)
DEPLOY_FORMAT = "4"
# every metadata entry is a plain-text extra file of the TorchScript archive
METADATA_KEYS = (
    "deploy_format",
    "model_kind",
    "output_field",
    "type_names",
    "r_max",
    "num_recursions",
    "coefficient_size",
    "interaction_range",
    "model_dtype",
    "units",
    "reann_nequip_version",
    "nequip_version",
    "torch_version",
)
_MODEL_DTYPES = ("float32", "float64")


def _checkpoint_model_config(path: pathlib.Path) -> Dict:
    """The ``model`` section of the training config saved in a checkpoint."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return dict(checkpoint["hyper_parameters"]["model"])


def load_trained_model(path: str, model_dtype: Optional[str] = None) -> torch.nn.Module:
    """The nequip ``GraphModel`` of a checkpoint (EMA weights when trained with EMA) or package.

    Args:
        path: a ``.ckpt`` checkpoint or a ``.nequip.zip`` package
        model_dtype: ``float32`` or ``float64``; ``None`` keeps the dtype the model was trained in.
            Another dtype rebuilds the model from its saved config and copies the weights.
    """
    import hydra
    from nequip.model.saved_models.load_utils import load_saved_model
    from nequip.utils.global_state import set_global_state

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint or package at `{path}`")
    if model_dtype is not None and model_dtype not in _MODEL_DTYPES:
        raise ValueError(f"`model_dtype` must be one of {_MODEL_DTYPES}, found {model_dtype!r}")
    set_global_state()
    trained = load_saved_model(str(path))
    trained_dtype = trained.metadata["model_dtype"]
    if model_dtype is None or model_dtype == trained_dtype:
        return trained

    if path.name.endswith(".nequip.zip"):
        raise ValueError(
            f"`{path}` is a nequip package of a {trained_dtype} model; packages do not keep the "
            f"builder config needed to rebuild it as {model_dtype}. Deploy its checkpoint instead, "
            f"or deploy the package as {trained_dtype}."
        )
    config = _checkpoint_model_config(path)
    if not str(config.get("_target_", "")).startswith("reann_nequip.model."):
        raise ValueError(
            f"`{path}` holds a {trained_dtype} model built by `{config.get('_target_')}`; only models "
            f"built by a reann_nequip builder can be rebuilt as {model_dtype}. Deploy it as {trained_dtype}."
        )
    config["model_dtype"] = model_dtype
    # called as nequip's training module builds models: no omegaconf containers
    rebuilt = hydra.utils.get_method(config.pop("_target_"))(**config)
    # copy_ casts each tensor to the new dtype
    rebuilt.load_state_dict(trained.state_dict())
    return rebuilt


# what a model writes → the kind of deployed file
_TENSOR_KINDS = {
    "total_dipole": "dipole",
    "transition_dipole": "transition_dipole",
    "polarizability": "polarizability",
}


def _reann_stage(graph_model: torch.nn.Module, stage: str, source: str) -> torch.nn.Module:
    """The stage named ``stage`` (e.g. ``density``) inside any reann_nequip model."""
    for name, module in graph_model.model.named_modules():
        if name.split(".")[-1] == stage:
            return module
    raise ValueError(f"`{source}` does not hold a reann_nequip model (no REANN {stage} found)")


def _model_kind(graph_model: torch.nn.Module, source: str) -> str:
    """``energy`` or the tensor kind of a trained reann_nequip model."""
    outputs = set(graph_model.irreps_out)
    kinds = [kind for field, kind in _TENSOR_KINDS.items() if field in outputs]
    if AtomicDataDict.PER_ATOM_ENERGY_KEY in outputs and not kinds:
        return "energy"
    if len(kinds) == 1:
        return kinds[0]
    raise ValueError(f"`{source}` writes none or several of energy, {', '.join(_TENSOR_KINDS)}")


def deployed_metadata(graph_model: torch.nn.Module, units: str, source: str) -> Dict[str, str]:
    """Metadata of the deployed file, read from the trained nequip model."""
    import nequip

    metadata = graph_model.metadata
    density = _reann_stage(graph_model, "density", source)
    kind = _model_kind(graph_model, source)
    num_recursions = len(density.updates)
    r_max = float(metadata["r_max"])
    output_field = {value: key for key, value in _TENSOR_KINDS.items()}.get(
        kind, AtomicDataDict.PER_ATOM_ENERGY_KEY
    )
    return {
        "deploy_format": DEPLOY_FORMAT,
        "model_kind": kind,
        "output_field": output_field,
        "type_names": metadata["type_names"],
        "r_max": repr(r_max),
        "num_recursions": str(num_recursions),
        # K: orbital coefficients per atom, what the coefficient exchange sends per ghost and step
        "coefficient_size": str(density.initial_coefficients.shape[1]),
        # an atom's output depends on every atom within (T + 1) r_max
        "interaction_range": repr((num_recursions + 1) * r_max),
        "model_dtype": metadata["model_dtype"],
        "units": units,
        "reann_nequip_version": __version__,
        "nequip_version": nequip.__version__,
        "torch_version": torch.__version__,
    }


def deploy(
    model_path: str, output_path: str, model_dtype: Optional[str] = None, units: str = "metal"
) -> Dict[str, str]:
    """Write the TorchScript file of a trained energy model; returns its metadata.

    Args:
        model_path: nequip checkpoint (``.ckpt``) or package (``.nequip.zip``)
        output_path: the deployed file (conventionally ``*.pth``)
        model_dtype: ``float32`` or ``float64`` (default: the training dtype)
        units: the LAMMPS ``units`` style of the training data (default ``metal``: eV, Å)
    """
    # before the model is loaded: never replace the checkpoint by its deployed file
    check_output_path(output_path, inputs=[model_path])
    return save_deployed(
        load_trained_model(model_path, model_dtype), output_path, units, model_path
    )


def save_deployed(
    graph_model: torch.nn.Module, output_path: str, units: str = "metal", source: str = "model"
) -> Dict[str, str]:
    """Script a nequip ``GraphModel`` of a reann_nequip model into ``output_path``; returns the
    metadata. Energy models get :class:`DeployedEnergyModel` (LAMMPS and ASE), tensor models
    ``DeployedTensorModel`` (ASE). Both run their stages' kernel forms
    (:func:`~reann_nequip.nn.use_kernels`); energy models are frozen. ``graph_model`` itself is
    left unchanged."""
    check_deployable(graph_model, units, source)
    metadata = deployed_metadata(graph_model, units, source)
    graph_model = use_kernels(copy.deepcopy(graph_model), True)
    if metadata["model_kind"] == "energy":
        # the per-atom energy part, inside the ForceStressOutput
        deployed = DeployedEnergyModel(graph_model.model.func)
    else:
        deployed = DeployedTensorModel(graph_model.model, metadata["output_field"])
    deployed = deployed.eval()
    for parameter in deployed.parameters():
        parameter.requires_grad_(False)
    scripted = torch.jit.script(deployed)
    if metadata["model_kind"] == "energy":
        # frozen, the coefficient-exchange methods kept (they share the submodules with
        # forward, so the parameters stay attributes). Freezing drops detach();
        # DeployedEnergyModel does without
        scripted = torch.jit.freeze(scripted, preserved_attrs=list(EXCHANGE_METHODS))
    # through a temporary file: a kill mid-write leaves the previous file, not a part
    with atomic_output(output_path, "wb") as stream:
        torch.jit.save(scripted, stream, _extra_files=metadata)
    return metadata


def read_metadata(path: str) -> Dict[str, str]:
    """Metadata of a deployed file; raises ``ValueError`` for files that are not one."""
    extra_files = {key: "" for key in METADATA_KEYS}
    load_kernels()
    try:
        torch.jit.load(path, map_location="cpu", _extra_files=extra_files)
    except (RuntimeError, ValueError) as error:
        if "Unknown builtin op: reann::" in str(error):
            raise ValueError(
                f"`{path}` calls a kernel that this reann_nequip's kernel library lacks: it was "
                f"deployed by another version; redeploy it with `nequip-deploy build`: {error}"
            ) from error
        raise ValueError(f"`{path}` is not a TorchScript file: {error}") from error
    # torch returns the archive's bytes, and b"" for keys the archive lacks
    metadata = {key: value.decode() for key, value in extra_files.items()}
    if metadata["deploy_format"] == "":
        raise ValueError(f"`{path}` is TorchScript but not a reann_nequip deployed model")
    check_metadata(metadata, path)
    return metadata
