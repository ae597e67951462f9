"""REANN's per-element residual networks (its ``NNMod`` of ``ResBlock``s), one per element.

The weights of all elements are stacked along a leading type dimension. Torch form: every atom
goes through every element's network as one batched product per layer, and each atom keeps its
own element's output (static shapes, for graph capture and other devices). Kernel form:
``reann::element_networks`` groups the atoms by element and runs each group through its own
network only, with first and second derivatives.
"""

import math
from typing import Dict, List, Optional, Tuple

import torch

from .activations import ACTIVATIONS, ElementActivation
from .forms import KernelStage


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[num_types, num_atoms, in] → [num_types, num_atoms, out], row t by element t."""
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)


class ElementLayerNorm(torch.nn.Module):
    """Layer normalisation with per-element affine parameters (REANN's ``table_norm``)."""

    def __init__(self, num_types: int, width: int):
        super().__init__()
        self.width = width
        self.weight = torch.nn.Parameter(torch.ones(num_types, width))
        self.bias = torch.nn.Parameter(torch.zeros(num_types, width))

    def parameter_list(self) -> List[torch.Tensor]:
        """[γ, δ], [num_types, width] each: the kernel form's arguments."""
        return [self.weight, self.bias]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[num_types, num_atoms, width], row t by element t's γ and δ."""
        normalised = torch.nn.functional.layer_norm(x, [self.width])
        return normalised * self.weight.unsqueeze(1) + self.bias.unsqueeze(1)


class Passthrough(torch.nn.Module):
    """Stands in for :class:`ElementLayerNorm` when normalisation is off."""

    def parameter_list(self) -> List[torch.Tensor]:
        return []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


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
        self.linear = ElementLinear(num_types, width, out_width, zero_weight=zero_output, bias=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(self.norm(self.activation(x))))


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for layer in self.layers:
            y = layer(y)
        return x + y


class ElementNetworks(KernelStage):
    """One residual network per element, applied to each atom by its element.

    Structure (REANN ``NNMod``): linear(in → h1) → ``num_blocks`` residual blocks →
    activation → linear(h1 → out). The output layer starts at zero (weights and bias), so a
    new network outputs zero for every atom. The kernel form has no dropout, so networks with
    dropout keep their torch form.

    The input layer reads the input shifted and scaled, (x − μ_Z) / σ_Z, with μ (per element and
    feature) and σ (per element) fixed buffers, 0 and 1 until :meth:`standardize_inputs` sets
    them from data: REANN's densities are small numbers that vary little between atoms, and a
    raw input layer would need weights as large as the inverse of that spread. The shift and
    scale enter the input layer's weights and bias, so the kernels never see them.

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
        self.has_dropout = any(p > 0 for p in dropout)
        self.input_linear = ElementLinear(
            num_types, in_features, hidden[0], zero_weight=False, bias=None
        )
        self.register_buffer("input_shift", torch.zeros(num_types, in_features))  # μ
        self.register_buffer("input_scale", torch.ones(num_types, in_features))  # σ
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

    def kernel_form_available(self) -> bool:
        return not self.has_dropout

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints and packages of versions without the standardisation read their input raw
        state_dict.setdefault(prefix + "input_shift", torch.zeros_like(self.input_shift))
        state_dict.setdefault(prefix + "input_scale", torch.ones_like(self.input_scale))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(
        self,
        x: torch.Tensor,
        atom_types: torch.Tensor,
        input_mixing: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``x``: [num_atoms, in_features]; ``atom_types``: [num_atoms] → [num_atoms, out].

        A linear map of the input can be folded into the input layer: with ``input_mixing`` Q
        [F, in_features], ``x`` is [num_atoms, F] and the networks read x Q, as x (Q W) + b."""
        # ((x − μ) / σ) W + b = x (W / σ) + (b − (μ / σ) W)
        input_weight = self.input_linear.weight / self.input_scale.unsqueeze(-1)
        input_bias = self.input_linear.bias - torch.bmm(
            self.input_shift.unsqueeze(1), input_weight
        ).squeeze(1)  # [num_types, h1]
        if input_mixing is not None:
            input_weight = torch.matmul(input_mixing, input_weight)  # [num_types, F, h1]
        if self.runs_kernels(x):
            return self.kernel_form(x, atom_types, input_weight, input_bias)
        return self.torch_form(x, atom_types, input_weight, input_bias)

    def standardize_inputs(self, x: torch.Tensor, atom_types: torch.Tensor) -> None:
        """Set μ to the mean of ``x`` [num_atoms, in_features] (the input the networks read,
        after any ``input_mixing``) and σ to the root mean square of its standard deviations, one
        σ per element for all features, over the atoms of each element whose input is not all
        zero (isolated atoms carry no information on the spread). One σ per element keeps the
        features' relative sizes: a feature that hardly varies in the data stays small instead
        of amplifying its noise, and its force contributions, by 1 / its spread. Elements
        without such atoms keep μ = 0 and σ = 1."""
        with torch.no_grad():
            present = (x != 0).any(dim=1)
            for element in range(self.num_types):
                rows = x[present & (atom_types == element)].to(self.input_shift.dtype)
                if rows.shape[0] < 2:
                    continue
                spread = rows.var(dim=0, unbiased=False).mean().sqrt()
                if not spread > 0:
                    continue
                self.input_shift[element] = rows.mean(dim=0)
                self.input_scale[element] = spread

    def torch_form(
        self,
        x: torch.Tensor,
        atom_types: torch.Tensor,
        input_weight: torch.Tensor,
        input_bias: torch.Tensor,
    ) -> torch.Tensor:
        """Every atom through every element's network, its own element's output kept."""
        expanded = x.unsqueeze(0).expand(self.num_types, -1, -1)  # [num_types, num_atoms, in]
        h = torch.baddbmm(input_bias.unsqueeze(1), expanded, input_weight)
        for block in self.blocks:
            h = block(h)
        out = self.output_linear(self.output_activation(h))  # [num_types, num_atoms, out]
        own = atom_types.view(1, -1, 1).expand(1, -1, self.out_features)
        return torch.gather(out, 0, own).squeeze(0)

    def kernel_form(
        self,
        x: torch.Tensor,
        atom_types: torch.Tensor,
        input_weight: torch.Tensor,
        input_bias: torch.Tensor,
    ) -> torch.Tensor:
        """The same by ``reann::element_networks``."""
        weights = [input_weight]
        biases = [input_bias]
        activations: List[torch.Tensor] = []
        norms: List[torch.Tensor] = []
        for block in self.blocks:
            for layer in block.layers:
                weights.append(layer.linear.weight)
                biases.append(layer.linear.bias)
                activations.extend(layer.activation.parameter_list())
                norms.extend(layer.norm.parameter_list())
        weights.append(self.output_linear.weight)
        biases.append(self.output_linear.bias)
        activations.extend(self.output_activation.parameter_list())
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


def standardize_new_networks(model: torch.nn.Module, batches) -> int:
    """Standardise the inputs of every :class:`ElementNetworks` of ``model`` whose output layer
    is still zero, from what it reads when ``model`` runs on ``batches`` (an iterable of
    ``model`` inputs); returns the number of networks standardised.

    A network whose output layer is zero outputs zero whatever its input layer, so this changes
    nothing the model computes; it only sets the scale the training starts from. Trained
    networks (e.g. a resumed or imported model) are left alone."""
    inputs: Dict[ElementNetworks, List[Tuple[torch.Tensor, torch.Tensor]]] = {}

    def record(network: ElementNetworks, args: Tuple) -> None:
        x, atom_types = args[0], args[1]
        mixing = args[2] if len(args) > 2 else None
        if mixing is not None:
            x = x @ mixing
        inputs.setdefault(network, []).append((x.detach(), atom_types.detach()))

    new = [
        m
        for m in model.modules()
        if isinstance(m, ElementNetworks)
        and not m.output_linear.weight.any()
        and not m.output_linear.bias.any()
    ]
    hooks = [network.register_forward_pre_hook(record) for network in new]
    try:
        for batch in batches:
            model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    for network, seen in inputs.items():
        network.standardize_inputs(
            torch.cat([x for x, _ in seen]), torch.cat([types for _, types in seen])
        )
    return len(inputs)
