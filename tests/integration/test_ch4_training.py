"""The CH4 tutorial config trains through both command-line forms, and bare paths reach Hydra."""

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
