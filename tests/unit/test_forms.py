"""Every stage with two forms gives the same numbers in both: the C++ kernels (at every
instruction-set level this CPU runs) and the torch operations, in float32 and float64, with their
first and second derivatives (what force training differentiates)."""

import pytest
import torch
from nequip.data import AtomicDataDict
from nequip.utils.global_state import set_global_state

from reann_nequip.nn import (
    ElementNetworks,
    RecursiveEmbeddedDensity,
    SpeciesGaussianBasis,
    use_kernels,
)
from reann_nequip.nn.kernels import kernel_isa, supported_kernel_isas

from ..utils import randomize_parameters

TYPE_NAMES = ["H", "C", "O"]
NUM_GAUSSIANS = 8
NETWORK = {
    "hidden": [6, 5],
    "num_blocks": 1,
    "activation": "relu_like",
    "layer_norm": True,
    "dropout": [0.0, 0.0],
}
# relative agreement of the two forms, by dtype
TOLERANCE = {torch.float64: 1e-9, torch.float32: 2e-3}


@pytest.fixture(scope="module", autouse=True)
def global_state():
    set_global_state()


@pytest.fixture(params=supported_kernel_isas())
def isa(request):
    """Each instruction-set level of the kernels this CPU runs, the default one restored after."""
    default = kernel_isa()
    torch.ops.reann.set_kernel_isa(request.param)
    yield request.param
    torch.ops.reann.set_kernel_isa(default)


@pytest.fixture(params=[torch.float64, torch.float32], ids=["float64", "float32"])
def dtype(request):
    return request.param


def random_graph(dtype, num_atoms=9, num_edges=40, seed=0):
    """Random edges (some centres without any, an atom with many) with vectors of 0.8–3.5 Å."""
    generator = torch.Generator().manual_seed(seed)
    center = torch.randint(0, num_atoms - 2, (num_edges,), generator=generator)
    center[:8] = 0
    neighbor = torch.randint(0, num_atoms, (num_edges,), generator=generator)
    direction = torch.randn(num_edges, 3, generator=generator, dtype=torch.float64)
    length = 0.8 + 2.7 * torch.rand(num_edges, 1, generator=generator, dtype=torch.float64)
    vectors = (direction / direction.norm(dim=1, keepdim=True) * length).to(dtype)
    types = torch.randint(0, len(TYPE_NAMES), (num_atoms,), generator=generator)
    return vectors, torch.stack([center, neighbor]), types


def both_forms(stage, run, inputs, seed=1):
    """``run(*inputs)`` with ``stage``'s kernel form and its torch form: the output, the
    gradients of <w, output> with respect to the inputs (kept differentiable), and the gradients
    of a loss of those with respect to the inputs and the stage's parameters."""
    results = {}
    for kernels in (True, False):
        use_kernels(stage, kernels)
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        output = run(*leaves)
        generator = torch.Generator().manual_seed(seed)
        weights = torch.randn(output.shape, generator=generator, dtype=torch.float64)
        first = torch.autograd.grad(
            (output * weights.to(output.dtype)).sum(),
            leaves,
            create_graph=True,
            materialize_grads=True,
        )
        loss = sum(
            (g * torch.randn(g.shape, generator=generator, dtype=torch.float64).to(g.dtype)).sum()
            for g in first
            if g.requires_grad
        )
        parameters = [p for p in stage.parameters() if p.requires_grad]
        second = torch.autograd.grad(loss, leaves + parameters, allow_unused=True)
        results[kernels] = (
            output.detach(),
            [g.detach() for g in first],
            [None if g is None else g.detach() for g in second],
        )
    return results[True], results[False]


def assert_forms_agree(kernel, torch_form, dtype):
    tolerance = TOLERANCE[dtype]
    for what, a, b in zip(("output", "first", "second"), kernel, torch_form):
        pairs = [(a, b)] if what == "output" else list(zip(a, b))
        for index, (x, y) in enumerate(pairs):
            if x is None or y is None:
                assert x is None or float(x.abs().max()) == 0.0, f"{what}[{index}]"
                assert y is None or float(y.abs().max()) == 0.0, f"{what}[{index}]"
                continue
            scale = max(float(y.abs().max()), 1e-6)
            error = float((x - y).abs().max())
            assert error <= tolerance * scale, (
                f"{what}[{index}]: kernel and torch forms differ by {error:.3e} (scale {scale:.3e})"
            )
    assert float(torch_form[0].abs().max()) > 1e-3, "degenerate test: the output vanishes"


def test_radial_functions_agree_in_both_forms(isa, dtype):
    with torch.random.fork_rng():
        torch.manual_seed(3)
        stage = SpeciesGaussianBasis(
            TYPE_NAMES,
            r_max=3.0,
            num_gaussians=NUM_GAUSSIANS,
            irreps_in={AtomicDataDict.NORM_LENGTH_KEY: "0e"},
        )
    stage = stage.to(dtype)
    stage._model_dtype = dtype
    vectors, edge_index, types = random_graph(dtype)
    length = vectors.to(torch.float64).norm(dim=1).to(dtype)

    def run(length):
        data = {
            AtomicDataDict.EDGE_LENGTH_KEY: length.unsqueeze(1),
            AtomicDataDict.NORM_LENGTH_KEY: length.unsqueeze(1) / 3.0,
            AtomicDataDict.EDGE_INDEX_KEY: edge_index,
            AtomicDataDict.ATOM_TYPE_KEY: types,
        }
        return stage(data)[AtomicDataDict.EDGE_EMBEDDING_KEY]

    assert_forms_agree(*both_forms(stage, run, [length]), dtype)


@pytest.mark.parametrize("num_recursions", [0, 2])
@pytest.mark.parametrize("l_max", [0, 2, 3])
def test_density_agrees_in_both_forms(isa, dtype, num_recursions, l_max):
    with torch.random.fork_rng():
        torch.manual_seed(4)
        stage = RecursiveEmbeddedDensity(
            TYPE_NAMES,
            num_gaussians=NUM_GAUSSIANS,
            l_max=l_max,
            num_orbitals=11,
            num_recursions=num_recursions,
            shared_mixing=False,
            initial_coefficient=0.3,
            coefficient_network=NETWORK,
            irreps_in={AtomicDataDict.EDGE_EMBEDDING_KEY: f"{NUM_GAUSSIANS}x0e"},
        )
    stage = randomize_parameters(stage.to(dtype), seed=2)
    stage._model_dtype = dtype
    vectors, edge_index, types = random_graph(dtype)
    generator = torch.Generator().manual_seed(5)
    radial = torch.rand(vectors.shape[0], NUM_GAUSSIANS, generator=generator).to(dtype)

    def run(vectors, radial):
        data = {
            AtomicDataDict.EDGE_VECTORS_KEY: vectors,
            AtomicDataDict.EDGE_LENGTH_KEY: vectors.norm(dim=1, keepdim=True),
            AtomicDataDict.EDGE_EMBEDDING_KEY: radial,
            AtomicDataDict.EDGE_INDEX_KEY: edge_index,
            AtomicDataDict.ATOM_TYPE_KEY: types,
        }
        return stage(data)[AtomicDataDict.NODE_FEATURES_KEY]

    assert_forms_agree(*both_forms(stage, run, [vectors, radial]), dtype)


@pytest.mark.parametrize("activation", ["relu_like", "tanh_like", "silu"])
@pytest.mark.parametrize("layer_norm", [True, False])
@pytest.mark.parametrize("num_blocks", [0, 2])
@pytest.mark.parametrize("mixing", [False, True], ids=["density", "gram_and_mixing"])
def test_element_networks_agree_in_both_forms(
    isa, dtype, activation, layer_norm, num_blocks, mixing
):
    options = {**NETWORK, "activation": activation, "layer_norm": layer_norm}
    options["num_blocks"] = num_blocks
    with torch.random.fork_rng():
        torch.manual_seed(6)
        stage = ElementNetworks(len(TYPE_NAMES), 7, 3, **options)
    stage = randomize_parameters(stage.to(dtype), seed=3)
    generator = torch.Generator().manual_seed(7)
    # a standardised input (shift and scale per element and feature)
    stage.input_shift.copy_(torch.randn(stage.input_shift.shape, generator=generator))
    stage.input_scale.copy_(0.1 + torch.rand(stage.input_scale.shape, generator=generator))
    # the last element has no atoms
    types = torch.tensor([0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1])
    x = torch.randn(types.shape[0], 5 if mixing else 7, generator=generator).to(dtype)
    input_mixing = torch.randn(5, 7, generator=generator).to(dtype) if mixing else None

    def run(x):
        return stage(x, types, input_mixing)

    assert_forms_agree(*both_forms(stage, run, [x]), dtype)


def test_element_networks_with_dropout_keep_their_torch_form():
    stage = ElementNetworks(2, 4, 1, **{**NETWORK, "dropout": [0.1, 0.0]})
    use_kernels(stage, True)
    assert not stage.kernels
