"""REANN's parameter files (``para/input_nn``, ``para/input_density``) read as data, and their
nequip equivalents.

REANN ``exec``s every line of these files. Here each line must be ``name = value`` with a Python
literal value (numbers, strings, booleans, lists), parsed by :func:`ast.literal_eval`; nothing is
executed. As in REANN, text after ``#`` is a comment, ``input_nn`` is read before
``input_density`` and either file may set any parameter.
"""

import ast
import dataclasses
import math
import os
import re
from typing import Any, Dict, List, Optional, Tuple

# the files of REANN's `para` directory, in the order REANN reads them
PARAMETER_FILES = ("input_nn", "input_density")

# REANN's defaults (reann/src/read.py); `atomtype` and `neigh_atoms` have none
REANN_DEFAULTS: Dict[str, Any] = {
    # input_nn
    "start_table": 0,
    "table_coor": 0,
    "table_init": 0,
    "nblock": 1,
    "ratio": 0.9,
    "Epoch": 10000,
    "patience_epoch": 100,
    "decay_factor": 0.5,
    "print_epoch": 1,
    "start_lr": 0.001,
    "end_lr": 1e-5,
    "re_ceff": 0.0,
    "batchsize_train": 32,
    "batchsize_val": 256,
    "e_ceff": 0.1,
    "init_f": 10,
    "final_f": 0.5,
    "nl": [128, 128],
    "dropout_p": [0.0, 0.0],
    "activate": "Relu_like",
    "queue_size": 10,
    "table_norm": True,
    "find_unused": False,
    "oc_loop": 1,
    "oc_nl": [128, 128],
    "oc_nblock": 1,
    "oc_dropout_p": [0.0, 0.0],
    "oc_activate": "Relu_like",
    "oc_table_norm": True,
    "DDP_backend": "nccl",
    "folder": "./",
    "dtype": "float32",
    "norbit": None,
    # input_density
    "nipsin": 2,
    "cutoff": 5.0,
    "nwave": 8,
    "atomtype": None,
    "neigh_atoms": None,
    "rs": None,
    "inta": None,
}
REQUIRED = ("atomtype", "neigh_atoms")

# names found in REANN's shipped inputs that REANN itself never reads
UNUSED_BY_REANN = ("nkpoint", "Find_unused", "batchsize", "floder", "batchsize_test")

# parameters with no nequip equivalent, and why
NO_EQUIVALENT = {
    "table_init": "restarts from REANN.pth: use `reann-nequip import` and nequip's "
    "ModelFromCheckpoint, or nequip-train's `ckpt_path`",
    "queue_size": "REANN's CUDA prefetch queue; nequip uses torch DataLoaders "
    "(`num_workers` in the dataloader sections)",
    "find_unused": "DDP option; Lightning chooses its DDP strategy (`trainer.strategy`)",
    "DDP_backend": "Lightning chooses the DDP backend",
}

ACTIVATIONS = {"Relu_like": "relu_like", "Tanh_like": "tanh_like"}

_ASSIGNMENT = re.compile(r"^([A-Za-z_]\w*)\s*=(.*)$")


class ReannParameterError(ValueError):
    """A REANN parameter file that cannot be read as data; the message names file and line."""


@dataclasses.dataclass
class ReannParameters:
    """REANN's parameters after reading both files, REANN's defaults filled in.

    Attributes:
        values: every parameter by name
        source: ``"file, line N"`` for each parameter the files set
        para_dir: the ``para`` directory read
    """

    values: Dict[str, Any]
    source: Dict[str, str]
    para_dir: str

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def where(self, name: str) -> str:
        return self.source.get(name, "REANN's default")


def parse_parameter_file(path: str) -> List[Tuple[str, Any, int]]:
    """``(name, value, line)`` for every assignment of a REANN parameter file, in file order.

    Raises:
        ReannParameterError: a line that is not ``name = <Python literal>``, or an unknown name
    """
    assignments = []
    with open(path) as stream:
        for number, raw in enumerate(stream, start=1):
            text = raw.split("#", 1)[0].strip()
            if not text:
                continue
            match = _ASSIGNMENT.match(text)
            if match is None:
                raise ReannParameterError(
                    f"{path}, line {number}: expected `name = value`, found {text!r}"
                )
            name, expression = match.group(1), match.group(2).strip()
            if name not in REANN_DEFAULTS and name not in UNUSED_BY_REANN:
                raise ReannParameterError(
                    f"{path}, line {number}: unknown REANN parameter `{name}`; known: "
                    f"{', '.join(sorted(REANN_DEFAULTS))}"
                )
            try:
                value = ast.literal_eval(expression)
            except (ValueError, SyntaxError):
                raise ReannParameterError(
                    f"{path}, line {number}: the value of `{name}` must be a Python literal "
                    f"(number, string, boolean or list; REANN's files are not executed here), "
                    f"found {expression!r}"
                ) from None
            assignments.append((name, value, number))
    return assignments


def read_reann_parameters(para_dir: str) -> ReannParameters:
    """Read ``input_nn`` then ``input_density`` from ``para_dir`` (REANN's order), check types.

    Raises:
        ReannParameterError: a missing file, malformed line, unknown name, a required parameter
            missing, or a value of the wrong kind
    """
    values = dict(REANN_DEFAULTS)
    source: Dict[str, str] = {}
    for file_name in PARAMETER_FILES:
        path = os.path.join(para_dir, file_name)
        if not os.path.isfile(path):
            raise ReannParameterError(f"{path} not found: REANN's para directory holds {file_name}")
        for name, value, line in parse_parameter_file(path):
            values[name] = value
            source[name] = f"{path}, line {line}"
    for name in REQUIRED:
        if values[name] is None:
            raise ReannParameterError(
                f"`{name}` is required and set in neither {para_dir}/input_nn nor "
                f"{para_dir}/input_density"
            )
    parameters = ReannParameters(values, source, para_dir)
    _check_kinds(parameters)
    return parameters


def _check_kinds(p: ReannParameters) -> None:
    def fail(name: str, expected: str):
        raise ReannParameterError(
            f"{p.where(name)}: `{name}` must be {expected}, found {p[name]!r}"
        )

    def is_int(value):
        return isinstance(value, int) and not isinstance(value, bool)

    for name in ("start_table", "table_coor", "nblock", "oc_nblock", "oc_loop", "nipsin"):
        if not is_int(p[name]) or p[name] < 0:
            fail(name, "an integer >= 0")
    for name in ("Epoch", "print_epoch", "batchsize_train", "batchsize_val", "nwave"):
        if not is_int(p[name]) or p[name] < 1:
            fail(name, "an integer >= 1")
    positive = ("start_lr", "end_lr", "cutoff", "patience_epoch", "neigh_atoms", "decay_factor")
    for name in positive + ("e_ceff", "init_f", "final_f", "re_ceff", "ratio"):
        value = p[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(name, "a number")
        if not math.isfinite(value) or value < 0 or (name in positive and value == 0):
            fail(name, "a positive number" if name in positive else "a number >= 0")
    for name in ("nl", "oc_nl"):
        if not (
            isinstance(p[name], list) and p[name] and all(is_int(h) and h > 0 for h in p[name])
        ):
            fail(name, "a non-empty list of positive integer widths")
    for name in ("dropout_p", "oc_dropout_p"):
        if not isinstance(p[name], list) or not all(
            isinstance(v, (int, float)) and 0 <= v < 1 for v in p[name]
        ):
            fail(name, "a list of probabilities in [0, 1)")
    for name in ("activate", "oc_activate"):
        if p[name] not in ACTIVATIONS:
            fail(name, f"one of {sorted(ACTIVATIONS)}")
    for name in ("table_norm", "oc_table_norm"):
        if not isinstance(p[name], bool):
            fail(name, "True or False")
    if p["table_coor"] not in (0, 1):
        fail("table_coor", "0 (Cartesian) or 1 (fractional)")
    if p["dtype"] not in ("float32", "float64"):
        fail("dtype", "'float32' or 'float64'")
    if not (isinstance(p["atomtype"], list) and p["atomtype"]) or not all(
        isinstance(t, str) for t in p["atomtype"]
    ):
        fail("atomtype", "a non-empty list of element symbols")
    if p["norbit"] is not None and (not is_int(p["norbit"]) or p["norbit"] < 1):
        fail("norbit", "None or an integer >= 1")
    if not isinstance(p["folder"], str):
        fail("folder", "a string")
    if (p["rs"] is None) != (p["inta"] is None):
        fail("rs" if p["rs"] is None else "inta", "given together with `inta`/`rs`")


def _network(p: ReannParameters, prefix: str) -> Dict[str, Any]:
    """REANN's nl/nblock/activate/table_norm/dropout_p (or oc_*) as a ReannModel network dict."""
    hidden = list(p[prefix + "nl"])
    dropout = [float(v) for v in p[prefix + "dropout_p"]]
    # REANN applies dropout only when the probabilities sum to at least 1e-4, layer i taking p[i]
    if sum(dropout) >= 1e-4:
        if len(dropout) < len(hidden):
            raise ReannParameterError(
                f"{p.where(prefix + 'dropout_p')}: `{prefix}dropout_p` needs one probability "
                f"per hidden layer of `{prefix}nl` ({len(hidden)}), found {len(dropout)}"
            )
        dropout = dropout[: len(hidden)]
    else:
        dropout = 0.0
    return {
        "hidden": hidden,
        "num_blocks": p[prefix + "nblock"],
        "activation": ACTIVATIONS[p[prefix + "activate"]],
        "layer_norm": p[prefix + "table_norm"],
        "dropout": dropout,
    }


def model_options(p: ReannParameters) -> Dict[str, Any]:
    """``ReannModel`` arguments equivalent to REANN's parameters (without energy shifts).

    ``nipsin`` is REANN's highest Cartesian order L_max (REANN adds 1 internally to get the
    number of orders), so ``l_max = nipsin``.
    """
    if p["start_table"] > 1:
        raise ReannParameterError(
            f"{p.where('start_table')}: start_table {p['start_table']} (dipole, transition "
            "dipole or polarizability) is not supported: ReannModel fits energies and forces "
            "(start_table 0 or 1)"
        )
    options: Dict[str, Any] = {
        "model_dtype": p["dtype"],
        "type_names": list(p["atomtype"]),
        "r_max": float(p["cutoff"]),
        "num_gaussians": p["nwave"],
        "l_max": p["nipsin"],
        "num_recursions": p["oc_loop"],
        "shared_mixing": True,
        "energy_network": _network(p, ""),
        "coefficient_network": _network(p, "oc_"),
        # REANN starts every orbital coefficient at 1/neigh_atoms
        "avg_num_neighbors": float(p["neigh_atoms"]),
    }
    if p["norbit"] is not None:
        options["num_orbitals"] = p["norbit"]
    if p["rs"] is not None:
        shape = (len(p["atomtype"]), None)
        for name in ("rs", "inta"):
            rows = p[name]
            if not isinstance(rows, list) or len(rows) != shape[0]:
                raise ReannParameterError(
                    f"{p.where(name)}: `{name}` must have one row per element of atomtype "
                    f"({shape[0]}), found {rows!r}"
                )
        # REANN takes nwave from the shape of rs
        options["num_gaussians"] = len(p["rs"][0])
        options["gaussian_centers"] = [[float(v) for v in row] for row in p["rs"]]
        options["gaussian_exponents"] = [[float(v) for v in row] for row in p["inta"]]
    return options


def data_files(p: ReannParameters, data_dir: Optional[str]) -> Tuple[str, str]:
    """``(train, val)`` configuration files: ``data_dir`` or REANN's ``folder`` (relative to the
    directory holding ``para``), then ``train/configuration`` and ``val/configuration``."""
    if data_dir is None:
        run_dir = os.path.dirname(os.path.abspath(p.para_dir))
        data_dir = os.path.join(run_dir, p["folder"])
    data_dir = os.path.abspath(data_dir)
    return (
        os.path.join(data_dir, "train", "configuration"),
        os.path.join(data_dir, "val", "configuration"),
    )
