"""The CH4 tutorial config trains through both command-line forms, and bare paths reach Hydra."""

import pathlib
import subprocess
import sys

import pytest

from reann_nequip import _cli_compat

from ..utils import REPO_ROOT, run_nequip_train

CONFIG = REPO_ROOT / "configs" / "reann_ch4.yaml"


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["/venv/bin/nequip-train", str(CONFIG), "trainer.max_epochs=1"],
            [
                "/venv/bin/nequip-train",
                "-cd",
                str(CONFIG.parent),
                "-cn",
                "reann_ch4",
                "trainer.max_epochs=1",
            ],
        ),
        # Hydra's own forms, other programs and missing files are left alone
        (["nequip-train", "-cd", "configs", "-cn", "reann_ch4"], None),
        (["nequip-package", str(CONFIG)], None),
        (["nequip-train", "configs/does_not_exist.yaml"], None),
        (["nequip-train", "trainer.max_epochs=1"], None),
    ],
)
def test_config_path_argument_becomes_hydra_dir_and_name(monkeypatch, argv, expected):
    monkeypatch.setattr(sys, "argv", list(argv))
    _cli_compat.accept_config_file_argument()
    assert sys.argv == (argv if expected is None else expected)


@pytest.mark.slow
@pytest.mark.parametrize(
    "form",
    [["configs/reann_ch4.yaml"], ["-cd", "configs", "-cn", "reann_ch4"]],
    ids=["file_path", "hydra_dir_and_name"],
)
def test_ch4_config_trains_and_tests(tmp_path, form):
    result = run_nequip_train(*form, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path}")
    assert (tmp_path / "best.ckpt").is_file() and (tmp_path / "last.ckpt").is_file()
    assert (tmp_path / "test0.xyz").is_file() or any(tmp_path.glob("test*.xyz"))
    report = result.stdout + result.stderr
    assert "test0_epoch/forces_rmse_meV_per_A" in report, report[-3000:]


def test_train_committee_needs_a_model_seed_in_the_config(capsys):
    from reann_nequip.cli import main as cli_main

    config = REPO_ROOT / "configs" / "reann_ch4_dipole.yaml"
    assert cli_main(["train-committee", str(config), "-o", "unused"]) == 2
    assert "has no top-level `model_seed`" in capsys.readouterr().err


@pytest.mark.slow
def test_train_committee_members_share_the_split_and_differ_in_weights(tmp_path):
    """Two members of the tutorial config, one epoch each, two at a time: the same test frames
    (the data seed is fixed), different initial weights (the model seed varies), deployed."""
    import ase.io
    import numpy as np
    import torch

    result = subprocess.run(
        [
            str(pathlib.Path(sys.executable).parent / "reann-nequip"),
            "train-committee",
            str(CONFIG),
            "trainer.max_epochs=1",
            "training_module.model.num_gaussians=4",
            "training_module.model.energy_network.hidden=[16]",
            "training_module.model.coefficient_network.hidden=[16]",
            "--seeds",
            "3",
            "5",
            "--jobs",
            "2",
            "-o",
            str(tmp_path),
            "--deploy",
        ],  # fmt: skip
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tests = [ase.io.read(next((tmp_path / f"seed{s}").glob("test*.xyz")), ":") for s in (3, 5)]
    assert len(tests[0]) == len(tests[1]) == 50
    for first, second in zip(*tests):
        np.testing.assert_array_equal(first.positions, second.positions)

    def weights(seed):
        checkpoint = torch.load(tmp_path / f"seed{seed}" / "best.ckpt", weights_only=False)
        return checkpoint["state_dict"]

    first, second = weights(3), weights(5)
    assert any(not torch.equal(first[key], second[key]) for key in first)
    assert (tmp_path / "member_seed3.pth").is_file() and (tmp_path / "member_seed5.pth").is_file()
