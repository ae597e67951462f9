"""REANN's activation functions, with one set of learnable parameters per element.

REANN gives every neuron of every element network its own learnable amplitude α and
slope β (its ``Relu_like`` and ``Tanh_like``); SiLU is offered as a parameter-free option.
Parameters are stacked over elements; a call processes every element at once.
"""

import math
from typing import List

import torch

ACTIVATIONS = ("relu_like", "tanh_like", "silu")


class ElementActivation(torch.nn.Module):
    """Activation with per-element, per-neuron learnable α and β.

    ``relu_like``: y = α ⊙ SiLU(β ⊙ x), initialised α = 1, β = 1/fan_in.
    ``tanh_like``: y = α ⊙ x / sqrt(1 + (β ⊙ x)²), initialised α = 1/sqrt(fan_in), β = 1/fan_in.
    ``silu``: y = SiLU(x), no parameters.

    Args:
        kind (str): one of ``relu_like``, ``tanh_like``, ``silu``
        num_types (int): number of elements
        width (int): number of neurons
        fan_in (int): width of the layer feeding this activation; sets the initial β
    """

    kind: str

    def __init__(self, kind: str, num_types: int, width: int, fan_in: int):
        super().__init__()
        if kind not in ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {ACTIVATIONS}, found {kind!r}")
        self.kind = kind
        if kind == "tanh_like":
            alpha, beta = 1.0 / math.sqrt(fan_in), 1.0 / fan_in
        else:
            alpha, beta = 1.0, 1.0 / fan_in
        if kind == "silu":
            # parameter-free; empty placeholders keep the module scriptable
            self.register_buffer("alpha", torch.empty(0))
            self.register_buffer("beta", torch.empty(0))
        else:
            self.alpha = torch.nn.Parameter(torch.full((num_types, width), alpha))
            self.beta = torch.nn.Parameter(torch.full((num_types, width), beta))

    def parameter_list(self) -> List[torch.Tensor]:
        """[α, β] ([num_types, width] each), or none for SiLU: the kernel form's arguments."""
        if self.kind == "silu":
            return []
        return [self.alpha, self.beta]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: [num_types, num_atoms, width], row t through element t's parameters."""
        if self.kind == "silu":
            return torch.nn.functional.silu(x)
        alpha, beta = self.alpha.unsqueeze(1), self.beta.unsqueeze(1)  # [num_types, 1, width]
        if self.kind == "relu_like":
            return alpha * torch.nn.functional.silu(beta * x)
        return alpha * x * torch.rsqrt(1.0 + (beta * x).square())
