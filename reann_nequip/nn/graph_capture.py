"""Whether the model is being traced into a graph rather than run."""

import torch
from torch.fx.experimental.proxy_tensor import get_proxy_mode


def capturing_graph() -> bool:
    """True while torch.compile / torch.export trace the model or ``make_fx`` records it
    (``nequip-compile``, train-time compilation). Such graphs must not have data-dependent sizes,
    so the modules then take their static-shape form; eager and TorchScript runs take the fast
    form."""
    if not torch.jit.is_scripting():
        return torch.compiler.is_compiling() or get_proxy_mode() is not None
    return False
