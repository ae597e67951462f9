"""Whether the model is being traced into a graph rather than run."""

import torch


def capturing_graph() -> bool:
    """True while torch.fx, torch.compile or torch.export trace the model (``nequip-compile``,
    train-time compilation). Such graphs must not have data-dependent sizes, so the modules
    then take their static-shape form; eager and TorchScript runs take the fast form."""
    if not torch.jit.is_scripting():
        return torch.compiler.is_compiling() or torch.fx._symbolic_trace.is_fx_tracing()
    return False
