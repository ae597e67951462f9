"""Loading deployed files, whose energy models call the C++ kernels ``torch.ops.reann``."""

import torch

from ..nn.kernels import load_kernels


def load_deployed_file(path: str) -> torch.jit.ScriptModule:
    """``torch.jit.load`` of a deployed file on CPU, after :func:`load_kernels`."""
    load_kernels()
    return torch.jit.load(path, map_location="cpu")
