"""REANN's per-element residual networks (its ``NNMod`` of ``ResBlock``s), one per element.

The weights of all elements are stacked along a leading type dimension. The atoms of each
element are gathered once, pushed through that element's whole network with plain matmuls and
broadcast per-neuron parameters, and scattered back: every atom costs the arithmetic of its own
network only. With the kernel library, eval mode runs the same in one C++ op
(``reann::element_networks``).
"""

import math
from typing import List, Optional

import torch

from .activations import ACTIVATIONS, ElementActivation
from .graph_capture import capturing_graph
from .kernels import load_kernels


class ElementLinear(torch.nn.Module):
    """A linear layer with separate weights per element.

    Args:
        num_types (int): number of elements
        in_features (int): input width
        out_features (int): output width
        zero_weight (bool): start with zero weights (REANN's residual and output layers, so a
            block starts as the identity and a network as a constant) instead of Xavier-uniform
        bias (float | None): constant initial bias, or ``None`` for PyTorch's uniform
            ±1/sqrt(in_features)
    """

    def __init__(
        self,
        num_types: int,
        in_features: int,
        out_features: int,
        zero_weight: bool,
        bias: Optional[float],
    ):
        super().__init__()
        weight = torch.zeros(num_types, in_features, out_features)
        if not zero_weight:
            bound = math.sqrt(6.0 / (in_features + out_features))
            torch.nn.init.uniform_(weight, -bound, bound)
        if bias is None:
            bound = 1.0 / math.sqrt(in_features)
            initial_bias = torch.empty(num_types, out_features).uniform_(-bound, bound)
        else:
            initial_bias = torch.full((num_types, out_features), float(bias))
        self.weight = torch.nn.Parameter(weight)  # [num_types, in, out]
        self.bias = torch.nn.Parameter(initial_bias)  # [num_types, out]

    def forward(
        self, x: torch.Tensor, element: int, input_mixing: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``x``: [num_atoms, in] of atoms of one ``element`` → [num_atoms, out]; or, with
        ``input_mixing`` Q [F, in], ``x`` [num_atoms, F] whose product x Q is the input, taken
        as x (Q W) + b so that x Q is never formed."""
        weight = self.weight[element]
        if input_mixing is not None:
            weight = torch.mm(input_mixing, weight)
        return torch.addmm(self.bias[element], x, weight)


class ElementLayerNorm(torch.nn.Module):
    """Layer normalisation with per-element affine parameters (REANN's ``table_norm``)."""

    def __init__(self, num_types: int, width: int):
        super().__init__()
        self.width = width
        self.weight = torch.nn.Parameter(torch.ones(num_types, width))
        self.bias = torch.nn.Parameter(torch.zeros(num_types, width))

    def affine(self) -> List[torch.Tensor]:
        """[γ, δ], [num_types, width] each."""
        return [self.weight, self.bias]

    def forward(self, x: torch.Tensor, element: int) -> torch.Tensor:
        return torch.nn.functional.layer_norm(
            x, [self.width], self.weight[element], self.bias[element]
        )


class HiddenLayer(torch.nn.Module):
    """activation → LayerNorm (if enabled) → dropout → linear, for one hidden width."""

    def __init__(
        self,
        num_types: int,
        width: int,
        fan_in: int,
        out_width: int,
        activation: str,
        layer_norm: bool,
        dropout: float,
        zero_output: bool,
    ):
        super().__init__()
        self.activation = ElementActivation(activation, num_types, width, fan_in)
        self.norm = ElementLayerNorm(num_types, width) if layer_norm else Passthrough()
        self.dropout = torch.nn.Dropout(dropout)
        self.linear = ElementLinear(
            num_types,
            width,
            out_width,
            zero_weight=zero_output,
            bias=0.0,
        )

    def forward(self, x: torch.Tensor, element: int) -> torch.Tensor:
        x = self.norm(self.activation(x, element), element)
        return self.linear(self.dropout(x), element)


class Passthrough(torch.nn.Module):
    """Stands in for :class:`ElementLayerNorm` when normalisation is off."""

    def affine(self) -> List[torch.Tensor]:
        return []

    def forward(self, x: torch.Tensor, element: int) -> torch.Tensor:
        return x


class ResidualBlock(torch.nn.Module):
    """x + f(x), f a chain of :class:`HiddenLayer` running h1 → h2 → … → hn → h1.

    The last linear starts at zero, so the block starts as the identity (REANN's ``ResBlock``).
    """

    def __init__(
        self,
        num_types: int,
        hidden: List[int],
        activation: str,
        layer_norm: bool,
        dropout: List[float],
    ):
        super().__init__()
        widths = list(hidden) + [hidden[0]]
        self.layers = torch.nn.ModuleList(
            [
                HiddenLayer(
                    num_types,
                    width=widths[i],
                    # β is initialised from the true input width (REANN passes `norbit`
                    # for the first layer of every block, whatever feeds it)
                    fan_in=widths[i - 1] if i > 0 else widths[-1],
                    out_width=widths[i + 1],
                    activation=activation,
                    layer_norm=layer_norm,
                    dropout=dropout[i],
                    zero_output=i == len(hidden) - 1,
                )
                for i in range(len(hidden))
            ]
        )

    def forward(self, x: torch.Tensor, element: int) -> torch.Tensor:
        y = x
        for layer in self.layers:
            y = layer(y, element)
        return x + y


class ElementNetworks(torch.nn.Module):
    """One residual network per element, applied to each atom by its element.

    Structure (REANN ``NNMod``): linear(in → h1) → ``num_blocks`` residual blocks →
    activation → linear(h1 → out). The output layer starts at zero (weights and bias), so a
    new network outputs zero for every atom.

    After :meth:`use_fused_kernel`, eval mode on CPU runs all elements' networks in one C++ op
    (``reann::element_networks``); its backward pass gives input gradients only (forces), so
    training mode (and other devices) keep the torch form.

    Args:
        num_types (int): number of elements
        in_features (int): input width (the density width ``num_orbitals``)
        out_features (int): output width
        hidden (list[int]): REANN's ``nl``, hidden widths h1 … hn
        num_blocks (int): REANN's ``nblock``, number of residual blocks
        activation (str): ``relu_like``, ``tanh_like`` or ``silu``
        layer_norm (bool): REANN's ``table_norm``
        dropout (list[float]): dropout probability per hidden layer
    """

    def __init__(
        self,
        num_types: int,
        in_features: int,
        out_features: int,
        hidden: List[int],
        num_blocks: int,
        activation: str,
        layer_norm: bool,
        dropout: List[float],
    ):
        super().__init__()
        self.num_types = num_types
        self.out_features = out_features
        self.layers_per_block = len(hidden)
        self.activation_code = ACTIVATIONS.index(activation)
        self.fused = False
        self.input_linear = ElementLinear(
            num_types, in_features, hidden[0], zero_weight=False, bias=None
        )
        self.blocks = torch.nn.ModuleList(
            [
                ResidualBlock(num_types, hidden, activation, layer_norm, dropout)
                for _ in range(num_blocks)
            ]
        )
        self.output_activation = ElementActivation(activation, num_types, hidden[0], hidden[-1])
        self.output_linear = ElementLinear(
            num_types, hidden[0], out_features, zero_weight=True, bias=0.0
        )

    def forward(
        self,
        x: torch.Tensor,
        atom_types: torch.Tensor,
        input_mixing: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``x``: [num_atoms, in_features]; ``atom_types``: [num_atoms] → [num_atoms, out].

        A linear map of the input can be folded into the input layer: with ``input_mixing`` Q
        [F, in_features], ``x`` is [num_atoms, F] and the networks read x Q."""
        fused = self.fused and not self.training and x.device.type == "cpu"
        if fused and not capturing_graph():
            return self.fused_forward(x, atom_types, input_mixing)
        out = torch.zeros(x.shape[0], self.out_features, dtype=x.dtype, device=x.device)
        if capturing_graph():
            # static shapes: every atom through every element's network, its own one kept
            for element in range(self.num_types):
                own = (atom_types == element).unsqueeze(-1)  # [num_atoms, 1]
                out = torch.where(own, self.element_forward(x, element, input_mixing), out)
            return out
        for element in range(self.num_types):
            atoms = torch.nonzero(atom_types == element).view(-1)
            y = self.element_forward(torch.index_select(x, 0, atoms), element, input_mixing)
            out = torch.index_copy(out, 0, atoms, y)
        return out

    def fold_input_mixing(self, mixing: torch.Tensor) -> None:
        """The input layer takes a fixed linear map Q [F, in_features] of its input, W ← Q W
        [num_types, F, H], once: the networks then read x [num_atoms, F] where they read x Q
        before (deployed files; W no longer trains)."""
        layer = self.input_linear
        with torch.no_grad():
            folded = torch.matmul(mixing, layer.weight)
        layer.weight = torch.nn.Parameter(folded, requires_grad=False)

    def use_fused_kernel(self) -> None:
        """Run eval mode with the C++ op; raises if the kernel library is not built."""
        load_kernels()
        self.fused = True

    def fused_forward(
        self,
        x: torch.Tensor,
        atom_types: torch.Tensor,
        input_mixing: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """:meth:`forward` as one ``reann::element_networks`` call."""
        input_weight = self.input_linear.weight
        if input_mixing is not None:
            input_weight = torch.matmul(input_mixing, input_weight)
        weights = [input_weight]
        biases = [self.input_linear.bias]
        activations: List[torch.Tensor] = []
        norms: List[torch.Tensor] = []
        for block in self.blocks:
            for layer in block.layers:
                weights.append(layer.linear.weight)
                biases.append(layer.linear.bias)
                activations.extend(layer.activation.affine())
                norms.extend(layer.norm.affine())
        weights.append(self.output_linear.weight)
        biases.append(self.output_linear.bias)
        activations.extend(self.output_activation.affine())
        return torch.ops.reann.element_networks(
            x,
            atom_types,
            weights,
            biases,
            activations,
            norms,
            self.activation_code,
            self.layers_per_block,
        )

    def element_forward(
        self, x: torch.Tensor, element: int, input_mixing: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``x``: [num_atoms, in_features] (or [num_atoms, F] with ``input_mixing`` [F,
        in_features], see :meth:`forward`) of atoms of one ``element`` → [num_atoms, out]."""
        x = self.input_linear(x, element, input_mixing)
        for block in self.blocks:
            x = block(x, element)
        x = self.output_activation(x, element)
        return self.output_linear(x, element)


def use_fused_networks(module: torch.nn.Module) -> None:
    """Every :class:`ElementNetworks` in ``module`` runs eval mode with the C++ op; raises if
    the kernel library is not built."""
    for submodule in module.modules():
        if isinstance(submodule, ElementNetworks):
            submodule.use_fused_kernel()
