"""The one place that chooses how the model runs.

Each stage with work worth a kernel (the radial functions, the embedded density, the element
networks) has two forms of the same numbers:

- the **torch form**: torch operations with static shapes. It runs on any device, and it is what
  graph capture (``nequip-compile``, train-time ``torch.compile``) traces;
- the **kernel form**: the C++ kernels ``torch.ops.reann`` (CPU), first and second derivatives
  included, so that it serves training as well as MD.

A stage runs its kernel form when kernels are enabled for it (:func:`use_kernels`, called by the
model builders and by ``nequip-deploy build``, or nequip's model modifier
``enable_ReannKernels``) and its input is on the CPU; otherwise its torch form.
"""

import logging

import torch

from .kernels import load_kernels


class KernelStage(torch.nn.Module):
    """A stage with a torch form and a CPU-kernel form; :meth:`runs_kernels` decides which runs."""

    kernels: bool

    def __init__(self):
        super().__init__()
        self.kernels = False

    def kernel_form_available(self) -> bool:
        """Whether this stage's kernel form computes what its torch form does (e.g. the element
        networks' kernels have no dropout)."""
        return True

    def runs_kernels(self, x: torch.Tensor) -> bool:
        """Whether the kernel form runs on input ``x``: kernels enabled and ``x`` on the CPU."""
        return self.kernels and x.device.type == "cpu"


def use_kernels(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """Enable (or disable) the kernel form of every stage of ``model`` that has one; returns
    ``model``. Enabling loads the kernel library, and raises if it is missing."""
    if enabled:
        load_kernels()
    for stage in model.modules():
        if isinstance(stage, KernelStage):
            stage.kernels = enabled and stage.kernel_form_available()
            if enabled and not stage.kernels:
                logging.getLogger(__name__).info(
                    "%s keeps its torch form (no kernel form with its options)",
                    type(stage).__name__,
                )
    return model
