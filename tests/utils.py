"""Helpers shared by the tests."""

import os
import pathlib
import re
import signal
import subprocess
import sys
from typing import Callable, List

import torch
from ase import Atoms
from nequip.data import AtomicDataDict, compute_neighborlist_, from_ase

from reann_nequip.data import ChemicalSpeciesToAtomTypeMapper

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# the real data sets of ../shared/data, next to the repository
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# the model's two forms, as the builders' ``cpu_kernels`` argument chooses them
FORMS = {"kernels": True, "torch": False}


def benchmark_script(name: str):
    """``benchmarks/NAME.py`` as a module (benchmarks/ is a folder of scripts, on ``sys.path``
    while it is imported so that it finds ``provenance``)."""
    import importlib

    folder = str(REPO_ROOT / "benchmarks")
    sys.path.insert(0, folder)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(folder)


def shared_data(*parts: str) -> pathlib.Path:
    """A path inside ``../shared/data``; skips the test, saying so, when this clone has none."""
    import pytest

    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs the shared data set {path} (a clone next to ../shared)")
    return path


def tiny_model(
    builder=None,
    *,
    type_names=("O", "H"),
    r_max: float = 3.5,
    num_recursions: int = 2,
    model_dtype: str = "float64",
    seed: int = 4,
    perturbation_seed: int = 1,
    **options,
):
    """The small REANN model of the physics tests: 4 Gaussians, networks of width 8, parameters
    perturbed (:func:`randomize_parameters`) so that every stage shapes the outputs. ``builder``
    is a reann_nequip model builder (default ``ReannModel``); ``options`` go to it."""
    from reann_nequip.model import ReannModel

    builder = builder or ReannModel
    network = "energy_network" if builder is ReannModel else "output_network"
    config = {
        "num_gaussians": 4,
        network: {"hidden": [8]},
        "coefficient_network": {"hidden": [8]},
        **options,
    }
    model = builder(
        seed=seed,
        model_dtype=model_dtype,
        type_names=list(type_names),
        r_max=r_max,
        num_recursions=num_recursions,
        **config,
    )
    return randomize_parameters(model, seed=perturbation_seed)


def model_input(atoms: Atoms, type_names: List[str], r_max: float) -> AtomicDataDict.Type:
    """One frame as the model reads it: atom types by element from ``type_names``, neighbours
    within ``r_max`` Å."""
    mapper = ChemicalSpeciesToAtomTypeMapper(model_type_names=list(type_names))
    return compute_neighborlist_(mapper(from_ase(atoms)), r_max=r_max)


def run_nequip_train(
    *args: str, python_path: bool = False, timeout: float = 900.0, check: bool = True
) -> subprocess.CompletedProcess:
    """``nequip-train ARGS`` from the repository root with this venv's tools; asserts success
    (``check``) or, for runs that must fail, a clean exit with an error: neither success nor a
    death by signal.

    ``python_path`` puts the repository root on PYTHONPATH (for configs naming ``tests.…``).
    After ``timeout`` seconds the run fails and its whole process group is killed, DDP ranks
    that nequip-train started included (a deadlocked rank would otherwise outlive the test).
    """
    process = subprocess.Popen(
        ["nequip-train", *args],
        cwd=REPO_ROOT,
        env=_tool_environment(python_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"nequip-train ran over {timeout} s:\n{stderr[-4000:]}") from expired
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    else:
        # a negative code is the signal that killed the process (-8: SIGFPE)
        assert result.returncode > 0, f"exit code {result.returncode}:\n{result.stderr[-4000:]}"
    return result


def start_nequip_train(*args: str, log_path: pathlib.Path, python_path: bool = False):
    """``nequip-train ARGS`` started in the background like :func:`run_nequip_train`, its output
    going to ``log_path``; returns the ``subprocess.Popen``."""
    with open(log_path, "w") as log:
        return subprocess.Popen(
            ["nequip-train", *args],
            cwd=REPO_ROOT,
            env=_tool_environment(python_path),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _tool_environment(python_path: bool) -> dict:
    """The environment for this venv's console scripts, optionally with the repository root on
    PYTHONPATH."""
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    if python_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def run_in_fresh_interpreter(helper: str, *args: str) -> None:
    """Runs ``helper`` (``module:function`` of the test package) in a new Python process
    (tests/scripts/in_fresh_interpreter.py); asserts success."""
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "scripts" / "in_fresh_interpreter.py"), helper]
        + list(args),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]


def randomize_parameters(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter in place: p ← p (1 + 0.2 n₁) + 0.05 n₂, n ~ N(0, 1).

    REANN starts with zero output layers, so a freshly built model has constant atomic energies
    and zero forces, and every physics test would pass trivially. Perturbed parameters make the
    energy depend on the geometry through every stage, recursion included.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            relative, absolute = torch.randn(
                (2, *parameter.shape), generator=generator, dtype=torch.float64
            ).to(dtype=parameter.dtype, device=parameter.device)
            parameter.mul_(1.0 + 0.2 * relative).add_(0.05 * absolute)
    return model


def rewritten_archive(
    deployed: pathlib.Path, output: pathlib.Path, replace: Callable[[str, bytes], bytes]
) -> pathlib.Path:
    """A copy of a deployed file (a zip archive) with each entry's bytes ``replace(name,
    content)``: an edited or corrupted file, which torch loads all the same (it does not check
    the archive's checksums)."""
    import zipfile

    with zipfile.ZipFile(deployed) as source, zipfile.ZipFile(output, "w") as target:
        for entry in source.infolist():
            target.writestr(entry, replace(entry.filename, source.read(entry)))
    return output


def with_unknown_kernel(deployed: pathlib.Path, output: pathlib.Path) -> pathlib.Path:
    """A copy of a deployed file whose code calls ``reann::radial_functionx``, an op no kernel
    library has: what a file deployed by another version looks like to this one."""

    def rename(name: str, content: bytes) -> bytes:
        if name.endswith(".py"):
            return content.replace(b"reann.radial_functions(", b"reann.radial_functionx(")
        return content

    return rewritten_archive(deployed, output, rename)


def error_log_runs(path):
    """nn.err as one list per run of (epoch, lr, train RMSEs, val RMSEs) and whether each run
    ended normally."""
    runs = []
    for line in path.read_text().splitlines():
        if line.startswith("REANN-style error log"):
            runs.append({"epochs": [], "terminated": False})
        elif line.startswith("Epoch="):
            match = re.fullmatch(
                r"Epoch=\s*(\d+) learning rate (\S+) train error:(.*) val error:(.*)", line
            )
            assert match, line
            runs[-1]["epochs"].append(
                (
                    int(match[1]),
                    float(match[2]),
                    [float(v) for v in match[3].split()],
                    [float(v) for v in match[4].split()],
                )
            )
        elif line.endswith("terminated normal"):
            runs[-1]["terminated"] = True
    return runs


def checkpoint_of(path):
    """A Lightning checkpoint's contents."""
    return torch.load(path, map_location="cpu", weights_only=False)


def schedule_state(checkpoint):
    """The saved state of the ReannTrainingSchedule callback in a checkpoint."""
    (state,) = [v for k, v in checkpoint["callbacks"].items() if "ReannTrainingSchedule" in k]
    return state
