"""Row-wise functions whose autograd graph keeps only their inputs: backward passes recompute.

Force training differentiates the force graph once more, so the tensors a function saves for
its backward pass, and those its backward pass saves in turn, live until the end of the
training step. :func:`recomputed` keeps the inputs and, in the force graph, the incoming
gradient instead; the derivatives come from evaluating the function again, a chunk of rows at a
time (once for forces, once more for their gradients). For cheap elementwise functions of wide
per-edge tensors.
"""

from typing import Callable, List, Optional, Sequence, Tuple

import torch

CHUNK_ROWS = 65536


def recomputed(
    function: Callable[..., torch.Tensor],
    inputs: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    parameters: Sequence[torch.Tensor],
) -> torch.Tensor:
    """``function(*inputs, *labels)``, differentiable twice with respect to the floating-point
    ``inputs`` and the ``parameters`` it reads (every tensor that needs a gradient and is not
    an input). Row r of the output must depend only on row r of the inputs and of the integer
    ``labels`` (e.g. species); ``function`` must be deterministic."""
    return _Recomputed.apply(function, len(inputs), len(labels), *inputs, *labels, *parameters)


class _Recomputed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, function, num_inputs: int, num_labels: int, *tensors):
        ctx.function, ctx.sizes = function, (num_inputs, num_labels)
        ctx.save_for_backward(*tensors[: num_inputs + num_labels])
        ctx.parameters = tensors[num_inputs + num_labels :]
        return function(*tensors[: num_inputs + num_labels])

    @staticmethod
    def backward(ctx, grad_output):
        num_inputs, num_labels = ctx.sizes
        gradients = _RecomputedGradient.apply(
            ctx.function, num_inputs, num_labels, grad_output, *ctx.saved_tensors, *ctx.parameters
        )
        return (
            None,
            None,
            None,
            *gradients[:num_inputs],
            *([None] * num_labels),
            *gradients[num_inputs:],
        )


def _row_chunks(num_rows: int) -> List[Tuple[int, int]]:
    """(start, length) of the chunks; one empty chunk for no rows."""
    return [
        (start, min(CHUNK_ROWS, num_rows - start))
        for start in range(0, max(num_rows, 1), CHUNK_ROWS)
    ]


def _gradients(
    function,
    grad_output: torch.Tensor,
    inputs: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    parameters: Sequence[torch.Tensor],
    grad_gradients: Optional[Sequence[Optional[torch.Tensor]]],
) -> List[Optional[torch.Tensor]]:
    """For ``grad_gradients`` None: the gradients of <grad_output, function(inputs, labels)>
    with respect to ``inputs`` and ``parameters``. Otherwise the gradients of
    <grad_gradients, those gradients> with respect to ``grad_output``, ``inputs`` and
    ``parameters``. None where there is no dependence."""
    outer = [tensor.detach().requires_grad_(True) for tensor in (grad_output, *inputs)]
    with torch.enable_grad():
        output = function(*outer[1:], *labels)
        first = _grad(
            [output],
            [*outer[1:], *parameters],
            [outer[0]],
            create_graph=grad_gradients is not None,
        )
        if grad_gradients is None:
            return first
        reached = [
            (gradient, incoming)
            for gradient, incoming in zip(first, grad_gradients)
            if gradient is not None and gradient.requires_grad and incoming is not None
        ]
        return _grad(
            [gradient for gradient, _ in reached],
            [*outer, *parameters],
            [incoming for _, incoming in reached],
        )


def _grad(
    outputs: List[torch.Tensor],
    tensors: Sequence[torch.Tensor],
    grad_outputs: List[torch.Tensor],
    create_graph: bool = False,
) -> List[Optional[torch.Tensor]]:
    """torch.autograd.grad with respect to those ``tensors`` that require a gradient; None for
    the others, and for all when ``outputs`` is empty."""
    wanted = [index for index, tensor in enumerate(tensors) if tensor.requires_grad]
    result: List[Optional[torch.Tensor]] = [None] * len(tensors)
    if outputs and wanted:
        gradients = torch.autograd.grad(
            outputs,
            [tensors[index] for index in wanted],
            grad_outputs,
            create_graph=create_graph,
            allow_unused=True,
        )
        for index, gradient in zip(wanted, gradients):
            result[index] = gradient
    return result


def _chunked_gradients(
    function,
    saved: Sequence[torch.Tensor],
    num_inputs: int,
    parameters: Sequence[torch.Tensor],
    grad_gradients: Optional[Sequence[Optional[torch.Tensor]]] = None,
) -> List[torch.Tensor]:
    """:func:`_gradients` a chunk of rows at a time, ``saved`` = (grad_output, inputs, labels):
    the row-wise results concatenated (inputs' gradients, and first grad_output's for the
    second derivative), the parameters' summed; zeros where there is no dependence."""
    second_order = grad_gradients is not None
    num_row_results = num_inputs + int(second_order)
    rows: List[List[torch.Tensor]] = [[] for _ in range(num_row_results)]
    totals: List[Optional[torch.Tensor]] = [None] * len(parameters)
    for start, length in _row_chunks(saved[0].shape[0]):
        chunk = [tensor.narrow(0, start, length) for tensor in saved]
        incoming = None
        if second_order:
            incoming = [
                g if g is None or index >= num_inputs else g.narrow(0, start, length)
                for index, g in enumerate(grad_gradients)
            ]
        result = _gradients(
            function,
            chunk[0],
            chunk[1 : 1 + num_inputs],
            chunk[1 + num_inputs :],
            parameters,
            incoming,
        )
        shaped_like = chunk[:num_row_results] if second_order else chunk[1 : 1 + num_inputs]
        for index, like in enumerate(shaped_like):
            value = result[index]
            rows[index].append(torch.zeros_like(like) if value is None else value)
        for index, value in enumerate(result[num_row_results:]):
            if value is not None:
                totals[index] = value if totals[index] is None else totals[index] + value
    return [torch.cat(parts) for parts in rows] + [
        torch.zeros_like(parameter) if total is None else total
        for parameter, total in zip(parameters, totals)
    ]


class _RecomputedGradient(torch.autograd.Function):
    """(grad_output, inputs, labels, parameters) → the gradients of ``function`` with respect to
    inputs and parameters, itself differentiable once (recomputing ``function`` twice)."""

    @staticmethod
    def forward(ctx, function, num_inputs: int, num_labels: int, grad_output, *tensors):
        ctx.function, ctx.sizes = function, (num_inputs, num_labels)
        ctx.save_for_backward(grad_output, *tensors[: num_inputs + num_labels])
        ctx.parameters = tensors[num_inputs + num_labels :]
        return tuple(
            _chunked_gradients(
                function,
                [grad_output, *tensors[: num_inputs + num_labels]],
                num_inputs,
                ctx.parameters,
            )
        )

    @staticmethod
    def backward(ctx, *grad_gradients):
        if torch.is_grad_enabled():
            raise RuntimeError("a recomputed function has no third derivative")
        num_inputs, num_labels = ctx.sizes
        second = _chunked_gradients(
            ctx.function, ctx.saved_tensors, num_inputs, ctx.parameters, grad_gradients
        )
        # (grad_output, inputs) by rows, then parameters; no gradient for the labels
        return (
            None,
            None,
            None,
            *second[: 1 + num_inputs],
            *([None] * num_labels),
            *second[1 + num_inputs :],
        )
