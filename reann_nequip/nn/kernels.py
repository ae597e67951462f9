"""The C++ kernels ``torch.ops.reann`` (CPU), built with the package into ``reann_nequip/lib``.

:func:`load_kernels` loads the library once per process (the model builders, ``nequip-deploy``
and the ASE calculator call it). Its numerical kernels exist for
several x86-64 instruction-set levels; the library runs the highest one the CPU supports, or the
lower one named by the environment variable ``REANN_NEQUIP_ISA`` (``baseline``, ``avx2``,
``avx512``).
"""

import importlib.util
import pathlib
from typing import List

import torch

LIBRARY_NAME = "libreann_ops.so"


def library_path() -> pathlib.Path:
    """The kernel library of the installed package. Found through the import system rather than
    ``__file__``: inside a nequip package (``.nequip.zip``) this module is a copy, and the
    library is the installed package's."""
    spec = importlib.util.find_spec("reann_nequip")
    if spec is None or spec.origin is None:
        raise RuntimeError("reann_nequip is not installed; `pip install --no-build-isolation .`")
    return pathlib.Path(spec.origin).parent / "lib" / LIBRARY_NAME


def load_kernels() -> None:
    """Register ``torch.ops.reann`` in this process (once); raises if the library is missing."""
    if kernels_loaded():
        return
    library = library_path()
    if not library.is_file():
        raise RuntimeError(
            f"the reann_nequip kernel library `{library}` is missing: it is built when the "
            "package is installed (`pip install --no-build-isolation -e .` after torch); "
            "reinstall the package"
        )
    torch.ops.load_library(str(library))


def kernels_loaded() -> bool:
    """Whether ``torch.ops.reann`` is registered in this process."""
    return hasattr(torch.ops.reann, "orbital_gram")


def kernels_available() -> bool:
    """Whether the kernels can run here: ``torch.ops.reann`` registered (loading the library)."""
    try:
        load_kernels()
    except RuntimeError:
        return False
    return True


def kernel_isa() -> str:
    """The instruction-set level the kernels run at: ``baseline``, ``avx2`` or ``avx512``."""
    load_kernels()
    return torch.ops.reann.kernel_isa()


def supported_kernel_isas() -> List[str]:
    """The levels this CPU runs, lowest first."""
    load_kernels()
    return list(torch.ops.reann.supported_kernel_isas())
