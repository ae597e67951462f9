"""``reann-nequip evaluate``: the errors it prints are the model's errors on the data, the same for
an extxyz file and the REANN configuration file holding the same frames."""

import ase.io
import numpy as np
import pytest
import torch
from nequip.data import AtomicDataDict
from nequip.model import ModelFromCheckpoint
from nequip.utils.global_state import set_global_state

from reann_nequip.cli import main as cli_main
from reann_nequip.data import write_configuration

from ..utils import REPO_ROOT, model_input
from .test_reann_import import ATOMTYPE, CUTOFF, reann_state_dict, write_para

CH4 = REPO_ROOT / "examples" / "ch4" / "ch4_b3lyp_augccpvdz.xyz"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny H/C/O REANN model, imported from a REANN state dict of known weights."""
    set_global_state()
    root = tmp_path_factory.mktemp("model")
    write_para(root / "para", [4], [3], 1, 1, True, [0.0, 0.0])
    torch.save({"reannparam": reann_state_dict(2, [4], [3], 1, 1, True, False, "v2")}, root / "p")
    checkpoint = root / "tiny.ckpt"
    args = ["import", str(root / "p"), "--para", str(root / "para"), "-o", str(checkpoint)]
    assert cli_main(args + ["--data", str(root)]) == 0
    return checkpoint


def printed_errors(text):
    """{property: (count, rmse, mae)} from the printed table."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[1].isdigit():
            rows[cells[0]] = (int(cells[1]), float(cells[2]), float(cells[3]))
    return rows


def test_evaluate_ch4_extxyz_and_reann_file(tmp_path, tiny_checkpoint, capsys):
    frames = ase.io.read(CH4, ":24")
    xyz = tmp_path / "ch4.xyz"
    ase.io.write(xyz, frames)

    # the model's errors, frame by frame
    model = ModelFromCheckpoint(str(tiny_checkpoint))["sole_model"].eval()
    energy_errors, force_errors, carbon_force_errors = [], [], []
    for atoms in frames:
        out = model(model_input(atoms.copy(), ATOMTYPE, CUTOFF))  # copy: no calculator
        energy_errors.append(
            out[AtomicDataDict.TOTAL_ENERGY_KEY].item() - atoms.get_potential_energy()
        )
        delta = out[AtomicDataDict.FORCE_KEY].detach().numpy() - atoms.get_forces()
        force_errors.append(delta)
        carbon_force_errors.append(delta[atoms.numbers == 6])
    energy_errors = np.array(energy_errors)
    force_errors = np.concatenate(force_errors)
    carbon_force_errors = np.concatenate(carbon_force_errors)
    expected = {
        "total_energy": (24, np.sqrt(np.mean(energy_errors**2)), np.mean(np.abs(energy_errors))),
        "per_atom_energy": (24, np.sqrt(np.mean((energy_errors / 5) ** 2)), None),
        "forces": (24 * 15, np.sqrt(np.mean(force_errors**2)), np.mean(np.abs(force_errors))),
        "forces (C)": (24 * 3, np.sqrt(np.mean(carbon_force_errors**2)), None),
    }

    configuration = tmp_path / "configuration"
    for atoms in frames:  # REANN's format needs a cell: a large box
        atoms.cell = np.eye(3) * 30.0
    write_configuration(configuration, frames, coordinates="cartesian")

    for data, extra in ((xyz, []), (configuration, ["--coordinates", "cartesian"])):
        out_dir = tmp_path / f"plots_{data.name}"
        args = [
            "evaluate",
            str(tiny_checkpoint),
            str(data),
            "-o",
            str(out_dir),
            "--batch-size",
            "5",
        ]
        assert cli_main(args + extra) == 0
        rows = printed_errors(capsys.readouterr().out)
        assert "total_dipole" not in rows  # the data has dipoles, the model does not
        for name, (count, rmse, mae) in expected.items():
            assert rows[name][0] == count, name
            assert rows[name][1] == pytest.approx(rmse, rel=1e-5), name
            if mae is not None:
                assert rows[name][2] == pytest.approx(mae, rel=1e-5), name
        assert "forces (H)" in rows
        for name in ("total_energy", "per_atom_energy", "forces"):
            assert (out_dir / f"parity_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_reports_bad_input(tmp_path, tiny_checkpoint, capsys):
    configuration = tmp_path / "configuration"
    configuration.write_text("x\n10 0 0\n0 10 0\n0 0 10\npbc 0 0 0\nH 1.0 0 0 0\n")
    assert cli_main(["evaluate", str(tiny_checkpoint), str(configuration)]) == 2
    assert "give --coordinates" in capsys.readouterr().err
    args = ["evaluate", str(tiny_checkpoint), str(configuration), "--coordinates", "cartesian"]
    assert cli_main(args) == 2
    assert f"{configuration}, line 7" in capsys.readouterr().err
    assert cli_main(["evaluate", str(tmp_path / "model.pt"), str(configuration)]) == 2
    assert "MODEL must be a nequip checkpoint" in capsys.readouterr().err
