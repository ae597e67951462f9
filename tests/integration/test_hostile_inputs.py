"""Hostile inputs (issue 27): whatever a user gets wrong ends in an error that names the file,
frame, atom or step, with a non-zero exit, and nothing wrong or partial is written.

One table, one row per case: how the bad input is made, the call or command that must refuse
it, and the error it must give (a regular expression). The rows cover the defects fixed for
issue 27 and the inputs refused before it, so that none regresses. The tests after the table
check what an error message cannot show: files left intact, checkpoints kept finite, and
vesin's crash that the data checks keep away.
"""

import contextlib
import dataclasses
import io
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import types
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import ase.io
import lightning
import numpy as np
import pytest
import torch
import yaml
from ase.build import molecule
from nequip.data import from_ase
from nequip.utils.global_state import set_global_state

from reann_nequip._files import atomic_output
from reann_nequip._limits import MAX_EXTENT
from reann_nequip.cli import main as reann_main
from reann_nequip.cli.nequip_deploy import main as deploy_main
from reann_nequip.data import (
    ASEDataModule,
    ChemicalSpeciesToAtomTypeMapper,
    ReannConfigurationDataset,
    iter_configuration,
    write_configuration,
)
from reann_nequip.deploy import read_metadata, save_deployed
from reann_nequip.integrations.ase import ReannCalculator
from reann_nequip.model import ReannModel
from reann_nequip.train import TrainingGuard

from ..utils import REPO_ROOT, rewritten_archive, run_nequip_train, with_unknown_kernel
from .test_deploy import triclinic_frame, water_model
from .test_reann_import import reann_state_dict, write_para

CH4 = REPO_ROOT / "examples" / "ch4" / "ch4_b3lyp_augccpvdz.xyz"
TUTORIAL = REPO_ROOT / "configs" / "reann_ch4.yaml"
# the tutorial config shrunk to a tiny model, one epoch, training only
TINY = (
    "trainer.max_epochs=1",
    "training_module.model.num_gaussians=4",
    "training_module.model.energy_network.hidden=[8]",
    "training_module.model.coefficient_network.hidden=[8]",
    "run=[train]",
)

Inputs = Dict[str, Any]
Fixture = Callable[[str], Any]  # pytest's request.getfixturevalue


@pytest.fixture(scope="module", autouse=True)
def global_state():
    set_global_state()


@dataclasses.dataclass
class Case:
    """One hostile input.

    Attributes:
        name: the test id
        make: writes the bad input under a fresh directory (``fixture`` gives pytest fixtures)
            and returns what ``run`` needs, by name
        run: the call or command that must refuse it; returns the error text
        error: regular expression the error text must match
        marks: pytest marks (``slow``)
    """

    name: str
    make: Callable[[pathlib.Path, Fixture], Inputs]
    run: Callable[[Inputs], str]
    error: str
    marks: Sequence[Any] = ()


# === runners: the call or command of a row, returning its error text ===


def call(function: Callable[[Inputs], Any]) -> Callable[[Inputs], str]:
    """``function(inputs)`` must raise; the error text is the exception's type and message."""

    def run(inputs: Inputs) -> str:
        try:
            function(inputs)
        except Exception as error:
            return f"{type(error).__name__}: {error}"
        raise AssertionError("no error was raised")

    return run


def cli(main: Callable[[Sequence[str]], int], *argv: str) -> Callable[[Inputs], str]:
    """A command-line tool run in this process, ``{name}`` in ``argv`` filled from the inputs; it
    must exit with 2, and its standard error is the error text."""

    def run(inputs: Inputs) -> str:
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            code = main([arg.format(**inputs) for arg in argv])
        assert code == 2, f"exit code {code}: {stderr.getvalue()}"
        return stderr.getvalue()

    return run


def nequip_train(*args: str) -> Callable[[Inputs], str]:
    """``nequip-train ARGS`` in its own process, ``{name}`` filled from the inputs; it must end
    with an error, neither success nor a signal (tests.utils.run_nequip_train)."""

    def run(inputs: Inputs) -> str:
        args_filled = [arg.format(**inputs) for arg in args]
        return run_nequip_train(*args_filled, check=False, python_path=True).stderr

    return run


def read_reann(inputs: Inputs) -> None:
    list(iter_configuration(inputs["path"], coordinates=inputs.get("coordinates", "cartesian")))


def set_up_ase_data(inputs: Inputs) -> None:
    ase_datamodule(inputs["path"], ["C", "H"]).setup("fit")


# === makers: the bad inputs ===

# one periodic water-like frame (pbc 1 1 0), atoms 1.5 Å apart, with forces and an energy
FRAME = [
    "point= 1",
    "10.0 0.0 0.0",
    "0.0 10.0 0.0",
    "0.0 0.0 10.0",
    "pbc 1 1 0",
    "O 15.999 1.0 2.0 3.0 0.5 -0.5 0.0",
    "H 1.008 2.5 2.0 3.0 -0.5 0.5 0.0",
    "abprop: -12.5",
]


def reann_text(changes: Dict[int, Optional[str]]) -> str:
    """Two frames of FRAME, lines (1-based) of the second replaced; ``None`` cuts the file there."""
    lines = FRAME + FRAME
    for number, text in sorted(changes.items(), reverse=True):
        if text is None:
            del lines[len(FRAME) + number - 1 :]
        else:
            lines[len(FRAME) + number - 1] = text
    return "\n".join(lines) + "\n"


def reann_file(
    changes: Optional[Dict[int, Optional[str]]] = None,
    text: Optional[str] = None,
    data: Optional[bytes] = None,
    coordinates: str = "cartesian",
    name: str = "configuration",
) -> Callable[[pathlib.Path, Fixture], Inputs]:
    """A ``configuration`` file: FRAME twice with ``changes`` to the second, or ``text``, or
    raw bytes ``data``."""

    def make(tmp_path: pathlib.Path, fixture: Fixture) -> Inputs:
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        else:
            path.write_text(text if text is not None else reann_text(changes or {}))
        return {"path": path, "coordinates": coordinates}

    return make


def ch4_frames(change: Callable[[ase.Atoms], None]) -> Callable[[pathlib.Path, Fixture], Inputs]:
    """The shipped CH4 file (500 frames, as the tutorial config splits it) with frame 7 changed
    by ``change``, as extxyz."""

    def make(tmp_path: pathlib.Path, fixture: Fixture) -> Inputs:
        frames = ase.io.read(CH4, ":")
        change(frames[7])
        path = tmp_path / "ch4.xyz"
        ase.io.write(path, frames)
        return {"path": path, "run_dir": tmp_path / "run"}

    return make


def set_position(atom: int, position: Sequence[float]) -> Callable[[ase.Atoms], None]:
    def change(atoms: ase.Atoms) -> None:
        atoms.positions[atom] = position

    return change


def coincide(atoms: ase.Atoms) -> None:
    atoms.positions[1] = atoms.positions[0]


def set_result(name: str, value: Any) -> Callable[[ase.Atoms], None]:
    def change(atoms: ase.Atoms) -> None:
        atoms.calc.results[name] = value

    return change


def nan_force(atoms: ase.Atoms) -> None:
    atoms.calc.results["forces"][3, 1] = np.nan


def ase_datamodule(path: pathlib.Path, type_names: Sequence[str]) -> ASEDataModule:
    """The tutorial config's data module on ``path`` (500 frames)."""
    return ASEDataModule(
        seed=1,
        split_dataset={"file_path": str(path), "train": 400, "val": 50, "test": 50},
        transforms=[ChemicalSpeciesToAtomTypeMapper(model_type_names=list(type_names))],
        exclude_keys=["dipole"],
    )


def reann_format_run(tmp_path: pathlib.Path, fixture: Fixture) -> Inputs:
    """The issue's first case: 60 CH4 frames as a REANN ``configuration`` file whose frame 7
    has two coincident atoms, and the tutorial config reading it with ReannConfigurationDataset."""
    frames = ase.io.read(CH4, ":60")
    for atoms in frames:
        atoms.cell = np.eye(3) * 30.0  # REANN's format needs a cell: a box
    coincide(frames[7])
    data = tmp_path / "configuration"
    write_configuration(data, frames, coordinates="cartesian")
    config = yaml.safe_load(TUTORIAL.read_text())
    section = config["data"]
    dataset = {
        "_target_": "reann_nequip.data.ReannConfigurationDataset",
        "file_path": str(data),
        "coordinates": "cartesian",
        "transforms": section.pop("transforms"),
    }
    del section["exclude_keys"], section["transform_once"]
    section["_target_"] = "nequip.data.datamodule.NequIPDataModule"
    section["split_dataset"] = {"dataset": dataset, "train": 40, "val": 10, "test": 10}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return {"config": path, "run_dir": tmp_path / "run"}


def guard_and_trainer(tmp_path: pathlib.Path, fixture: Fixture) -> Inputs:
    trainer = lightning.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    return {"guard": TrainingGuard(), "trainer": trainer}


def resumed_with_other_elements(tmp_path: pathlib.Path, fixture: Fixture) -> Inputs:
    """What nequip's resume sets up: the data of a config of other elements ([O, C, H]) and the
    model of a [C, H] checkpoint."""
    datamodule = ase_datamodule(CH4, ["O", "C", "H"])
    datamodule.setup("fit")
    model = types.SimpleNamespace(type_names=["C", "H"])
    return {
        "guard": TrainingGuard(),
        "trainer": types.SimpleNamespace(callbacks=[], datamodule=datamodule),
        "module": types.SimpleNamespace(model={"sole_model": model}),
    }


def trained_run(tmp_path: pathlib.Path, fixture: Fixture) -> Inputs:
    checkpoint = fixture("ch4_checkpoint")
    return {"checkpoint": checkpoint.parent / "last.ckpt", "run_dir": tmp_path / "run"}


@pytest.fixture(scope="module")
def imported_checkpoint(tmp_path_factory) -> pathlib.Path:
    """A tiny H/C/O REANN model imported from a REANN state dict (no training: seconds)."""
    root = tmp_path_factory.mktemp("imported")
    write_para(root / "para", [4], [3], 1, 1, True, [0.0, 0.0])
    torch.save({"reannparam": reann_state_dict(2, [4], [3], 1, 1, True, False, "v2")}, root / "p")
    checkpoint = root / "tiny.ckpt"
    argv = ["import", str(root / "p"), "--para", str(root / "para"), "-o", str(checkpoint)]
    assert reann_main(argv + ["--data", str(root)]) == 0
    return checkpoint


@pytest.fixture(scope="module")
def deployed_water(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("deployed") / "water.pth"
    save_deployed(water_model(), str(path))
    return path


@pytest.fixture
def read_only() -> Callable[[pathlib.Path], pathlib.Path]:
    """Makes a file or directory read-only for the test: its permissions, and for root (whom
    permissions do not stop) the immutable attribute; skips the test where neither works."""
    made: List[Tuple[pathlib.Path, bool]] = []

    def make(path: pathlib.Path) -> pathlib.Path:
        path.chmod(0o555 if path.is_dir() else 0o444)
        immutable = os.access(path, os.W_OK)
        if immutable and (
            shutil.which("chattr") is None
            or subprocess.run(["chattr", "+i", str(path)]).returncode != 0
        ):
            pytest.skip("root without `chattr +i`: nothing is read-only here")
        made.append((path, immutable))
        return path

    yield make
    for path, immutable in made:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(0o755)


def checkpoint_copy(tmp_path: pathlib.Path, fixture: Fixture) -> Inputs:
    """A checkpoint, a link to it, and paths a deploy could be asked to write."""
    checkpoint = tmp_path / "s.ckpt"
    shutil.copy(fixture("imported_checkpoint"), checkpoint)
    (tmp_path / "link.pth").symlink_to(checkpoint)
    return {
        "checkpoint": checkpoint,
        "link": tmp_path / "link.pth",
        "output": tmp_path / "model.pth",
        "missing": tmp_path / "missing" / "model.pth",
        "directory": tmp_path,
    }


def read_only_outputs(tmp_path: pathlib.Path, fixture: Fixture) -> Inputs:
    """A read-only directory, and a read-only deployed file in a writable one."""
    read_only = fixture("read_only")
    (tmp_path / "directory").mkdir()
    (tmp_path / "model.pth").write_bytes(b"a model to keep")
    return {
        "checkpoint": fixture("imported_checkpoint"),
        "in_directory": read_only(tmp_path / "directory") / "model.pth",
        "file": read_only(tmp_path / "model.pth"),
    }


def diverged_checkpoint(tmp_path: pathlib.Path, fixture: Fixture) -> Inputs:
    """A checkpoint whose weights (model and EMA) are all NaN, as a diverged training leaves."""
    checkpoint = torch.load(fixture("imported_checkpoint"), map_location="cpu", weights_only=False)
    for value in checkpoint["state_dict"].values():
        if torch.is_tensor(value) and value.is_floating_point():
            value.fill_(float("nan"))
    path = tmp_path / "diverged.ckpt"
    torch.save(checkpoint, path)
    return {"checkpoint": path, "output": tmp_path / "model.pth"}


def not_deployed_files(tmp_path: pathlib.Path, fixture: Fixture) -> Inputs:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a zip archive")
    linear = tmp_path / "linear.pth"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(linear))
    return {"garbage": garbage, "linear": linear, "missing": tmp_path / "missing.ckpt"}


def stale_deployed_file(tmp_path: pathlib.Path, fixture: Fixture) -> Inputs:
    return {"path": with_unknown_kernel(fixture("deployed_water"), tmp_path / "stale.pth")}


def water_geometry(
    change: Callable[[ase.Atoms], None],
) -> Callable[[pathlib.Path, Fixture], Inputs]:
    """The deployed water model and a periodic water frame changed by ``change``."""

    def make(tmp_path: pathlib.Path, fixture: Fixture) -> Inputs:
        atoms = triclinic_frame()
        change(atoms)
        return {"model": fixture("deployed_water"), "atoms": atoms}

    return make


def calculate(inputs: Inputs) -> None:
    ReannCalculator(str(inputs["model"])).get_potential_energy(inputs["atoms"])


def nan_returning_model(tmp_path: pathlib.Path, fixture: Fixture) -> Inputs:
    """A deployed file whose weights are NaN, written past nequip-deploy's own check: what a
    model that returns NaN looks like to the calculator."""
    model = water_model()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("reann_nequip.deploy.build.check_deployable", lambda *args: None)
        save_deployed(model, str(tmp_path / "nan.pth"))
    return {"model": tmp_path / "nan.pth", "atoms": triclinic_frame()}


def evaluation(data_name: str, text: str) -> Callable[[pathlib.Path, Fixture], Inputs]:
    """The imported model and a data file ``data_name`` holding ``text``."""

    def make(tmp_path: pathlib.Path, fixture: Fixture) -> Inputs:
        data = tmp_path / data_name
        data.write_text(text)
        return {"model": fixture("imported_checkpoint"), "data": data, "plots": tmp_path / "p"}

    return make


def reann_run(tmp_path: pathlib.Path, fixture: Fixture) -> Inputs:
    """REANN's ``para`` directory and a REANN.pth matching it."""
    write_para(tmp_path / "para", [4], [3], 1, 1, True, [0.0, 0.0])
    pth = tmp_path / "REANN.pth"
    torch.save({"reannparam": reann_state_dict(2, [4], [3], 1, 1, True, False, "v2")}, pth)
    return {"para": tmp_path / "para", "pth": pth, "output": tmp_path / "out.ckpt"}


def reann_run_changed(
    input_nn_line: Optional[str] = None, remove: Optional[str] = None, oc_loop: int = 1
) -> Callable[[pathlib.Path, Fixture], Inputs]:
    """:func:`reann_run` with a line added to ``input_nn``, a file removed, or a REANN.pth of
    another recursion count than ``para`` says."""

    def make(tmp_path: pathlib.Path, fixture: Fixture) -> Inputs:
        inputs = reann_run(tmp_path, fixture)
        para = inputs["para"]
        if input_nn_line is not None:
            with open(para / "input_nn", "a") as stream:
                stream.write(input_nn_line + "\n")
        if remove is not None:
            (para / remove).unlink()
        state = reann_state_dict(2, [4], [3], 1, oc_loop, True, False, "v2")
        torch.save({"reannparam": state}, inputs["pth"])
        return inputs

    return make


def nothing(tmp_path: pathlib.Path, fixture: Fixture) -> Inputs:
    return {}


GOOD_MODEL = {"seed": 1, "model_dtype": "float64", "type_names": ["C", "H"], "r_max": 4.0}
SLOW = (pytest.mark.slow,)

# fmt: off
CASES = [
    # === REANN `configuration` files: malformed lines (refused before issue 27) ===
    Case("reann_truncated_frame", reann_file({7: None}), call(read_reann),
         r"configuration, line 15: the file ends inside the frame starting at line 9"),
    Case("reann_non_number", reann_file({6: "O 15.999 1.0 x 3.0 0.5 -0.5 0.0"}), call(read_reann),
         r"line 14: mass, coordinates and forces must be numbers"),
    Case("reann_nan_position", reann_file({6: "O 15.999 1.0 nan 3.0 0.5 -0.5 0.0"}),
         call(read_reann), r"line 14: .* must be finite numbers"),
    Case("reann_nan_energy", reann_file({8: "abprop: NaN"}), call(read_reann),
         r"line 16: abprop values must be finite numbers"),
    Case("reann_column_count", reann_file({7: "H 1.008 2.5 2.0 3.0 -0.5 0.5"}), call(read_reann),
         r"line 15: an atom line must be .* \(5 or 8 columns\), found 7"),
    Case("reann_forces_on_some_atoms", reann_file({7: "H 1.008 2.5 2.0 3.0"}), call(read_reann),
         r"line 15: .* all atoms of a frame need forces or none"),
    Case("reann_unknown_element", reann_file({7: "Xx 1.008 2.5 2.0 3.0 -0.5 0.5 0.0"}),
         call(read_reann), r"line 15: unknown element 'Xx'"),
    Case("reann_singular_cell", reann_file({4: "10.0 10.0 0.0"}), call(read_reann),
         r"line 12: the cell of the frame starting at line 9 is singular"),
    Case("reann_lattice_row", reann_file({3: "0.0 10.0"}), call(read_reann),
         r"line 11: lattice vector b must have 3 numbers, found 2"),
    Case("reann_pbc_two_flags", reann_file({5: "pbc 1 1"}), call(read_reann),
         r"line 13: the `pbc` line must have exactly 3 flags, found 2"),
    Case("reann_pbc_not_a_flag", reann_file({5: "pbc 1 2 1"}), call(read_reann),
         r"line 13: pbc flags must be 0 or 1"),
    Case("reann_pbc_missing", reann_file({5: "O 15.999 1.0 2.0 3.0 0.5 -0.5 0.0"}),
         call(read_reann), r"line 13: expected the `pbc px py pz` line"),
    Case("reann_abprop_length", reann_file({8: "abprop: 1.0 2.0"}), call(read_reann),
         r"line 16: `abprop:` must hold 1 \(energy\), 3 \(dipole\) or 9"),
    Case("reann_abprop_changes_kind", reann_file({8: "abprop: 1.0 2.0 3.0"}), call(read_reann),
         r"line 9: the frame starting here has forces and 3 abprop value\(s\).* one kind"),
    Case("reann_negative_mass", reann_file({6: "O -15.999 1.0 2.0 3.0 0.5 -0.5 0.0"}),
         call(read_reann), r"line 14: masses must be positive"),
    Case("reann_blank_line_between_frames",
         reann_file(text="\n".join(FRAME) + "\n\n" + "\n".join(FRAME) + "\n"), call(read_reann),
         r"line 9: empty line between frames"),
    Case("reann_frame_without_atoms", reann_file({6: "abprop: 1.0"}), call(read_reann),
         r"line 14: the frame starting at line 9 has no atoms"),
    Case("reann_bad_coordinates_argument", reann_file(coordinates="direct"), call(read_reann),
         r"`coordinates` must be one of \('cartesian', 'fractional'\)"),
    Case("reann_dataset_without_coordinates", reann_file(),
         call(lambda i: ReannConfigurationDataset(i["path"])), r"`coordinates` is required"),
    Case("reann_dataset_bad_frames",
         reann_file(), call(lambda i: ReannConfigurationDataset(i["path"], frames="a:b",
                                                                coordinates="cartesian")),
         r"`frames` must be a slice such as ':800'"),
    Case("reann_dataset_frame_out_of_range",
         reann_file(), call(lambda i: ReannConfigurationDataset(i["path"], frames=[0, 3],
                                                                coordinates="cartesian")),
         r"frame\(s\) \[3\] out of range for .*configuration \(2 frames\)"),
    # === REANN `configuration` files: issue 27 ===
    Case("reann_not_utf8", reann_file(data=reann_text({}).encode() + b"x\xff\xfe\n"),
         call(read_reann), r"configuration, line 17: not UTF-8 text: byte 0xff at column 2"),
    Case("reann_fractional_overflow",
         reann_file({2: "1e10 0 0", 3: "0 1e10 0", 4: "0 0 1e10",
                     6: "O 15.999 1e300 0 0 0.5 -0.5 0.0"},
                    coordinates="fractional"), call(read_reann),
         r"line 14: fractional coordinates \[1e\+300, 0.0, 0.0\] times the cell give the "
         r"non-finite position \[inf, 0.0, 0.0\]"),
    Case("reann_coincident_atoms", reann_file({7: "H 1.008 1.0 2.0 3.0 -0.5 0.5 0.0"}),
         call(read_reann),
         r"configuration, line 14: frame 1 \(starting at line 9\), lines 14 and 15: atoms 0 and 1 "
         r"are 0 Å apart, closer than 0.1 Å"),
    Case("reann_coincident_atoms_in_dataset", reann_file({7: "H 1.008 1.0 2.0 3.0 -0.5 0.5 0.0"}),
         call(lambda i: ReannConfigurationDataset(i["path"], frames=":1", coordinates="cartesian")),
         r"line 14: frame 1 .* atoms 0 and 1 are 0 Å apart"),
    Case("reann_close_periodic_image", reann_file({7: "H 1.008 10.95 2.0 3.0 -0.5 0.5 0.0"}),
         call(read_reann), r"line 14: frame 1 .* atoms 0 and 1 are 0.05 Å apart"),
    Case("reann_energy_1e308", reann_file({8: "abprop: 1e308"}), call(read_reann),
         r"line 16: frame 1 \(starting at line 9\): the energy 1e\+308 \(5e\+307 per atom\) is "
         r"beyond ±1e\+09 per atom"),
    Case("reann_force_1e300", reann_file({7: "H 1.008 2.5 2.0 3.0 -0.5 1e300 0.0"}),
         call(read_reann), r"line 15: frame 1 .* atom 1 has the force \[-0.5, 1e\+300, 0.0\]"),
    Case("reann_dipole_1e20",
         reann_file(text=reann_text({}).replace("abprop: -12.5", "abprop: 0.1 1e20 0.3")),
         call(read_reann), r"line 8: frame 0 .* `abprop \(dipole\)` holds 1e\+20"),
    Case("reann_atom_far_from_open_frame",
         reann_file({5: "pbc 0 0 0", 7: "H 1.008 1e6 2.0 3.0 -0.5 0.5 0.0"}), call(read_reann),
         r"line 14: frame 1 \(starting at line 9\), lines 14 and 15: atoms 0 and 1 lie 1e\+06 Å "
         r"apart along x in a frame without periodic axes \(at most 500 Å\)"),
    Case("reann_atom_1e8_cells_away", reann_file({7: "H 1.008 1e9 2.0 3.0 -0.5 0.5 0.0"}),
         call(read_reann), r"line 15: frame 1 .* atom 1 lies 1e\+08 cell vectors away"),
    Case("reann_cell_thinner_than_0.2",
         reann_file({2: "0.15 0 0", 6: "O 15.999 0.0 2.0 3.0 0.5 -0.5 0.0",
                     7: "H 1.008 0.1 3.5 3.0 -0.5 0.5 0.0"}), call(read_reann),
         r"line 10: frame 1 .* the cell is 0.15 Å thick .* along cell vector 0"),
    Case("reann_fractional_file_read_as_cartesian",
         reann_file({6: "O 15.999 0.10 0.2 0.3 0.5 -0.5 0.0", 7: "H 1.008 0.15 0.2 0.3 0 0 0"}),
         call(read_reann), r"atoms 0 and 1 are 0.05 Å apart.*`coordinates: fractional`"),
    # === extxyz data through reann_nequip.data.ASEDataModule (issue 27) ===
    Case("ase_coincident_atoms", ch4_frames(coincide), call(set_up_ase_data),
         r"ValueError: .*ch4.xyz, frame 7: atoms 0 and 1 are 0 Å apart, closer than 0.1 Å"),
    Case("ase_energy_1e308", ch4_frames(set_result("energy", 1e308)), call(set_up_ase_data),
         r"ch4.xyz, frame 7: the energy 1e\+308 \(2e\+307 per atom\) is beyond ±1e\+09"),
    Case("ase_nan_force", ch4_frames(nan_force), call(set_up_ase_data),
         r"ch4.xyz, frame 7: atom 3 has the force \[.*, nan, .*\], beyond ±1e\+09 or not finite"),
    Case("ase_atom_1e6_away_vesin", ch4_frames(set_position(2, [1e6, 0.0, 0.0])),
         call(set_up_ase_data),
         r"ch4.xyz, frame 7: atoms \d and \d lie 1e\+06 Å apart along x in a frame without "
         r"periodic axes"),
    # === nequip-train: the failures end in an error, not in NaN weights or SIGFPE ===
    Case("train_reann_file_with_coincident_atoms", reann_format_run,
         nequip_train("{config}", *TINY, "hydra.run.dir={run_dir}"),
         r"configuration, line \d+: frame 7 \(starting at line \d+\), lines \d+ and \d+: atoms 0 "
         r"and 1 are 0 Å apart", SLOW),
    Case("train_extxyz_energy_1e308", ch4_frames(set_result("energy", 1e308)),
         nequip_train(str(TUTORIAL), "data_file={path}", *TINY, "hydra.run.dir={run_dir}"),
         r"ch4.xyz, frame 7: the energy 1e\+308", SLOW),
    Case("train_extxyz_atom_1e6_away_vesin", ch4_frames(set_position(2, [1e6, 0.0, 0.0])),
         nequip_train(str(TUTORIAL), "data_file={path}", *TINY, "hydra.run.dir={run_dir}"),
         r"ch4.xyz, frame 7: atoms \d and \d lie 1e\+06 Å apart", SLOW),
    Case("train_resume_with_other_elements", trained_run,
         nequip_train(str(TUTORIAL), "model_type_names=[O,C,H]", "++ckpt_path={checkpoint}",
                      "trainer.max_epochs=3", "hydra.run.dir={run_dir}"),
         r"the data and the model have different element lists: the data maps elements to the "
         r"types \['O', 'C', 'H'\], the model has the `type_names` \['C', 'H'\]", SLOW),
    # === TrainingGuard on its own (issue 27) ===
    Case("guard_nan_loss", guard_and_trainer,
         call(lambda i: i["guard"].on_before_backward(i["trainer"], None, torch.tensor(np.nan))),
         r"RuntimeError: the training loss is not finite \(nan on this process\) at epoch 0, "
         r"global step 0; training stops before this step changes the weights"),
    Case("guard_inf_loss", guard_and_trainer,
         call(lambda i: i["guard"].on_before_backward(i["trainer"], None, torch.tensor(np.inf))),
         r"the training loss is not finite \(inf on this process\)"),
    Case("guard_checkpoint_with_nan_weight", guard_and_trainer,
         call(lambda i: i["guard"].on_save_checkpoint(i["trainer"], None, {"state_dict": {
             "model.sole_model.w": torch.ones(3), "ema.ema_weight_0": torch.tensor([np.nan]),
             "loss._extra_state": {}}})),
         r"refusing to write a checkpoint at epoch 0, global step 0: 1 weight tensor\(s\) hold "
         r"non-finite values, first `ema.ema_weight_0`"),
    Case("guard_data_and_model_elements_differ", resumed_with_other_elements,
         call(lambda i: i["guard"].setup(i["trainer"], i["module"], "fit")),
         r"the data and the model have different element lists: the data maps elements to the "
         r"types \['O', 'C', 'H'\], the model has the `type_names` \['C', 'H'\]"),
    # === nequip-deploy build and info ===
    Case("deploy_missing_checkpoint", not_deployed_files,
         cli(deploy_main, "build", "{missing}", "{missing}.pth"),
         r"nequip-deploy: error: no checkpoint or package at `.*missing.ckpt`"),
    Case("deploy_info_not_torchscript", not_deployed_files, cli(deploy_main, "info", "{garbage}"),
         r"`.*garbage.pth` is not a TorchScript file"),
    Case("deploy_info_not_deployed", not_deployed_files, cli(deploy_main, "info", "{linear}"),
         r"`.*linear.pth` is TorchScript but not a reann_nequip deployed model"),
    Case("deploy_stale_kernel", stale_deployed_file, call(lambda i: read_metadata(str(i["path"]))),
         r"stale.pth` calls a kernel that this reann_nequip's kernel library lacks"),
    Case("deploy_nan_weights", diverged_checkpoint,
         cli(deploy_main, "build", "{checkpoint}", "{output}"),
         r"`.*diverged.ckpt` holds non-finite weights: \d+ of the \d+ values of `model\.\S+` are "
         r"NaN or infinite"),
    Case("deploy_output_is_the_input", checkpoint_copy,
         cli(deploy_main, "build", "{checkpoint}", "{checkpoint}"),
         r"the output `.*s.ckpt` is the input `.*s.ckpt`: writing it would destroy the input"),
    Case("deploy_output_links_to_the_input", checkpoint_copy,
         cli(deploy_main, "build", "{checkpoint}", "{link}"),
         r"the output `.*link.pth` is the input `.*s.ckpt`"),
    Case("deploy_unknown_units", checkpoint_copy,
         cli(deploy_main, "build", "{checkpoint}", "{output}", "--units", "bogus"),
         r"`units` must be a LAMMPS units style \(lj real metal si cgs electron micro nano\), "
         r"the style of the training data, found 'bogus'"),
    Case("deploy_into_missing_directory", checkpoint_copy,
         cli(deploy_main, "build", "{checkpoint}", "{missing}"),
         r"cannot write `.*missing/model.pth`: the directory `.*missing` does not exist"),
    Case("deploy_onto_a_directory", checkpoint_copy,
         cli(deploy_main, "build", "{checkpoint}", "{directory}"),
         r"cannot write `.*`: it is a directory"),
    Case("deploy_into_read_only_directory", read_only_outputs,
         cli(deploy_main, "build", "{checkpoint}", "{in_directory}"),
         r"cannot write `.*directory/model.pth`: the directory `.*directory` is read-only"),
    Case("deploy_onto_read_only_file", read_only_outputs,
         cli(deploy_main, "build", "{checkpoint}", "{file}"),
         r"cannot write `.*model.pth`: the file is read-only"),
    # === ReannCalculator ===
    Case("ase_model_not_torchscript", not_deployed_files,
         call(lambda i: ReannCalculator(str(i["garbage"]))), r"garbage.pth` is not a TorchScript"),
    Case("ase_unknown_memory_policy", lambda t, f: {"model": f("deployed_water")},
         call(lambda i: ReannCalculator(str(i["model"]), memory="lots")),
         r"memory must be `release` or `keep`, found 'lots'"),
    Case("ase_unknown_element", water_geometry(lambda a: a[2].__setattr__("symbol", "C")),
         call(calculate), r"atom 2 is C, which model `.*water.pth` does not know"),
    Case("ase_nan_position", water_geometry(set_position(4, [0.0, np.nan, 0.0])),
         call(calculate), r"atom 4 has a non-finite position"),
    Case("ase_atoms_too_close",
         water_geometry(lambda a: a.positions.__setitem__(5, a.positions[1] + 0.01)),
         call(calculate), r"atoms \d and \d are 0.0173 Å apart \(less than 0.1 Å\)"),
    Case("ase_singular_cell",
         water_geometry(lambda a: a.cell.__setitem__(2, a.cell[0] + a.cell[1])),
         call(calculate), r"singular"),
    Case("ase_model_returns_nan", nan_returning_model, call(calculate),
         r"model `.*nan.pth` returned non-finite energies for H4O2 \(6 atoms\) on atom\(s\) "
         r"0, 1, 2, 3, 4, 5"),
    # === reann-nequip evaluate ===
    Case("evaluate_renamed_reann_file", evaluation("train.cfg", reann_text({})),
         cli(reann_main, "evaluate", "{model}", "{data}", "-o", "{plots}"),
         r"train.cfg is a REANN configuration file: give --coordinates cartesian or fractional"),
    Case("evaluate_reann_file_without_suffix", evaluation("conf", reann_text({})),
         cli(reann_main, "evaluate", "{model}", "{data}", "-o", "{plots}"),
         r"conf is a REANN configuration file: give --coordinates"),
    Case("evaluate_configuration_without_coordinates", evaluation("configuration", "x\n"),
         cli(reann_main, "evaluate", "{model}", "{data}", "-o", "{plots}"),
         r"configuration is a REANN configuration file: give --coordinates"),
    Case("evaluate_unknown_format", evaluation("frames", "hello\n"),
         cli(reann_main, "evaluate", "{model}", "{data}", "-o", "{plots}"),
         r"frames: ASE cannot tell the format of this file \(Could not guess file type\)"),
    Case("evaluate_malformed_reann_file", evaluation("configuration", reann_text({7: None})),
         cli(reann_main, "evaluate", "{model}", "{data}", "--coordinates", "cartesian",
             "-o", "{plots}"),
         r"configuration, line 15: the file ends inside the frame"),
    Case("evaluate_impossible_frame",
         evaluation("configuration", reann_text({7: "H 1.008 1.0 2.0 3.0 -0.5 0.5 0.0"})),
         cli(reann_main, "evaluate", "{model}", "{data}", "--coordinates", "cartesian",
             "-o", "{plots}"),
         r"configuration, line 14: frame 1 .* atoms 0 and 1 are 0 Å apart"),
    Case("evaluate_plots_into_a_file",
         evaluation("configuration", reann_text({})),
         cli(reann_main, "evaluate", "{model}", "{data}", "--coordinates", "cartesian",
             "-o", "{data}"),
         r"reann-nequip evaluate: error: .*File exists: '.*configuration'"),
    Case("evaluate_model_not_a_checkpoint", evaluation("data.xyz", ""),
         cli(reann_main, "evaluate", "{data}.pt", "{data}", "-o", "{plots}"),
         r"MODEL must be a nequip checkpoint \(.ckpt\) or package \(.zip\)"),
    # === reann-nequip import and convert ===
    Case("convert_output_is_a_parameter_file", reann_run,
         cli(reann_main, "convert", "{para}", "-o", "{para}/input_nn"),
         r"the output `.*para/input_nn` is the input `.*para/input_nn`"),
    Case("convert_bad_parameter_line", reann_run_changed(input_nn_line="nl = [64] * 2"),
         cli(reann_main, "convert", "{para}", "-o", "{output}.yaml"),
         r"input_nn, line \d+: .*must be a Python literal"),
    Case("convert_missing_input_density", reann_run_changed(remove="input_density"),
         cli(reann_main, "convert", "{para}", "-o", "{output}.yaml"),
         r"input_density not found"),
    Case("import_output_is_the_reann_model", reann_run,
         cli(reann_main, "import", "{pth}", "--para", "{para}", "-o", "{pth}"),
         r"the output `.*REANN.pth` is the input `.*REANN.pth`"),
    Case("import_state_dict_does_not_match_para", reann_run_changed(oc_loop=2),
         cli(reann_main, "import", "{pth}", "--para", "{para}", "-o", "{output}"),
         r"memssage_1"),
    Case("write_configuration_into_missing_directory", nothing,
         call(lambda i: write_configuration("/nonexistent/configuration", [])),
         r"OutputPathError: cannot write `/nonexistent/configuration`: the directory "
         r"`/nonexistent` does not exist"),
    # === model configuration and element mapping (refused before issue 27) ===
    Case("mapper_unknown_element", nothing,
         call(lambda i: ChemicalSpeciesToAtomTypeMapper(model_type_names=["C", "H"])(
             from_ase(molecule("CH3OH")))),
         r"\['O'\] on atom\(s\) 1 are not among the model's `type_names` \['C', 'H'\]"),
] + [
    Case(f"model_{re.sub(r'[^a-z]+', '_', key).strip('_')}_{index}", nothing,
         call(lambda i, change=change: ReannModel(**{**GOOD_MODEL, **change})), re.escape(key))
    for index, (change, key) in enumerate([
        ({"l_max": -1}, "`l_max`"),
        ({"num_recursions": -2}, "`num_recursions`"),
        ({"num_recursions": 1.5}, "`num_recursions`"),
        ({"num_gaussians": 0}, "`num_gaussians`"),
        ({"num_orbitals": 0}, "`num_orbitals`"),
        ({"r_max": 0.0}, "`r_max`"),
        ({"r_max": -3.0}, "`r_max`"),
        ({"r_max": float("nan")}, "`r_max`"),
        ({"type_names": ["C", "C"]}, "`type_names`"),
        ({"type_names": ["C-1"]}, "`type_names`"),
        ({"avg_num_neighbors": 0.0}, "`avg_num_neighbors`"),
        ({"energy_network": {"activation": "relu"}}, "`energy_network.activation`"),
        ({"coefficient_network": {"activation": "gelu"}}, "`coefficient_network.activation`"),
        ({"energy_network": {"hidden": []}}, "`energy_network.hidden`"),
        ({"energy_network": {"num_blocks": -1}}, "`energy_network.num_blocks`"),
        ({"energy_network": {"dropout": [0.1]}}, "`energy_network.dropout`"),
        ({"energy_network": {"widths": [8]}}, "`energy_network` has unknown keys ['widths']"),
        ({"gaussian_exponents": [[0.5] * 8] * 2}, "`gaussian_exponents`"),
        ({"gaussian_centers": [[1.0] * 7] * 2}, "`gaussian_centers`"),
        ({"gaussian_centers": [1.0] * 7}, "`gaussian_centers`"),
    ])
]
# fmt: on


@pytest.mark.parametrize(
    "case", [pytest.param(case, id=case.name, marks=list(case.marks)) for case in CASES]
)
def test_hostile_input_is_refused_with_a_clear_error(case, tmp_path, request):
    inputs = case.make(tmp_path, request.getfixturevalue)
    message = case.run(inputs)
    assert re.search(case.error, message), f"expected /{case.error}/, got:\n{message[-3000:]}"


def test_case_names_are_unique():
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))


# === what an error message cannot show ===


def test_a_write_killed_midway_leaves_the_previous_file(tmp_path):
    """kill -9 in the middle of a write: the final name keeps the previous file; only a hidden
    temporary is left beside it."""
    target = tmp_path / "model.pth"
    target.write_bytes(b"the good model")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    writer = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "tests" / "scripts" / "killed_writer.py"), str(target)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert writer.stdout.readline() == "writing\n"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
    assert target.read_bytes() == b"the good model"
    (leftover,) = [path.name for path in tmp_path.iterdir() if path != target]
    assert leftover.startswith(".model.pth.") and leftover.endswith(".tmp"), leftover


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "nn.err"
    target.write_text("Epoch=      0 …\n")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_output(target, append=True) as stream:
            stream.write("Epoch=      1 …\n")
            raise RuntimeError("disk full")
    assert target.read_text() == "Epoch=      0 …\n"
    assert [path.name for path in tmp_path.iterdir()] == ["nn.err"]
    with atomic_output(target, append=True) as stream:
        stream.write("Epoch=      1 …\n")
    assert target.read_text() == "Epoch=      0 …\nEpoch=      1 …\n"


def test_a_failed_write_configuration_leaves_the_previous_file(tmp_path):
    """A generator of frames that fails midway (here: on its second frame) leaves the file as it
    was, even when it reads the frames from that very file."""
    path = tmp_path / "configuration"
    path.write_text(reann_text({}))
    before = path.read_text()

    def frames():
        for index, atoms in enumerate(ase.io.read(CH4, ":3")):
            if index == 1:
                raise RuntimeError("the source failed")
            yield atoms

    with pytest.raises(RuntimeError, match="the source failed"):
        write_configuration(path, frames())
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["configuration"]


def test_a_failed_deploy_leaves_the_previous_model(tmp_path, deployed_water, monkeypatch):
    """A deploy that fails while writing (here: a full disk) leaves the model that was there."""
    target = tmp_path / "water.pth"
    shutil.copy(deployed_water, target)
    before = target.read_bytes()

    def full_disk(module, file, _extra_files):
        # half an archive, then the error, into whatever torch.jit.save was given
        with contextlib.ExitStack() as stack:
            if isinstance(file, (str, os.PathLike)):
                file = stack.enter_context(open(file, "wb"))
            file.write(b"PK\x03\x04 half an archive")
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.jit, "save", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        save_deployed(water_model(), str(target))
    assert target.read_bytes() == before
    assert [path.name for path in tmp_path.iterdir()] == ["water.pth"]


def test_a_refused_deploy_leaves_its_input_untouched(tmp_path, imported_checkpoint):
    checkpoint = tmp_path / "s.ckpt"
    shutil.copy(imported_checkpoint, checkpoint)
    before = checkpoint.read_bytes()
    message = cli(deploy_main, "build", "{checkpoint}", "{checkpoint}")({"checkpoint": checkpoint})
    assert "is the input" in message
    assert checkpoint.read_bytes() == before
    assert [path.name for path in tmp_path.iterdir()] == ["s.ckpt"]


@pytest.mark.slow
def test_nan_training_stops_before_the_step_and_keeps_finite_checkpoints(tmp_path):
    """The issue's NaN training without its bad data: every weight set to NaN before the first
    batch of epoch 1 (tests.schedule_fixtures.PoisonWeights), the tutorial config otherwise.
    nequip-train used to exit 0 with NaN weights in best.ckpt and last.ckpt."""
    config = yaml.safe_load(TUTORIAL.read_text())
    config["trainer"]["callbacks"].append(
        {"_target_": "tests.schedule_fixtures.PoisonWeights", "epoch": 1, "batch": 0}
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    run_dir = tmp_path / "run"
    result = run_nequip_train(
        str(path),
        *TINY,
        "trainer.max_epochs=3",
        f"hydra.run.dir={run_dir}",
        check=False,
        python_path=True,
    )
    assert re.search(
        r"the training loss is not finite \(nan on this process\) at epoch 1, global step 25",
        result.stderr,
    ), result.stderr[-3000:]
    for name in ("best.ckpt", "last.ckpt"):
        checkpoint = torch.load(run_dir / name, map_location="cpu", weights_only=False)
        assert checkpoint["epoch"] == 0, name
        for key, value in checkpoint["state_dict"].items():
            if torch.is_tensor(value) and value.is_floating_point():
                assert bool(value.isfinite().all()), f"{name}: {key}"


def _vesin(extent: float, r_max: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "tests" / "scripts" / "vesin_extent.py"),
            repr(extent),
            repr(r_max),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_vesin_dies_beyond_the_extent_bound_and_not_within_it():
    """Why MAX_EXTENT exists: vesin (the configs' neighbour list) dies by SIGFPE on a frame
    without periodic axes that spans more than ~313 cutoffs (an upstream bug). At MAX_EXTENT
    it runs for cutoffs down to 1.6 Å. If vesin is fixed, the first assertion tells."""
    crashed = _vesin(1.0e6, 4.0)
    assert crashed.returncode == -signal.SIGFPE, (crashed.returncode, crashed.stderr[-2000:])
    bounded = _vesin(MAX_EXTENT, 1.6)
    assert bounded.returncode == 0 and "edges 2" in bounded.stdout, bounded.stderr[-2000:]


def test_corrupted_model_files_are_refused_never_crash(tmp_path):
    """torch does not check a TorchScript archive's checksums, so a file whose bytes were
    overwritten loads. Every tensor record of a deployed file (parameters and the frozen buffers,
    index tables among them) overwritten with 0xFF bytes (NaN floats, −1 integers), with 0x7F
    bytes (huge values), or with a few random small and large integers, and metadata edited:
    evaluating each in ASE gives a result or an error, never a crash (an index read from the file
    unchecked would segfault)."""
    import zipfile

    model = tmp_path / "model.pth"
    save_deployed(water_model(), str(model))
    frame = tmp_path / "frame.extxyz"
    ase.io.write(frame, triclinic_frame())
    with zipfile.ZipFile(model) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
    records = [name for name in contents if "/data/" in name or "/constants/" in name]
    assert len(records) > 20, records
    generator = np.random.default_rng(0)

    def random_words(content):
        """``content`` with one in eight 8-byte words set to a small or a huge integer."""
        data = bytearray(content)
        for _ in range(max(1, len(data) // 64)):
            start = 8 * int(generator.integers(0, max(1, len(data) // 8)))
            value = int(
                generator.choice([generator.integers(-5, 40), 2 ** int(generator.integers(31, 62))])
            )
            word = value.to_bytes(8, "little", signed=True)
            data[start : start + 8] = word[: len(data[start : start + 8])]
        return bytes(data)

    corrupted = []

    def write(tag, entry, new_content):
        path = tmp_path / f"{tag}.pth"
        rewritten_archive(
            model, path, lambda name, content: new_content if name == entry else content
        )
        corrupted.append(path)

    for record in records:
        tag = record.replace("/", "_")
        size = len(contents[record])
        write(f"{tag}_ff", record, b"\xff" * size)
        write(f"{tag}_7f", record, b"\x7f" * size)
        write(f"{tag}_random", record, random_words(contents[record]))
    for key, value in (
        ("r_max", b"-3.5"),
        ("coefficient_size", b"1000000000"),
        ("type_names", b""),
    ):
        (entry,) = [name for name in contents if name.endswith(f"/extra/{key}")]
        write(f"metadata_{key}", entry, value)
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "tests" / "scripts" / "evaluate_deployed_files.py"),
            str(frame),
            *map(str, corrupted),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    lines = result.stdout.splitlines()
    last = [line for line in lines if line.startswith("try ")][-1:]
    assert result.returncode == 0, (
        f"crashed ({result.returncode}) on {last}: {result.stderr[-2000:]}"
    )
    outcomes = [line for line in lines if not line.startswith("try ")]
    assert len(outcomes) == len(corrupted)
    refused = [line for line in outcomes if line.startswith("refused")]
    # the edited metadata and the NaN weights at least are refused
    assert len(refused) >= len(records), "\n".join(outcomes)
