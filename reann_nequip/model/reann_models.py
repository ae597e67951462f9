"""``@model_builder`` functions wiring the REANN modules into nequip models: the energy model
and the dipole, transition-dipole and polarizability models, all on the same REANN density."""

import inspect
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from nequip.data import AtomicDataDict
from nequip.model import model_builder
from nequip.nn import (
    AtomwiseReduce,
    ForceStressOutput,
    GraphModel,
    GraphModuleMixin,
    PerTypeScaleShift,
    SequentialGraphNetwork,
)
from nequip.nn.embedding import EdgeLengthNormalizer

from reann_nequip import _keys
from reann_nequip.nn import (
    AtomicScalarReadout,
    DipoleFromCharges,
    EdgeVectors,
    PolarizabilityFromGradients,
    RecursiveEmbeddedDensity,
    SpeciesGaussianBasis,
    TransitionDipoleFromHeads,
)
from reann_nequip.nn.activations import ACTIVATIONS
from reann_nequip.nn.forms import use_kernels

# REANN's `nl`, `nblock`, `activate`, `table_norm`, `dropout_p` (and their `oc_` twins), with the
# manual's widths [64, 64] rather than read.py's [128, 128]
DEFAULT_NETWORK: Dict[str, Any] = {
    "hidden": [64, 64],
    "num_blocks": 1,
    "activation": "relu_like",
    "layer_norm": True,
    "dropout": 0.0,
}


def _network_options(name: str, options: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Fill a network's options from the defaults, rejecting unknown or malformed keys."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(DEFAULT_NETWORK))
    if unknown:
        raise ValueError(f"`{name}` has unknown keys {unknown}; allowed: {sorted(DEFAULT_NETWORK)}")
    merged = {**DEFAULT_NETWORK, **options}
    merged["hidden"] = list(merged["hidden"])
    if merged["activation"] not in ACTIVATIONS:
        raise ValueError(
            f"`{name}.activation` must be one of {ACTIVATIONS}, found {merged['activation']!r}"
        )
    if len(merged["hidden"]) == 0 or any(int(h) <= 0 for h in merged["hidden"]):
        raise ValueError(
            f"`{name}.hidden` must be a non-empty list of positive widths, found {merged['hidden']}"
        )
    if not isinstance(merged["num_blocks"], int) or merged["num_blocks"] < 0:
        raise ValueError(
            f"`{name}.num_blocks` must be an integer >= 0, found {merged['num_blocks']!r}"
        )
    dropout = merged["dropout"]
    if isinstance(dropout, (int, float)):
        dropout = [float(dropout)] * len(merged["hidden"])
    dropout = [float(p) for p in dropout]
    if len(dropout) != len(merged["hidden"]) or not all(0.0 <= p < 1.0 for p in dropout):
        raise ValueError(
            f"`{name}.dropout` must be one probability in [0, 1) or one per hidden layer "
            f"({len(merged['hidden'])}), found {merged['dropout']}"
        )
    merged["dropout"] = dropout
    return merged


# the arguments every model takes: the REANN density and its hyperparameters
_DENSITY_ARGS_DOC = """
        seed (int): seed for the random initialisation
        model_dtype (str): ``float32`` or ``float64`` (REANN ``dtype``)
        type_names (list[str]): element names (REANN ``atomtype``)
        r_max (float): cutoff radius in Å (REANN ``cutoff``)
        num_gaussians (int): Gaussians per neighbour species (REANN ``nwave``; default ``8``)
        l_max (int): highest order of the Cartesian angular products (REANN ``nipsin``;
            default ``2``)
        num_orbitals (int): density width M (REANN ``norbit``; default
            ``num_gaussians (num_gaussians + 1) / 2 · (l_max + 1)``)
        num_recursions (int): orbital-coefficient refinements (REANN ``oc_loop``); ``0`` gives
            EANN (default ``1``)
        shared_mixing (bool): one channel mixing for all recursion steps as in REANN v2, or one
            per step as in v1 (default ``True``)
        coefficient_network (dict): coefficient-update networks, keys ``hidden`` (REANN
            ``oc_nl``, default ``[64, 64]``), ``num_blocks`` (``oc_nblock``, ``1``),
            ``activation`` (``oc_activate``: ``relu_like``, ``tanh_like`` or ``silu``;
            ``relu_like``), ``layer_norm`` (``oc_table_norm``, ``True``), ``dropout``
            (``oc_dropout_p``, ``0.0``)
        gaussian_centers (list): initial centres in Å, [num_types][num_gaussians] (REANN
            ``rs``) or [num_gaussians] for every species (default random in [0, r_max))
        gaussian_exponents (list): initial negative exponents in Å⁻², same shapes (REANN
            ``inta``; default random in [−1.2, −0.2))
        avg_num_neighbors (float): initial orbital coefficients are 1/avg_num_neighbors
            (REANN uses 1/``neigh_atoms``; default ``None`` gives 1)
        per_edge_type_cutoff (dict): smaller cutoffs per element pair, as in nequip
            (default ``None``)
        cpu_kernels (bool): run on the C++ kernels where the model runs on CPU, in training
            as in MD (default ``True``); ``False`` keeps the torch form everywhere. Models built
            for graph capture (``compile_mode: compile``, ``nequip-compile``) and for
            ``nequip-package`` take the torch form either way"""


def _density_network(
    r_max: float,
    type_names: Sequence[str],
    num_gaussians: int = 8,
    l_max: int = 2,
    num_orbitals: Optional[int] = None,
    num_recursions: int = 1,
    shared_mixing: bool = True,
    coefficient_network: Optional[Dict[str, Any]] = None,
    gaussian_centers: Optional[List] = None,
    gaussian_exponents: Optional[List] = None,
    avg_num_neighbors: Optional[float] = None,
    per_edge_type_cutoff: Optional[Dict[str, Union[float, Dict[str, float]]]] = None,
    cpu_kernels: bool = True,
    **unknown,
) -> Tuple[Dict[str, GraphModuleMixin], int, bool]:
    """The validated REANN density stages by name, the density width M and ``cpu_kernels``."""
    # === validate ===
    if unknown:
        allowed = [p for p in inspect.signature(_density_network).parameters if p != "unknown"]
        raise TypeError(f"unknown model arguments {sorted(unknown)}; the density takes {allowed}")
    type_names = list(type_names)
    if len(type_names) == 0 or len(set(type_names)) != len(type_names):
        raise ValueError(f"`type_names` must be non-empty and unique, found {type_names}")
    if not all(name.isalnum() for name in type_names):
        raise ValueError(f"`type_names` must be alphanumeric, found {type_names}")
    if not (isinstance(r_max, (int, float)) and math.isfinite(r_max) and r_max > 0):
        raise ValueError(f"`r_max` must be a positive number of Å, found {r_max}")
    for key, value, minimum in (
        ("num_gaussians", num_gaussians, 1),
        ("l_max", l_max, 0),
        ("num_recursions", num_recursions, 0),
    ):
        if not isinstance(value, int) or value < minimum:
            raise ValueError(f"`{key}` must be an integer >= {minimum}, found {value!r}")
    if num_orbitals is None:
        num_orbitals = num_gaussians * (num_gaussians + 1) // 2 * (l_max + 1)
    if not isinstance(num_orbitals, int) or num_orbitals < 1:
        raise ValueError(f"`num_orbitals` must be an integer >= 1, found {num_orbitals!r}")
    if avg_num_neighbors is not None and not avg_num_neighbors > 0:
        raise ValueError(f"`avg_num_neighbors` must be positive, found {avg_num_neighbors}")
    if not isinstance(cpu_kernels, bool):
        raise ValueError(f"`cpu_kernels` must be true or false, found {cpu_kernels!r}")
    coefficient_network = _network_options("coefficient_network", coefficient_network)

    # === modules ===
    edge_vectors = EdgeVectors()
    edge_length = EdgeLengthNormalizer(
        r_max=r_max,
        type_names=type_names,
        per_edge_type_cutoff=per_edge_type_cutoff,
        irreps_in=edge_vectors.irreps_out,
    )
    radial_basis = SpeciesGaussianBasis(
        type_names=type_names,
        r_max=r_max,
        num_gaussians=num_gaussians,
        centers=gaussian_centers,
        exponents=gaussian_exponents,
        irreps_in=edge_length.irreps_out,
    )
    density = RecursiveEmbeddedDensity(
        type_names=type_names,
        num_gaussians=num_gaussians,
        l_max=l_max,
        num_orbitals=num_orbitals,
        num_recursions=num_recursions,
        shared_mixing=shared_mixing,
        initial_coefficient=1.0 if avg_num_neighbors is None else 1.0 / avg_num_neighbors,
        coefficient_network=coefficient_network,
        irreps_in=radial_basis.irreps_out,
    )
    stages = {
        "edge_vectors": edge_vectors,
        "edge_length": edge_length,
        "radial_basis": radial_basis,
        "density": density,
    }
    return stages, num_orbitals, cpu_kernels


def _with_form(model: GraphModuleMixin, cpu_kernels: bool) -> GraphModuleMixin:
    """``model`` with its stages' kernel forms enabled or not: the builders' one choice of form.

    Kernels run where asked for, except in models that nequip will capture as a graph: under
    train-time ``torch.compile`` (``compile_mode: compile``) and in ``nequip-compile``, whose
    tracers cannot enter the C++ kernels, and in ``nequip-package``, whose archives stay portable
    (``enable_ReannKernels`` turns a packaged model's kernels on)."""
    from nequip.model.utils import get_current_compile_mode
    from nequip.scripts._workflow_utils import get_workflow_state

    captured = get_current_compile_mode() == "compile" or get_workflow_state() in (
        "compile",
        "package",
    )
    return use_kernels(model, cpu_kernels and not captured)


@model_builder
def ReannModel(
    r_max: float,
    type_names: Sequence[str],
    energy_network: Optional[Dict[str, Any]] = None,
    per_type_energy_scales: Optional[Union[float, Dict[str, float]]] = None,
    per_type_energy_shifts: Optional[Union[float, Dict[str, float]]] = None,
    per_type_energy_scales_trainable: bool = False,
    per_type_energy_shifts_trainable: bool = False,
    do_derivatives: bool = True,
    **density_options,
) -> GraphModel:
    stages, num_orbitals, cpu_kernels = _density_network(r_max, type_names, **density_options)
    atomic_energy = AtomicScalarReadout(
        type_names=list(type_names),
        num_orbitals=num_orbitals,
        network=_network_options("energy_network", energy_network),
        out_field=AtomicDataDict.PER_ATOM_ENERGY_KEY,
        irreps_in=stages["density"].irreps_out,
    )
    scale_shift = PerTypeScaleShift(
        type_names=list(type_names),
        field=AtomicDataDict.PER_ATOM_ENERGY_KEY,
        out_field=AtomicDataDict.PER_ATOM_ENERGY_KEY,
        scales=per_type_energy_scales,
        shifts=per_type_energy_shifts,
        scales_trainable=per_type_energy_scales_trainable,
        shifts_trainable=per_type_energy_shifts_trainable,
        irreps_in=atomic_energy.irreps_out,
    )
    total_energy = AtomwiseReduce(
        field=AtomicDataDict.PER_ATOM_ENERGY_KEY,
        out_field=AtomicDataDict.TOTAL_ENERGY_KEY,
        reduce="sum",
        irreps_in=scale_shift.irreps_out,
    )
    energy_model = SequentialGraphNetwork(
        {
            **stages,
            "atomic_energy": atomic_energy,
            "per_type_energy_scale_shift": scale_shift,
            "total_energy_sum": total_energy,
        }
    )
    return ForceStressOutput(_with_form(energy_model, cpu_kernels), do_derivatives)


ReannModel.__doc__ = f"""REANN energy model (EANN when ``num_recursions`` is 0): energies, forces and stress.

    Atomic energies come from per-element networks reading REANN's embedded density, scaled and
    shifted per element; forces and stress are exact derivatives of the total energy.

    Args:{_DENSITY_ARGS_DOC}
        energy_network (dict): energy networks, keys ``hidden`` (REANN ``nl``, default
            ``[64, 64]``), ``num_blocks`` (``nblock``, ``1``), ``activation`` (``activate``:
            ``relu_like``, ``tanh_like`` or ``silu``; ``relu_like``), ``layer_norm``
            (``table_norm``, ``True``), ``dropout`` (``dropout_p``, ``0.0``)
        per_type_energy_scales (float or dict): per-element energy scales (default ``None``)
        per_type_energy_shifts (float or dict): per-element energy shifts, the energy of an
            isolated atom (default ``None``)
        per_type_energy_scales_trainable (bool): default ``False``
        per_type_energy_shifts_trainable (bool): default ``False``
        do_derivatives (bool): compute forces and stress (default ``True``)

    Example::

        model:
          _target_: reann_nequip.model.ReannModel
          seed: 123
          model_dtype: float64
          type_names: [C, H]
          r_max: 5.0
          num_gaussians: 8
          l_max: 2
          num_recursions: 2
          energy_network: {{hidden: [64, 64], num_blocks: 1}}
          coefficient_network: {{hidden: [64, 64], num_blocks: 1}}
          avg_num_neighbors: ${{training_data_stats:num_neighbors_mean}}
          per_type_energy_shifts: {{C: -1027.6, H: -13.6}}
    """


def _scalar_heads(
    type_names: Sequence[str],
    num_orbitals: int,
    output_network: Optional[Dict[str, Any]],
    density: GraphModuleMixin,
    heads: Dict[str, Tuple[str, int]],
) -> Dict[str, GraphModuleMixin]:
    """One independent per-element network per head: ``{name: (out_field, num_scalars)}``."""
    network = _network_options("output_network", output_network)
    return {
        name: AtomicScalarReadout(
            type_names=list(type_names),
            num_orbitals=num_orbitals,
            network=network,
            out_field=out_field,
            num_scalars=num_scalars,
            irreps_in=density.irreps_out,
        )
        for name, (out_field, num_scalars) in heads.items()
    }


@model_builder
def ReannDipoleModel(
    r_max: float,
    type_names: Sequence[str],
    output_network: Optional[Dict[str, Any]] = None,
    **density_options,
) -> GraphModel:
    stages, num_orbitals, cpu_kernels = _density_network(r_max, type_names, **density_options)
    heads = _scalar_heads(
        type_names,
        num_orbitals,
        output_network,
        stages["density"],
        {"dipole_charge": (_keys.DIPOLE_CHARGE_KEY, 1)},
    )
    dipole = DipoleFromCharges(
        charge_field=_keys.DIPOLE_CHARGE_KEY,
        atomic_dipole_field=_keys.ATOMIC_DIPOLE_KEY,
        total_dipole_field=_keys.TOTAL_DIPOLE_KEY,
        irreps_in=heads["dipole_charge"].irreps_out,
    )
    return _with_form(SequentialGraphNetwork({**stages, **heads, "dipole": dipole}), cpu_kernels)


@model_builder
def ReannTransitionDipoleModel(
    r_max: float,
    type_names: Sequence[str],
    output_network: Optional[Dict[str, Any]] = None,
    **density_options,
) -> GraphModel:
    stages, num_orbitals, cpu_kernels = _density_network(r_max, type_names, **density_options)
    heads = _scalar_heads(
        type_names,
        num_orbitals,
        output_network,
        stages["density"],
        {"transition_dipole_heads": (_keys.TRANSITION_DIPOLE_HEADS_KEY, 3)},
    )
    transition_dipole = TransitionDipoleFromHeads(
        heads_field=_keys.TRANSITION_DIPOLE_HEADS_KEY,
        out_field=_keys.TRANSITION_DIPOLE_KEY,
        irreps_in=heads["transition_dipole_heads"].irreps_out,
    )
    return _with_form(
        SequentialGraphNetwork({**stages, **heads, "transition_dipole": transition_dipole}),
        cpu_kernels,
    )


@model_builder
def ReannPolarizabilityModel(
    r_max: float,
    type_names: Sequence[str],
    output_network: Optional[Dict[str, Any]] = None,
    per_type_isotropic_polarizability: Union[float, Dict[str, float]] = 0.0,
    **density_options,
) -> GraphModel:
    stages, num_orbitals, cpu_kernels = _density_network(r_max, type_names, **density_options)
    heads = _scalar_heads(
        type_names,
        num_orbitals,
        output_network,
        stages["density"],
        {
            "potential_0": (_keys.POLARIZABILITY_POTENTIAL_0_KEY, 1),
            "potential_1": (_keys.POLARIZABILITY_POTENTIAL_1_KEY, 1),
            "isotropic": (_keys.ATOMIC_ISOTROPIC_POLARIZABILITY_KEY, 1),
        },
    )
    # an isolated atom's isotropic polarizability is its (trainable) per-element shift
    isotropic_shift = PerTypeScaleShift(
        type_names=list(type_names),
        field=_keys.ATOMIC_ISOTROPIC_POLARIZABILITY_KEY,
        shifts=per_type_isotropic_polarizability,
        shifts_trainable=True,
        irreps_in=heads["isotropic"].irreps_out,
    )
    heads_model = SequentialGraphNetwork({**stages, **heads, "isotropic_shift": isotropic_shift})
    return PolarizabilityFromGradients(
        _with_form(heads_model, cpu_kernels),
        potential_0_field=_keys.POLARIZABILITY_POTENTIAL_0_KEY,
        potential_1_field=_keys.POLARIZABILITY_POTENTIAL_1_KEY,
        isotropic_field=_keys.ATOMIC_ISOTROPIC_POLARIZABILITY_KEY,
        out_field=_keys.POLARIZABILITY_KEY,
    )


_TENSOR_MODELS_DOC = f"""REANN models of tensorial properties (REANN ``start_table`` 2, 3, 4).

    All three read the REANN density (same hyperparameters as :func:`ReannModel`) through
    per-element networks that output per-atom scalars, and build the tensor from them with
    pair vectors r_ij = r_i − r_j + shift, so every output is translation invariant and defined
    in periodic cells:

    - ``ReannDipoleModel``: q_j; μ = Σ_i Σ_{{j∈N(i)}} q_j r_ij → ``total_dipole`` [num_frames, 3]
      (e·Å), per atom ``atomic_dipole`` [num_atoms, 3] (μ_i, the inner sum).
    - ``ReannTransitionDipoleModel``: (a_j, b_j, c_j) from one network; μ_a, μ_b as the dipole
      from a and b, s = Σ c; TDM = μ_a + μ_b + s (μ_a × μ_b) → ``transition_dipole``
      [num_frames, 3].
    - ``ReannPolarizabilityModel``: E0, E1, E2 from three independent networks;
      α = A + Aᵀ + (Σ E2) I with A = Σ_n ∂E0/∂r_n ⊗ ∂E1/∂r_n + Σ_pairs r ⊗ ∂E1/∂r, REANN's
      J1ᵀJ2 with its position term written with pair vectors → ``polarizability``
      [num_frames, 3, 3] (Å³), symmetric.

    Args:{_DENSITY_ARGS_DOC}
        output_network (dict): the per-element networks of the scalar heads, keys ``hidden``
            (REANN ``nl``, default ``[64, 64]``), ``num_blocks`` (``nblock``, ``1``),
            ``activation`` (``activate``; ``relu_like``), ``layer_norm`` (``table_norm``,
            ``True``), ``dropout`` (``dropout_p``, ``0.0``)
        per_type_isotropic_polarizability (float or dict): polarizability model only: initial
            isotropic polarizability of each element's isolated atom in Å³, trainable (default
            ``0.0``; the mean α_iso of the data divided by the atoms per frame starts close)

    Example::

        model:
          _target_: reann_nequip.model.ReannPolarizabilityModel
          seed: 123
          model_dtype: float64
          type_names: [C, H]
          r_max: 4.0
          num_recursions: 1
          output_network: {{hidden: [64, 64], num_blocks: 1}}
          coefficient_network: {{hidden: [64, 64], num_blocks: 1}}
          avg_num_neighbors: ${{training_data_stats:num_neighbors_mean}}
          per_type_isotropic_polarizability: 0.65
    """
ReannDipoleModel.__doc__ = _TENSOR_MODELS_DOC
ReannTransitionDipoleModel.__doc__ = _TENSOR_MODELS_DOC
ReannPolarizabilityModel.__doc__ = _TENSOR_MODELS_DOC
