"""PyTorch Geometric ``Data``/``Batch`` ↔ nequip ``AtomicDataDict``, and REANN on PyG batches.

Needs ``torch-geometric`` (``pip install reann-nequip[pyg]``), imported only when a function
here is called, so that importing this module, ``reann_nequip`` or nequip never requires it.

Fields and the PyG attributes they map to by default (``fields`` changes the names):

===================  ===================  ======================  ======================
nequip field         PyG attribute        shape in a PyG Batch    shape in nequip
===================  ===================  ======================  ======================
``pos``              ``pos``              [num_nodes, 3]          [num_nodes, 3]
``atomic_numbers``   ``z``                [num_nodes]             [num_nodes]
``forces``           ``forces``           [num_nodes, 3]          [num_nodes, 3]
``total_energy``     ``energy``           [num_graphs]            [num_graphs, 1]
``total_dipole``     ``dipole``           [num_graphs, 3]         [num_graphs, 3]
``polarizability``   ``polarizability``   [num_graphs, 3, 3]      [num_graphs, 3, 3]
``cell``             ``cell``             [num_graphs, 3, 3]      [num_graphs, 3, 3]
``pbc``              ``pbc``              [num_graphs, 3]         [num_graphs, 3]
``edge_index``       ``edge_index``       [2, num_edges]          [2, num_edges]
``edge_cell_shift``  ``edge_cell_shift``  [num_edges, 3]          [num_edges, 3]
===================  ===================  ======================  ======================

- Read from PyG, any shape with the right number of entries is accepted (an energy of shape
  [1] or [1, 1] per molecule, a polarizability of [1, 3, 3] or [1, 9]); the table gives what
  is written back.
- ``fields`` maps a nequip field to a PyG attribute name, to ``[name, column]`` for a
  per-molecule scalar stored in a column of a 2-D target (QM9's energy U0 in eV:
  ``{"total_energy": ["y", 7]}``), or to ``None`` to leave the field out. PyG's MD17 stores
  forces as ``force``: ``{"forces": "force"}``. Values are copied as they are: no unit change.
- Absent attributes are skipped, except ``pbc``, which nequip data always has: ``False`` when
  absent, and written back to PyG only beside a cell. Attributes not in the map (``smiles``,
  ``idx``, ``x``, …) are not carried. Floating-point fields become float64, nequip's data
  dtype whatever the model dtype; written back to PyG they stay float64.
- Atom types are the positions of the elements in ``type_names``, which must be element
  symbols (REANN's ``atomtype``).
- nequip 0.19 registers ``dipole`` as a *per-atom* field, so a molecule's dipole is stored as
  ``total_dipole``; it and ``polarizability`` (a symmetric Cartesian tensor) are registered with
  nequip in ``reann_nequip._keys``.
- Edges: PyG's ``edge_index`` has the neighbour (source) in row 0 and the centre (target, where
  messages are aggregated) in row 1; nequip's has the centre in row 0. Converting flips the rows
  both ways, and the edge vector is ``pos[neighbour] - pos[centre] + edge_cell_shift @ cell``.
  The neighbour list is recomputed by nequip unless ``edges_cutoff`` says that the PyG edges are
  the full radius graph at the model's ``r_max``; they are then verified (every edge a distinct
  pair within ``r_max`` in one molecule, and as many edges as such pairs) and reused. PyG's bond
  graphs (QM9) and truncated radius graphs therefore never reach the model. Periodic structures
  always get nequip's list; ``edge_cell_shift`` is written back to PyG for them only (the
  ``edge_index`` and ``edge_cell_shift`` names are fixed).
"""

import math
from typing import TYPE_CHECKING, Dict, Final, List, Mapping, Optional, Sequence, Tuple, Union

import ase.data
import torch
from nequip.data import AtomicDataDict, compute_neighborlist_

from reann_nequip._keys import POLARIZABILITY_KEY, TOTAL_DIPOLE_KEY

if TYPE_CHECKING:
    from torch_geometric.data import Batch, Data

# edge attributes, not configurable: PyG's batching offsets `edge_index` by its name
PYG_EDGE_INDEX: Final[str] = "edge_index"
PYG_EDGE_CELL_SHIFT: Final[str] = "edge_cell_shift"

DEFAULT_PYG_FIELDS: Dict[str, str] = {
    AtomicDataDict.POSITIONS_KEY: "pos",
    AtomicDataDict.ATOMIC_NUMBERS_KEY: "z",
    AtomicDataDict.FORCE_KEY: "forces",
    AtomicDataDict.TOTAL_ENERGY_KEY: "energy",
    TOTAL_DIPOLE_KEY: "dipole",
    POLARIZABILITY_KEY: "polarizability",
    AtomicDataDict.CELL_KEY: "cell",
    AtomicDataDict.PBC_KEY: "pbc",
}

# nequip field -> (one entry per "atom" or per "molecule", shape of one entry)
_FIELD_SHAPES: Dict[str, Tuple[str, Tuple[int, ...]]] = {
    AtomicDataDict.POSITIONS_KEY: ("atom", (3,)),
    AtomicDataDict.ATOMIC_NUMBERS_KEY: ("atom", ()),
    AtomicDataDict.FORCE_KEY: ("atom", (3,)),
    AtomicDataDict.TOTAL_ENERGY_KEY: ("molecule", ()),
    TOTAL_DIPOLE_KEY: ("molecule", (3,)),
    POLARIZABILITY_KEY: ("molecule", (3, 3)),
    AtomicDataDict.CELL_KEY: ("molecule", (3, 3)),
    AtomicDataDict.PBC_KEY: ("molecule", (3,)),
}

# a PyG attribute name, or [name, column] of a 2-D per-molecule target; None drops the field
FieldSpec = Optional[Union[str, Sequence]]


def require_torch_geometric():
    """``torch_geometric.data``, or an ImportError that says how to install it."""
    try:
        import torch_geometric.data
    except ImportError as error:
        raise ImportError(
            "the PyTorch Geometric bridge needs `torch-geometric`, which is not installed; "
            "install it with `pip install reann-nequip[pyg]` (or `pip install torch-geometric`)"
        ) from error
    return torch_geometric.data


def _field_map(fields: Optional[Mapping[str, FieldSpec]]) -> Dict[str, Tuple[str, Optional[int]]]:
    """The default field map updated by ``fields``: nequip field -> (PyG attribute, column)."""
    merged = {**DEFAULT_PYG_FIELDS, **(fields or {})}
    unknown = sorted(set(merged) - set(_FIELD_SHAPES))
    if unknown:
        raise ValueError(
            f"`fields` has unknown nequip fields {unknown}; allowed: {list(_FIELD_SHAPES)}"
        )
    parsed = {}
    for key, spec in merged.items():
        if spec is None:
            if key in (AtomicDataDict.POSITIONS_KEY, AtomicDataDict.ATOMIC_NUMBERS_KEY):
                raise ValueError(f"`fields.{key}` cannot be None: every molecule needs it")
            continue
        if isinstance(spec, str):
            parsed[key] = (spec, None)
        elif (
            isinstance(spec, Sequence)
            and len(spec) == 2
            and isinstance(spec[0], str)
            and isinstance(spec[1], int)
            and not isinstance(spec[1], bool)
        ):
            if _FIELD_SHAPES[key] != ("molecule", ()):
                raise ValueError(
                    f"`fields.{key}` can be [name, column] only for a per-molecule scalar "
                    f"(total_energy), found {list(spec)}"
                )
            parsed[key] = (spec[0], spec[1])
        else:
            raise ValueError(
                f"`fields.{key}` must be a PyG attribute name, [name, column] or None, "
                f"found {spec!r}"
            )
    return parsed


def _element_lookup(type_names: Sequence[str]) -> torch.Tensor:
    """Atomic number -> index in ``type_names`` (-1 for elements not among them)."""
    if len(type_names) == 0 or len(set(type_names)) != len(type_names):
        raise ValueError(f"`type_names` must be non-empty and unique, found {list(type_names)}")
    lookup = torch.full((len(ase.data.chemical_symbols),), -1, dtype=torch.long)
    for index, name in enumerate(type_names):
        if name not in ase.data.atomic_numbers or ase.data.atomic_numbers[name] == 0:
            raise ValueError(
                f"`type_names` must be element symbols to map PyG's atomic numbers, "
                f"found {name!r} in {list(type_names)}"
            )
        lookup[ase.data.atomic_numbers[name]] = index
    return lookup


def _element_name(atomic_number: int) -> str:
    if 0 < atomic_number < len(ase.data.chemical_symbols):
        return ase.data.chemical_symbols[atomic_number]
    return f"Z={atomic_number}"


def _read_field(
    value: torch.Tensor,
    key: str,
    attr: str,
    column: Optional[int],
    num_nodes: int,
    num_graphs: int,
) -> torch.Tensor:
    """One PyG attribute as the nequip field ``key``: shape checked, copied, nequip dtype."""
    per, entry = _FIELD_SHAPES[key]
    rows = num_nodes if per == "atom" else num_graphs
    value = torch.as_tensor(value)
    if column is not None:
        if value.numel() % rows != 0 or value.numel() // rows <= column:
            raise ValueError(
                f"PyG attribute `{attr}` ({key}) needs a column {column} for each of the "
                f"{rows} molecule(s), found shape {tuple(value.shape)}"
            )
        value = value.reshape(rows, -1)[:, column]
    if value.numel() != rows * math.prod(entry):
        raise ValueError(
            f"PyG attribute `{attr}` ({key}) must hold {math.prod(entry)} number(s) per {per} "
            f"for {rows} {per}(s), found shape {tuple(value.shape)}"
        )
    if key == AtomicDataDict.ATOMIC_NUMBERS_KEY:
        return value.to(dtype=torch.long, copy=True).reshape(rows)
    if key == AtomicDataDict.PBC_KEY:
        return value.to(dtype=torch.bool, copy=True).reshape(rows, 3)
    # nequip keeps per-molecule scalars as a column: total_energy is [num_graphs, 1]
    shape = (rows, *entry) if entry else (rows, 1)
    return value.to(dtype=torch.float64, copy=True).reshape(shape)


def pyg_to_atomic_data(
    data: "Data",
    type_names: Sequence[str],
    r_max: float,
    fields: Optional[Mapping[str, FieldSpec]] = None,
    edges_cutoff: Optional[float] = None,
    molecule_ids: Optional[Sequence[int]] = None,
) -> AtomicDataDict.Type:
    """A PyG molecule (``Data``) or batch of molecules (``Batch``) as a nequip ``AtomicDataDict``.

    A ``Data`` gives an unbatched dict, a ``Batch`` a batched one (``batch``, ``num_atoms``).
    The result has the mapped fields, ``atom_types`` and a neighbour list within ``r_max``, and
    shares no memory with ``data``.

    Args:
        data (Data/Batch): the molecule(s); ``pos`` and ``z`` (or their mapped names) required
        type_names (list[str]): the model's element symbols; atom type = index in this list
        r_max (float): cutoff of the neighbour list in Å, the model's ``r_max``
        fields (dict): changes to the field map, see the module docstring (default ``None``)
        edges_cutoff (float): the cutoff with which the PyG ``edge_index`` was built as a full
            radius graph; when it equals ``r_max`` and no molecule is periodic, the edges are
            verified and reused instead of recomputed (default ``None``: always recompute)
        molecule_ids (list[int]): the molecules' indices named in error messages (default their
            positions in ``data``)

    Raises:
        ValueError: an element not in ``type_names``, a molecule without atoms, non-finite
            positions, a malformed attribute, or PyG edges that fail verification; the message
            names the molecule.
    """
    pyg = require_torch_geometric()
    field_map = _field_map(fields)
    lookup = _element_lookup(type_names)

    # === molecules of the batch ===
    for key in (AtomicDataDict.POSITIONS_KEY, AtomicDataDict.ATOMIC_NUMBERS_KEY):
        if field_map[key][0] not in data:
            raise ValueError(
                f"the PyG object has no `{field_map[key][0]}` attribute ({key}); "
                f"name the right one in `fields`"
            )
    num_nodes = torch.as_tensor(data[field_map[AtomicDataDict.POSITIONS_KEY][0]]).shape[0]
    if isinstance(data, pyg.Batch):
        batch = data.batch.to(dtype=torch.long, copy=True)
        num_graphs = data.num_graphs
    else:
        batch = torch.zeros(num_nodes, dtype=torch.long)
        num_graphs = 1
    ids = list(range(num_graphs)) if molecule_ids is None else [int(i) for i in molecule_ids]
    if len(ids) != num_graphs:
        raise ValueError(f"`molecule_ids` has {len(ids)} entries for {num_graphs} molecule(s)")
    if bool((batch[1:] < batch[:-1]).any()):
        raise ValueError(
            "the PyG `batch` vector must be sorted, as `Batch.from_data_list` makes it"
        )
    counts = torch.bincount(batch, minlength=num_graphs)  # [num_graphs]
    starts = torch.cumsum(counts, 0) - counts
    if bool((counts == 0).any()):
        empty = [ids[g] for g in torch.nonzero(counts == 0).view(-1).tolist()]
        raise ValueError(f"molecule(s) {empty} have no atoms")

    # === fields ===
    out: AtomicDataDict.Type = {}
    for key, (attr, column) in field_map.items():
        if attr in data:
            out[key] = _read_field(data[attr], key, attr, column, num_nodes, num_graphs)
    pos = out[AtomicDataDict.POSITIONS_KEY]
    atomic_numbers = out[AtomicDataDict.ATOMIC_NUMBERS_KEY]

    bad_atoms = torch.nonzero(~torch.isfinite(pos).all(dim=1)).view(-1)
    if bad_atoms.numel() > 0:
        atom = int(bad_atoms[0])
        graph = int(batch[atom])
        raise ValueError(
            f"molecule {ids[graph]} has non-finite positions (atom {atom - int(starts[graph])}: "
            f"{pos[atom].tolist()}); {bad_atoms.numel()} such atom(s) in all"
        )

    known = (atomic_numbers > 0) & (atomic_numbers < lookup.numel())
    atom_types = torch.full_like(atomic_numbers, -1)
    atom_types[known] = lookup[atomic_numbers[known]]
    unknown = atom_types < 0
    if bool(unknown.any()):
        graph = int(batch[torch.nonzero(unknown).view(-1)[0]])
        in_graph = unknown & (batch == graph)
        elements = sorted({_element_name(int(z)) for z in atomic_numbers[in_graph]})
        atoms = (torch.nonzero(in_graph).view(-1) - starts[graph]).tolist()
        others = len(set(batch[unknown].tolist())) - 1
        raise ValueError(
            f"element(s) {elements} in molecule {ids[graph]} (atom(s) {atoms}) are not among "
            f"`type_names` {list(type_names)}"
            + (f"; {others} other molecule(s) too" if others else "")
            + "; add them to the model's `type_names` or leave those molecules out"
        )
    out[AtomicDataDict.ATOM_TYPE_KEY] = atom_types

    cell_attr = field_map.get(AtomicDataDict.CELL_KEY, ("cell", None))[0]
    pbc_attr = field_map.get(AtomicDataDict.PBC_KEY, ("pbc", None))[0]
    if AtomicDataDict.CELL_KEY in out and AtomicDataDict.PBC_KEY not in out:
        raise ValueError(
            f"PyG attribute `{cell_attr}` (cell) is given without `{pbc_attr}` (pbc); "
            f"give 3 booleans per molecule"
        )
    if AtomicDataDict.PBC_KEY not in out:
        # nequip's data always has pbc (its neighbour list needs it); PyG molecules may not
        out[AtomicDataDict.PBC_KEY] = torch.zeros((num_graphs, 3), dtype=torch.bool)
    periodic = bool(out[AtomicDataDict.PBC_KEY].any())
    if periodic:
        if AtomicDataDict.CELL_KEY not in out:
            raise ValueError(f"periodic molecules (`{pbc_attr}`) need a `{cell_attr}` (cell)")
        zero_cell = out[AtomicDataDict.PBC_KEY].any(dim=1) & (
            out[AtomicDataDict.CELL_KEY].abs().sum(dim=(1, 2)) == 0
        )
        if bool(zero_cell.any()):
            raise ValueError(
                f"molecule {ids[int(torch.nonzero(zero_cell)[0])]} is periodic with a zero cell"
            )

    if isinstance(data, pyg.Batch):
        out[AtomicDataDict.BATCH_KEY] = batch
        out[AtomicDataDict.NUM_NODES_KEY] = counts

    # === neighbour list ===
    reuse_edges = (
        edges_cutoff is not None
        and math.isclose(edges_cutoff, r_max, rel_tol=1e-9)
        and not periodic
        and PYG_EDGE_INDEX in data
    )
    if reuse_edges:
        # PyG: row 0 neighbour (source), row 1 centre (target); nequip: row 0 centre
        edge_index = torch.as_tensor(data[PYG_EDGE_INDEX]).to(dtype=torch.long).flip(0)
        _check_complete_neighbour_list(edge_index, pos, batch, counts, r_max, ids)
        out[AtomicDataDict.EDGE_INDEX_KEY] = edge_index
        if AtomicDataDict.CELL_KEY in out:
            out[AtomicDataDict.EDGE_CELL_SHIFT_KEY] = torch.zeros(
                (edge_index.shape[1], 3), dtype=pos.dtype
            )
    else:
        out = compute_neighborlist_(out, float(r_max))
    return out


def _check_complete_neighbour_list(
    edge_index: torch.Tensor,
    pos: torch.Tensor,
    batch: torch.Tensor,
    counts: torch.Tensor,
    r_max: float,
    ids: List[int],
) -> None:
    """Raise unless ``edge_index`` holds each ordered pair of atoms within ``r_max`` once."""
    num_nodes = pos.shape[0]
    advice = "leave `edges_cutoff` unset to have nequip build the neighbour list"
    if edge_index.numel() > 0 and (edge_index.min() < 0 or edge_index.max() >= num_nodes):
        raise ValueError(f"PyG `edge_index` refers to atoms outside 0..{num_nodes - 1}; {advice}")
    centre, neighbour = edge_index
    lengths = torch.linalg.vector_norm(pos[neighbour] - pos[centre], dim=1)  # [num_edges]
    # a repeated edge would otherwise pass the count check in place of a missing one
    pairs = centre * num_nodes + neighbour
    unique_pairs, multiplicity = torch.unique(pairs, return_counts=True)
    bad = (
        (batch[centre] != batch[neighbour])
        | (centre == neighbour)
        | (lengths > r_max)
        | torch.isin(pairs, unique_pairs[multiplicity > 1])
    )
    if bool(bad.any()):
        edge = int(torch.nonzero(bad).view(-1)[0])
        raise ValueError(
            f"PyG edge {int(neighbour[edge])} -> {int(centre[edge])} of molecule "
            f"{ids[int(batch[centre[edge]])]} is not a pair of distinct atoms of one molecule "
            f"within r_max = {r_max} listed once (length {float(lengths[edge]):.4f}); {advice}"
        )
    found = torch.bincount(batch[centre], minlength=counts.numel())  # [num_graphs]
    start = 0
    for graph, count in enumerate(counts.tolist()):
        molecule = pos[start : start + count]
        distances = torch.linalg.vector_norm(molecule[:, None] - molecule[None], dim=-1)
        expected = int((distances <= r_max).sum()) - count
        if int(found[graph]) != expected:
            raise ValueError(
                f"PyG edges of molecule {ids[graph]} are not its full neighbour list within "
                f"r_max = {r_max}: {int(found[graph])} edges for {expected} ordered atom pairs "
                f"(PyG's `radius_graph` keeps at most `max_num_neighbors`, 32 by default); "
                f"{advice}"
            )
        start += count


def atomic_data_to_pyg(
    data: AtomicDataDict.Type,
    fields: Optional[Mapping[str, FieldSpec]] = None,
    type_names: Optional[Sequence[str]] = None,
) -> Union["Data", "Batch"]:
    """A nequip ``AtomicDataDict`` as a PyG ``Data`` (unbatched) or ``Batch`` (batched).

    Per-molecule scalars become shape [1] per molecule ([num_graphs] in the batch, as PyG's
    MD17), vectors and tensors [1, 3] and [1, 3, 3]; per-atom fields keep their shape. Edges are
    written in PyG's row order (neighbour, centre), with ``edge_cell_shift`` when a structure is
    periodic. Other nequip fields (model outputs, ``atom_types``, …) are not carried.

    Args:
        data (dict): the ``AtomicDataDict``
        fields (dict): changes to the field map (names only: a ``[name, column]`` entry cannot
            be written back); default ``None``
        type_names (list[str]): element symbols of the atom types, needed only when ``data`` has
            no ``atomic_numbers`` (default ``None``)
    """
    pyg = require_torch_geometric()
    field_map = _field_map(fields)
    columns = [key for key, (_, column) in field_map.items() if column is not None and key in data]
    if columns:
        raise ValueError(
            f"`fields` entries {columns} map to a column of a PyG target and cannot be written "
            f"back; give plain attribute names"
        )

    if AtomicDataDict.ATOMIC_NUMBERS_KEY in data:
        atomic_numbers = data[AtomicDataDict.ATOMIC_NUMBERS_KEY].view(-1)
    elif type_names is not None:
        type_to_z = torch.tensor(
            [ase.data.atomic_numbers[name] for name in type_names], dtype=torch.long
        )
        atomic_numbers = type_to_z[data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)]
    else:
        raise ValueError("`data` has no `atomic_numbers`; give `type_names` to map `atom_types`")

    batched = AtomicDataDict.BATCH_KEY in data
    num_nodes = AtomicDataDict.num_nodes(data)
    counts = (
        data[AtomicDataDict.NUM_NODES_KEY]
        if batched
        else torch.tensor([num_nodes], dtype=torch.long)
    )
    batch = data[AtomicDataDict.BATCH_KEY] if batched else torch.zeros(num_nodes, dtype=torch.long)
    has_edges = AtomicDataDict.EDGE_INDEX_KEY in data
    periodic = AtomicDataDict.PBC_KEY in data and bool(data[AtomicDataDict.PBC_KEY].any())
    if has_edges:
        edge_index = data[AtomicDataDict.EDGE_INDEX_KEY]
        edge_graph = batch[edge_index[0]]  # [num_edges]

    molecules = []
    start = 0
    for graph, count in enumerate(counts.tolist()):
        attributes = {}
        for key, (attr, _) in field_map.items():
            per, entry = _FIELD_SHAPES[key]
            if key == AtomicDataDict.ATOMIC_NUMBERS_KEY:
                value = atomic_numbers
            elif key == AtomicDataDict.PBC_KEY and AtomicDataDict.CELL_KEY not in data:
                # molecules without a cell: nequip's obligatory pbc = False says nothing
                continue
            elif key in data:
                value = data[key]
            else:
                continue
            if per == "atom":
                attributes[attr] = value[start : start + count].clone()
            else:
                attributes[attr] = value[graph].reshape(1, *entry).clone()
        if has_edges:
            mask = edge_graph == graph
            attributes[PYG_EDGE_INDEX] = (edge_index[:, mask] - start).flip(0)
            if periodic:
                attributes[PYG_EDGE_CELL_SHIFT] = data[AtomicDataDict.EDGE_CELL_SHIFT_KEY][
                    mask
                ].clone()
        molecules.append(pyg.Data(**attributes))
        start += count
    return pyg.Batch.from_data_list(molecules) if batched else molecules[0]


def evaluate_pyg_batch(
    model: torch.nn.Module,
    batch: "Batch",
    fields: Optional[Mapping[str, FieldSpec]] = None,
    edges_cutoff: Optional[float] = None,
) -> Dict[str, torch.Tensor]:
    """Energies and forces of a nequip model on PyG molecules, aligned with the batch.

    The model's ``type_names``, ``r_max`` and per-edge-type cutoffs come from its metadata, so
    the neighbour list is always the one it was trained with. Works with a ``GraphModel`` from a
    builder (``ReannModel(...)``), and with what ``nequip.model.ModelFromCheckpoint`` and
    ``nequip.model.ModelFromPackage`` return (a ``ModuleDict`` holding one ``GraphModel``);
    call ``model.eval()`` first. Forces are autograd
    derivatives, so this works under ``torch.no_grad()`` too.

    Args:
        model (GraphModel/ModuleDict): the model, or a ``ModuleDict`` holding only it
        batch (Batch/Data): the molecules
        fields (dict): changes to the field map, see the module docstring (default ``None``)
        edges_cutoff (float): as in :func:`pyg_to_atomic_data` (default ``None``)

    Returns:
        dict: ``energy`` [num_graphs] and ``forces`` [num_nodes, 3], detached, in the model's
        output dtype, in the batch's molecule and atom order
    """
    # imported here: nequip.nn pulls the model code, which the data path does not need
    from nequip.data.transforms import NeighborListPruneTransform
    from nequip.nn import graph_model
    from nequip.nn.embedding.utils import cutoff_str_to_fulldict

    if isinstance(model, torch.nn.ModuleDict):
        # what ModelFromCheckpoint and ModelFromPackage return: {"sole_model": GraphModel}
        if len(model) != 1:
            raise ValueError(
                f"`model` holds the models {list(model.keys())}; pass one, e.g. `model[name]`"
            )
        (model,) = model.values()
    metadata = model.metadata
    type_names = metadata[graph_model.TYPE_NAMES_KEY].split(" ")
    r_max = float(metadata[graph_model.R_MAX_KEY])
    data = pyg_to_atomic_data(batch, type_names, r_max, fields=fields, edges_cutoff=edges_cutoff)
    per_edge_type_cutoff = metadata.get(graph_model.PER_EDGE_TYPE_CUTOFF_KEY)
    if per_edge_type_cutoff:
        prune = NeighborListPruneTransform(
            r_max=r_max,
            per_edge_type_cutoff=cutoff_str_to_fulldict(per_edge_type_cutoff, type_names),
            type_names=type_names,
        )
        data = prune(data)
    with torch.enable_grad():
        out = model(data)
    return {
        "energy": out[AtomicDataDict.TOTAL_ENERGY_KEY].detach().reshape(-1),
        "forces": out[AtomicDataDict.FORCE_KEY].detach(),
    }
