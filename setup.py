"""Builds reann_nequip with its C++ op library, ``reann_nequip/lib/libreann_ops.so`` (``torch.ops.reann``).

The library is compiled against the torch of the environment it is installed into, so torch must
be installed first and pip must not build in an isolated environment (which would fetch another
torch, a multi-GB CUDA build by default)::

    pip install torch==2.13.0
    pip install --no-build-isolation -e .

The numerical kernels (``csrc/kernels``) are compiled once per x86-64 instruction-set level
(baseline, AVX2 + FMA, AVX-512), each into its own namespace, and the library picks the highest
level the CPU running it supports (``csrc/ops/isa.cpp``): one build runs on every x86-64 CPU. The
ops (``csrc/ops``) are compiled for the baseline. ``MAX_JOBS`` limits the parallel compiler jobs.
"""

import concurrent.futures
import os
import pathlib
import platform
import shlex
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = pathlib.Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
# -march of each instruction-set level; the runtime check in csrc/ops/isa.cpp matches these sets
X86_64_LEVELS = {
    "baseline": ["-march=x86-64", "-mtune=generic"],
    "avx2": ["-march=x86-64-v3"],
    "avx512": ["-march=x86-64-v4"],
}


def _torch():
    try:
        import torch
    except ImportError:
        sys.exit(
            "reann-nequip compiles its C++ kernels against the installed torch, and found none. "
            "Install torch first, then this package without build isolation:\n"
            "    pip install torch==2.13.0\n"
            "    pip install --no-build-isolation -e ."
        )
    return torch


class BuildOpsLibrary(build_ext):
    """Compiles csrc/ into one shared library (not a Python module: torch.ops.load_library and
    the LAMMPS plugin load it)."""

    def get_ext_filename(self, fullname):
        # reann_nequip.lib.libreann_ops -> reann_nequip/lib/libreann_ops.so: no Python ABI tag
        return os.path.join(*fullname.split(".")) + ".so"

    def build_extension(self, ext):
        torch = _torch()
        from torch.utils import cpp_extension

        compiler = shlex.split(os.environ.get("CXX", "c++"))
        torch_lib = pathlib.Path(torch.__file__).parent / "lib"
        flags = [
            "-std=c++20",
            "-O3",
            "-fPIC",
            "-fopenmp-simd",
            "-fvisibility=hidden",
            "-fvisibility-inlines-hidden",
            "-DNDEBUG",
            # vector types passed between the kernels' own functions, never across levels
            "-Wno-psabi",
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            *[f"-I{path}" for path in cpp_extension.include_paths()],
            f"-I{CSRC / 'kernels'}",
            f"-I{CSRC / 'ops'}",
        ]
        levels = X86_64_LEVELS if platform.machine() in ("x86_64", "AMD64") else {"baseline": []}
        objects_dir = pathlib.Path(self.build_temp) / "reann_ops"
        # the ops for the baseline, then the kernels level by level: the linker keeps the first
        # copy of an inline function that several objects define, so lower levels come first
        jobs = [
            (source, objects_dir / "ops" / f"{source.stem}.o", levels["baseline"])
            for source in sorted((CSRC / "ops").glob("*.cpp"))
        ]
        jobs += [
            (
                source,
                objects_dir / level / f"{source.stem}.o",
                [*level_flags, f"-DREANN_ISA={level}"],
            )
            for level, level_flags in levels.items()
            for source in sorted((CSRC / "kernels").glob("*.cpp"))
        ]

        headers = [*CSRC.glob("*/*.h"), pathlib.Path(torch.__file__)]

        def compile_one(job):
            source, target, extra = job
            # rebuilt when the source, a header of ours or torch changed (incremental rebuilds)
            if not target.exists() or any(
                path.stat().st_mtime > target.stat().st_mtime for path in [source, *headers]
            ):
                target.parent.mkdir(parents=True, exist_ok=True)
                self._run([*compiler, *flags, *extra, "-c", str(source), "-o", str(target)])
            return target

        workers = int(os.environ.get("MAX_JOBS", os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            objects = list(pool.map(compile_one, jobs))

        output = pathlib.Path(self.get_ext_fullpath(ext.name))
        output.parent.mkdir(parents=True, exist_ok=True)
        # where an in-place build (pip install -e) copies the library to
        (ROOT / "reann_nequip" / "lib").mkdir(exist_ok=True)
        self._run(
            [
                *compiler,
                "-shared",
                *map(str, objects),
                "-o",
                str(output),
                f"-L{torch_lib}",
                "-lc10",
                "-ltorch",
                "-ltorch_cpu",
                # torch's libraries: beside this package in site-packages, or where they were
                # at build time (an editable install)
                "-Wl,-rpath,$ORIGIN/../../torch/lib",
                f"-Wl,-rpath,{torch_lib}",
            ]
        )

    def _run(self, command):
        self.announce(" ".join(command), level=2)
        subprocess.run(command, check=True)


setup(
    ext_modules=[Extension("reann_nequip.lib.libreann_ops", sources=[])],
    cmdclass={"build_ext": BuildOpsLibrary},
)
