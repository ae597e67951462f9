"""Models trained by the original REANN code (``REANN.pth``) as ``ReannModel`` nequip checkpoints.

REANN saves ``{"reannparam": state_dict, "optimizer": ...}`` (keys prefixed ``module.`` under DDP).
Its state dict holds, for ``atomtype`` [T elements], K = ``nwave``, M = ``norbit``:

- ``density.rs``, ``density.inta`` [T, K]: Gaussian centres and exponents per neighbour element
- ``density.params`` [T, K]: initial orbital coefficients per neighbour element
- ``density.hyper``: channel mixing, [L_max + 1, K, M] shared by all steps (v2), or
  [oc_loop + 1, L_max + 1, K, M], one per step (v1)
- ``density.cutoff`` [1], ``density.index_para`` [Σ 3^L]: buffers (checked, not imported)
- ``density.ocmod.memssage_<t>.elemental_nets.<element>.<i>...``: coefficient networks
- ``nnmod.elemental_nets.<element>.<i>...``: energy networks; v1 also ``nnmod.initpot`` [1],
  an energy per atom added to every atomic energy

Each element network is a ``Sequential``: ``0`` Linear(M → h1); ``1 … nblock`` residual blocks
whose ``resblock`` holds per hidden layer: activation (``alpha``, ``beta`` [1, width]),
LayerNorm (if ``table_norm``), Dropout (if the dropout probabilities sum to ≥ 1e-4; no
weights), Linear; then an activation and Linear(h1 → 1). PyTorch's Linear weights are
[out, in]; ours are [in, out].

REANN's atomic energy is NN_Z(ρ). Ours is NN_Z(ρ) − NN_Z(0) + shift_Z, so the import sets
shift_Z = NN_Z(0) (+ ``initpot`` for v1) and no scale: the energies are REANN's to round-off.
"""

import copy
from typing import Any, Dict, List, Optional, Tuple

import torch

from .reann_config import nequip_config
from .reann_params import ReannParameters, model_options, read_reann_parameters


class ReannStateDictError(ValueError):
    """A ``REANN.pth`` that does not match the parameter files; the message names the key."""


def load_reann_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The model weights of a ``REANN.pth`` (or a bare state dict), ``module.`` prefixes removed."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    state = saved.get("reannparam", saved) if isinstance(saved, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ReannStateDictError(
            f"{path}: expected REANN's {{'reannparam': state_dict, ...}} or a state dict of tensors"
        )
    return {key.removeprefix("module."): value for key, value in state.items()}


class _Assigner:
    """Copies REANN tensors into our state dict, checking shapes and tracking what is used."""

    def __init__(self, reann: Dict[str, torch.Tensor], ours: Dict[str, torch.Tensor], path: str):
        self.reann = reann
        self.ours = ours
        self.path = path
        self.used: set = set()
        self.assigned: set = set()

    def get(self, key: str) -> torch.Tensor:
        if key not in self.reann:
            raise ReannStateDictError(
                f"{self.path}: no `{key}`, which the para files imply (check nl/nblock/"
                "table_norm/dropout_p/oc_loop/atomtype against the run that wrote it)"
            )
        self.used.add(key)
        return self.reann[key].detach().to(torch.float64)

    def put(self, ours_key: str, value: torch.Tensor, type_index: Optional[int] = None) -> None:
        target = self.ours[ours_key]
        slot = target if type_index is None else target[type_index]
        if tuple(slot.shape) != tuple(value.shape):
            raise ReannStateDictError(
                f"{self.path}: shape {list(value.shape)} for `{ours_key}`"
                f"{'' if type_index is None else f'[{type_index}]'} where the para files give "
                f"{list(slot.shape)}"
            )
        slot.copy_(value.to(target.dtype))
        self.assigned.add(ours_key)


def _element_network(
    a: _Assigner,
    reann_prefix: str,
    ours_prefix: str,
    type_index: int,
    network: Dict[str, Any],
) -> None:
    """One element's REANN ``Sequential`` into row ``type_index`` of our ``ElementNetworks``."""
    hidden = network["hidden"]
    has_dropout = network["dropout"] != 0.0

    def linear(reann_key: str, ours_key: str):
        a.put(f"{ours_key}.weight", a.get(f"{reann_key}.weight").t(), type_index)
        a.put(f"{ours_key}.bias", a.get(f"{reann_key}.bias"), type_index)

    def activation(reann_key: str, ours_key: str):
        if network["activation"] == "silu":
            return
        for name in ("alpha", "beta"):
            a.put(f"{ours_key}.{name}", a.get(f"{reann_key}.{name}").view(-1), type_index)

    linear(f"{reann_prefix}.0", f"{ours_prefix}.input_linear")
    for block in range(network["num_blocks"]):
        index = 0
        for layer in range(len(hidden)):
            reann_block = f"{reann_prefix}.{block + 1}.resblock"
            ours_layer = f"{ours_prefix}.blocks.{block}.layers.{layer}"
            activation(f"{reann_block}.{index}", f"{ours_layer}.activation")
            index += 1
            if network["layer_norm"]:
                a.put(
                    f"{ours_layer}.norm.weight", a.get(f"{reann_block}.{index}.weight"), type_index
                )
                a.put(f"{ours_layer}.norm.bias", a.get(f"{reann_block}.{index}.bias"), type_index)
                index += 1
            if has_dropout:
                index += 1
            linear(f"{reann_block}.{index}", f"{ours_layer}.linear")
            index += 1
    last = network["num_blocks"] + 1
    activation(f"{reann_prefix}.{last}", f"{ours_prefix}.output_activation")
    linear(f"{reann_prefix}.{last + 1}", f"{ours_prefix}.output_linear")


def reann_weights_into(
    model: torch.nn.Module,
    reann: Dict[str, torch.Tensor],
    p: ReannParameters,
    options: Dict[str, Any],
    path: str,
) -> Optional[float]:
    """Copy REANN's weights into ``model`` (a ``ReannModel`` built with ``options``).

    Returns:
        v1's ``initpot`` (energy per atom added to every atom), or ``None`` for v2

    Raises:
        ReannStateDictError: a missing, unused or misshapen tensor, or a cutoff that differs
    """
    ours = {key: value.clone() for key, value in model.state_dict().items()}
    a = _Assigner(reann, ours, path)
    prefix = "model.func."
    type_names: List[str] = options["type_names"]

    cutoff = float(a.get("density.cutoff").view(-1)[0])
    if abs(cutoff - options["r_max"]) > 1e-6 * options["r_max"]:
        raise ReannStateDictError(
            f"{path}: `density.cutoff` is {cutoff} but {p.where('cutoff')} gives {options['r_max']}"
        )
    index_para = a.get("density.index_para")
    if index_para.numel() != sum(3**order for order in range(options["l_max"] + 1)):
        raise ReannStateDictError(
            f"{path}: `density.index_para` has {index_para.numel()} components, but nipsin "
            f"{options['l_max']} ({p.where('nipsin')}) gives "
            f"{sum(3**order for order in range(options['l_max'] + 1))}"
        )
    a.put(prefix + "radial_basis.centers", a.get("density.rs"))
    a.put(prefix + "radial_basis.exponents", a.get("density.inta"))
    a.put(prefix + "density.initial_coefficients", a.get("density.params"))
    hyper = a.get("density.hyper")
    a.put(prefix + "density.mixing", hyper if hyper.dim() == 4 else hyper.unsqueeze(0))

    for t, element in enumerate(type_names):
        for step in range(options["num_recursions"]):
            _element_network(
                a,
                f"density.ocmod.memssage_{step}.elemental_nets.{element}",
                f"{prefix}density.updates.{step}.network",
                t,
                options["coefficient_network"],
            )
        _element_network(
            a,
            f"nnmod.elemental_nets.{element}",
            f"{prefix}atomic_energy.network",
            t,
            options["energy_network"],
        )
    initpot = None
    if "nnmod.initpot" in reann:
        initpot = float(a.get("nnmod.initpot").view(-1)[0])
    # v1 coefficient networks carry an unused initpot buffer of their own
    a.used.update(
        key for key in reann if key.startswith("density.ocmod.") and key.endswith("initpot")
    )

    unused = sorted(set(reann) - a.used)
    if unused:
        raise ReannStateDictError(
            f"{path}: tensors {unused[:8]}{' …' if len(unused) > 8 else ''} have no place in the "
            "model the para files describe (different atomtype, oc_loop, nblock, nl or "
            "start_table?)"
        )
    parameters = {name for name, _ in model.named_parameters()}
    missing = sorted(parameters - a.assigned)
    if missing:
        raise ReannStateDictError(f"{path}: nothing in REANN.pth for {missing[:8]}")
    model.load_state_dict(ours)
    return initpot


def isolated_atom_energies(model: torch.nn.Module) -> torch.Tensor:
    """NN_Z(0) for every element Z: [num_types], the energy network at zero density."""
    readout = model.model.func.atomic_energy
    num_types = readout.all_types.shape[0]
    dtype = readout.network.input_linear.weight.dtype
    zero = torch.zeros(num_types, readout.network.input_linear.weight.shape[1], dtype=dtype)
    with torch.no_grad():
        return readout.network(zero, readout.all_types).view(-1)


def import_reann(
    pth_path: str,
    para_dir: str,
    model_dtype: Optional[str] = None,
    data_dir: Optional[str] = None,
    ema_decay: float = 0.999,
) -> Tuple[Dict[str, Any], List[str]]:
    """A nequip checkpoint (a dict for ``torch.save``) holding REANN's model, and warnings.

    The checkpoint is what ``nequip-train`` writes (an ``EMALightningModule`` with its config),
    so ``ModelFromCheckpoint``, ``nequip-package`` and ``nequip-compile`` read it, and a config
    using ``ModelFromCheckpoint`` fine-tunes it. Raw and EMA weights are both REANN's.

    Args:
        pth_path: REANN's ``REANN.pth``
        para_dir: the ``para`` directory of the run that wrote it
        model_dtype: ``float32`` or ``float64`` (default: REANN's ``dtype``)
        data_dir: REANN's data folder, recorded in the checkpoint's config for packaging and
            fine-tuning (default: ``folder`` from the para files)
        ema_decay: EMA decay recorded for fine-tuning (REANN's 0.999)
    """
    import lightning
    from hydra.utils import get_class
    from nequip.utils import get_current_code_versions
    from nequip.utils.global_state import get_latest_global_state, set_global_state

    from reann_nequip.model import ReannModel

    set_global_state()
    p = read_reann_parameters(para_dir)
    reann = load_reann_state_dict(pth_path)
    options = model_options(p)
    if model_dtype is not None:
        options["model_dtype"] = model_dtype
    if "density.hyper" not in reann:
        raise ReannStateDictError(f"{pth_path}: no `density.hyper`; is this a REANN.pth?")
    options["shared_mixing"] = reann["density.hyper"].dim() == 3

    # === weights into a model with zero shifts, then REANN's atomic energy at zero density ===
    zero_shifts = {name: 0.0 for name in options["type_names"]}
    probe = ReannModel(seed=0, per_type_energy_shifts=zero_shifts, **options)
    initpot = reann_weights_into(probe, reann, p, options, pth_path)
    probe.eval()  # no dropout
    shifts = isolated_atom_energies(probe) + (initpot or 0.0)

    # === the full training config, with the model's shifts fixed ===
    config, warnings = nequip_config(p, data_dir=data_dir)
    model_config = config["training_module"]["model"]
    model_config.update(options)
    model_config["type_names"] = list(options["type_names"])
    model_config["r_max"] = options["r_max"]
    model_config["seed"] = config["seed"]
    model_config["per_type_energy_shifts"] = {
        name: float(value) for name, value in zip(options["type_names"], shifts.tolist())
    }
    config["training_module"]["ema_decay"] = ema_decay
    module_config = _resolved(config)

    info_dict = {
        "versions": get_current_code_versions(verbose=False),
        "data": module_config["data"],
        "trainer": module_config["trainer"],
        "global_options": get_latest_global_state(),
        "runs": module_config["run"],
        "training_module": module_config["training_module"],
    }
    # built directly, not through hydra, which would try to resolve the trainer's
    # ${hydra:runtime.output_dir} outside of a run
    module_options = copy.deepcopy(module_config["training_module"])
    module_class = get_class(module_options.pop("_target_"))
    module = module_class(
        **module_options,
        num_datasets={"train": 1, "val": 1, "test": 0, "predict": 0},
        info_dict=info_dict,
    )
    graph_model = module.model["sole_model"]
    reann_weights_into(graph_model, reann, p, options, pth_path)
    with torch.no_grad():
        for ema_weight, weight in zip(module.ema.ema_weights, module.model.parameters()):
            ema_weight.copy_(weight)
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
    }
    return checkpoint, warnings


def _resolved(config: Dict[str, Any]) -> Dict[str, Any]:
    """The config with ``${...}`` references resolved; the trainer section, which refers to
    Hydra's runtime directory, stays as written."""
    from omegaconf import OmegaConf

    omega = OmegaConf.create(config)
    resolved = OmegaConf.to_container(omega, resolve=False)
    for key in ("run", "data", "training_module"):
        resolved[key] = OmegaConf.to_container(omega[key], resolve=True)
    return resolved
