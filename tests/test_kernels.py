"""The C++ kernels equal the torch forms: ``reann::orbital_gram`` and the neighbour-block
placement (``neighbor_slots``, ``to_blocks``, ``from_blocks``) with first and second
derivatives, ``reann::radial_functions`` and ``reann::element_networks`` with first
derivatives."""

import pathlib
import subprocess
import sys

import pytest
import torch
from ase import Atoms
from nequip.utils.global_state import set_global_state

from reann_nequip.nn.kernels import library_path
from reann_nequip.model import ReannModel
from reann_nequip.nn import CartesianMonomials, ElementNetworks, FusedOrbitalGram, OrbitalGram
from reann_nequip.nn.embedded_density import fused_neighbor_blocks, neighbor_blocks
from reann_nequip.nn.radial_basis import FusedSpeciesGaussians, SpeciesGaussians

from .utils import model_input, randomize_parameters

pytestmark = pytest.mark.skipif(
    not library_path().exists(),
    reason="the kernel library is not built (`reann-nequip build-lammps`, or `make install`)",
)


@pytest.fixture(scope="module", autouse=True)
def kernels():
    from reann_nequip.nn.kernels import load_kernels

    load_kernels()


def random_blocks(num_centers, slots, num_gaussians, num_atoms, dtype, seed=0):
    """Random blocks as ``geometry`` makes them: each centre fills its first slots, the rest
    are padding (zero vectors, zero radial functions, neighbour 0)."""
    generator = torch.Generator().manual_seed(seed)
    vectors = 2.0 * torch.randn(num_centers, 3, slots, generator=generator, dtype=dtype)
    radial = torch.rand(num_centers, slots, num_gaussians, generator=generator, dtype=dtype)
    neighbor = torch.randint(0, num_atoms, (num_centers, slots), generator=generator)
    filled = torch.randint(0, slots + 1, (num_centers, 1), generator=generator)
    padding = torch.arange(slots).unsqueeze(0) >= filled  # [num_centers, slots]
    vectors = vectors.masked_fill(padding.unsqueeze(1), 0.0)
    radial = radial.masked_fill(padding.unsqueeze(2), 0.0)
    neighbor = neighbor.masked_fill(padding, 0).view(-1)
    coefficients = torch.randn(num_atoms, num_gaussians, generator=generator, dtype=dtype)
    return vectors, radial, neighbor, coefficients


def edges_in_blocks(num_centers, max_neighbors, num_gaussians, num_atoms, dtype, seed=0):
    """Random edges (0 … max_neighbors per centre) as ``geometry`` takes them: edge vectors
    [E, 3] with their ``edge_index`` and the number of centres, radial functions [E, K] and
    the coefficients of all atoms."""
    generator = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, max_neighbors + 1, (num_centers,), generator=generator)
    counts[0] = max_neighbors
    center = torch.repeat_interleave(torch.arange(num_centers), counts)
    num_edges = center.shape[0]
    vectors = 2.0 * torch.randn(num_edges, 3, generator=generator, dtype=dtype)
    radial = torch.rand(num_edges, num_gaussians, generator=generator, dtype=dtype)
    neighbor = torch.randint(0, num_atoms, (num_edges,), generator=generator)
    coefficients = torch.randn(num_atoms, num_gaussians, generator=generator, dtype=dtype)
    return (vectors, torch.stack([center, neighbor]), num_centers), radial, coefficients


def gram_of_edges(module, edges, radial, coefficients):
    """Leaf copies of the edges' vectors, radial functions and the coefficients, and G of them
    as the model computes it (blocks by ``module.neighbor_blocks``)."""
    vectors, edge_index, num_centers = edges
    inputs = [t.clone().requires_grad_(True) for t in (vectors, radial, coefficients)]
    geometry, radial_blocks, neighbor = module.neighbor_blocks(
        inputs[0], inputs[1], edge_index, num_centers
    )
    return inputs, module(geometry, radial_blocks, neighbor, inputs[2])


def gram_and_gradients(module, edges, radial, coefficients):
    """G and its weighted sum's gradients with respect to the edges' vectors and radial
    functions and the coefficients (the padding slots' own gradients differ by form: the
    kernel sees zero vectors there, the torch form zero monomials; neither reaches an edge)."""
    inputs, gram = gram_of_edges(module, edges, radial, coefficients)
    weights = torch.linspace(-1.0, 2.0, gram.numel(), dtype=gram.dtype).view_as(gram)
    (gram * weights).sum().backward()
    # at l_max = 0 the torch form does not depend on the vectors at all
    return [gram.detach()] + [torch.zeros_like(t) if t.grad is None else t.grad for t in inputs]


def second_derivatives(module, edges, radial, coefficients):
    """What force training differentiates: the first derivatives of <U, G> (U depends on a
    parameter u, as dG depends on the network weights), then the gradient of a weighted sum
    of those derivatives with respect to the edges' vectors and radial functions, the
    coefficients and u."""
    u = torch.tensor(0.7, dtype=edges[0].dtype, requires_grad=True)
    inputs, gram = gram_of_edges(module, edges, radial, coefficients)
    upstream = torch.linspace(-1.0, 2.0, gram.numel(), dtype=gram.dtype).view_as(gram)
    first = torch.autograd.grad(
        (gram * upstream * u + gram.square()).sum(), inputs, create_graph=True, allow_unused=True
    )
    loss = sum(
        (d * torch.cos(torch.arange(d.numel(), dtype=d.dtype)).view_as(d)).sum()
        for d in first
        if d is not None
    )
    second = torch.autograd.grad(loss, [*inputs, u], allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(second, [*inputs, u])]


@pytest.mark.parametrize("in_centre_order", [True, False])
def test_block_kernels_equal_torch_form(in_centre_order):
    """``reann::neighbor_slots`` and ``to_blocks`` place the edges as the torch form does
    (stable order within a centre, centres without edges all padding), and their backward
    passes (``from_blocks``, then ``to_blocks`` again) are exact to any order."""
    (vectors, edge_index, num_centers), radial, _ = edges_in_blocks(
        12, 6, 4, 20, torch.float64, seed=2
    )
    if not in_centre_order:
        order = torch.randperm(edge_index.shape[1], generator=torch.Generator().manual_seed(1))
        vectors, edge_index, radial = vectors[order], edge_index[:, order], radial[order]
    # two more centres without edges, at the end
    num_centers += 2
    expected = neighbor_blocks(vectors, radial, edge_index, num_centers)
    actual = fused_neighbor_blocks(vectors, radial, edge_index, num_centers)
    for name, e, a in zip(("geometry", "radial", "neighbor"), expected, actual):
        assert a.shape == e.shape and torch.equal(a, e), name

    def blocks(v, r):
        return fused_neighbor_blocks(v, r, edge_index, num_centers)[:2]

    inputs = (vectors.requires_grad_(), radial.requires_grad_())
    assert torch.autograd.gradcheck(blocks, inputs)
    assert torch.autograd.gradgradcheck(blocks, inputs)


def test_block_kernels_without_edges_and_with_bad_inputs():
    empty = fused_neighbor_blocks(
        torch.zeros(0, 3), torch.zeros(0, 8), torch.zeros(2, 0, dtype=torch.long), 5
    )
    assert [tuple(t.shape) for t in empty] == [(5, 3, 0), (5, 0, 8), (0,)]
    with pytest.raises(RuntimeError, match="edge 1 has centre 7, outside the 5 centres"):
        torch.ops.reann.neighbor_slots(torch.tensor([0, 7]), 5)
    with pytest.raises(RuntimeError, match="edge 1 has slot 9, outside the 6 slots"):
        torch.ops.reann.to_blocks(torch.zeros(2, 3), torch.tensor([0, 9]), 2, 3, True)
    with pytest.raises(RuntimeError, match="edge 0 has slot -1"):
        torch.ops.reann.from_blocks(torch.zeros(2, 3, 3), torch.tensor([-1, 2]), False)
    with pytest.raises(RuntimeError, match="int64 slots"):
        torch.ops.reann.to_blocks(torch.zeros(2, 3), torch.tensor([0.0, 1.0]), 2, 3, False)


@pytest.mark.parametrize(
    "l_max, num_gaussians, dtype, rtol",
    [
        (0, 1, torch.float64, 1e-11),
        (1, 5, torch.float64, 1e-11),
        (2, 8, torch.float64, 1e-11),
        (3, 3, torch.float64, 1e-11),
        (2, 8, torch.float32, 2e-5),
        (1, 11, torch.float32, 2e-5),
    ],
)
# the kernels work through the slots in chunks of 8: a last chunk part-filled (13) and full (16)
@pytest.mark.parametrize("max_neighbors", [13, 16])
def test_kernel_equals_torch_form_with_first_and_second_derivatives(
    l_max, num_gaussians, dtype, rtol, max_neighbors
):
    # 40 centres whose neighbours include 25 further (ghost) atoms
    blocks = edges_in_blocks(40, max_neighbors, num_gaussians, 65, dtype)
    monomials = CartesianMonomials(l_max)
    results = []
    for module in (
        OrbitalGram(num_gaussians, monomials),
        FusedOrbitalGram(num_gaussians, monomials),
    ):
        results.append(gram_and_gradients(module, *blocks) + second_derivatives(module, *blocks))
    names = ("gram", "vectors", "radial", "coeffs") + (
        "d2 vectors",
        "d2 radial",
        "d2 coeffs",
        "d2 u",
    )
    for name, expected, actual in zip(names, *results):
        scale = expected.detach().abs().max()
        assert scale > 0 or (name.endswith("vectors") and l_max == 0), name
        torch.testing.assert_close(actual, expected, rtol=0, atol=rtol * max(scale, 1.0), msg=name)


@pytest.mark.parametrize("l_max, num_gaussians", [(0, 1), (2, 3), (4, 2), (2, 8)])
def test_kernel_gradcheck_and_gradgradcheck(l_max, num_gaussians):
    vectors, radial, neighbor, coefficients = random_blocks(
        5, 4, num_gaussians, 7, torch.float64, seed=l_max
    )
    module = FusedOrbitalGram(num_gaussians, CartesianMonomials(l_max))
    # vectors of ~1 Å: at l_max = 4, 2 Å ones give G ~ 1e5, beyond finite differences' precision
    inputs = (
        (0.5 * vectors).requires_grad_(),
        radial.requires_grad_(),
        coefficients.requires_grad_(),
    )

    def gram(v, r, c):
        return module(v, r, neighbor, c)

    assert torch.autograd.gradcheck(gram, inputs)
    assert torch.autograd.gradgradcheck(gram, inputs)


def test_kernel_torch_form_for_other_devices():
    """The torch form FusedOrbitalGram runs off CPU, checked here on CPU blocks."""
    vectors, radial, neighbor, coefficients = random_blocks(7, 5, 4, 9, torch.float64, seed=5)
    module = FusedOrbitalGram(4, CartesianMonomials(2))
    torch.testing.assert_close(
        module.torch_form(vectors, radial, neighbor, coefficients),
        module(vectors, radial, neighbor, coefficients),
        rtol=1e-12,
        atol=1e-12,
    )


def test_kernel_threads_agree():
    blocks = edges_in_blocks(200, 17, 8, 260, torch.float64, seed=3)
    module = FusedOrbitalGram(8, CartesianMonomials(2))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = gram_and_gradients(module, *blocks) + second_derivatives(module, *blocks)
        torch.set_num_threads(2)
        parallel = gram_and_gradients(module, *blocks) + second_derivatives(module, *blocks)
    finally:
        torch.set_num_threads(threads)
    for expected, actual in zip(serial, parallel):
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_kernel_empty_blocks():
    """A rank that owns no atoms, and centres without neighbours (zero slots)."""
    module = FusedOrbitalGram(4, CartesianMonomials(2))
    for num_centers, slots in ((0, 5), (3, 0)):
        vectors, radial, neighbor, coefficients = random_blocks(
            num_centers, slots, 4, 6, torch.float64
        )
        vectors.requires_grad_(True)
        coefficients.requires_grad_(True)
        gram = module(vectors, radial, neighbor, coefficients)
        assert gram.shape == (num_centers, 3 * 10) and bool((gram == 0).all())
        gram.sum().backward()
        assert coefficients.grad.shape == coefficients.shape


def test_kernel_refuses_third_derivative():
    vectors, radial, neighbor, coefficients = random_blocks(4, 3, 2, 4, torch.float64)
    vectors.requires_grad_(True)
    gram = FusedOrbitalGram(2, CartesianMonomials(1))(vectors, radial, neighbor, coefficients)
    (first,) = torch.autograd.grad(gram.square().sum(), vectors, create_graph=True)
    torch.autograd.grad(first.square().sum(), vectors, retain_graph=True)
    with pytest.raises(RuntimeError, match="no third derivative"):
        torch.autograd.grad(first.square().sum(), vectors, create_graph=True)


def test_kernel_refuses_bad_inputs():
    vectors, radial, neighbor, coefficients = random_blocks(4, 3, 2, 4, torch.float64)
    module = FusedOrbitalGram(2, CartesianMonomials(1))
    with pytest.raises(
        RuntimeError, match=r"index \d+ \(centre 0, slot 0\) is outside the 4 atoms"
    ):
        module(vectors, radial, neighbor + 4, coefficients)
    with pytest.raises(RuntimeError, match="do not match vectors"):
        module(vectors, radial[:, :2], neighbor, coefficients)
    with pytest.raises(RuntimeError, match="share one dtype"):
        module(vectors, radial.float(), neighbor, coefficients)


def gaussian_inputs(num_edges, num_types, num_gaussians, dtype, seed=0):
    """Lengths [E, 1] in 0 … 6 Å (some beyond a 5 Å cutoff), the lengths over the cutoff
    [E, 1], neighbour species [E], centres and negative exponents [num_types, K], all but the
    species requiring gradients."""
    generator = torch.Generator().manual_seed(seed)
    length = (6.0 * torch.rand(num_edges, 1, generator=generator, dtype=dtype)).requires_grad_()
    species = torch.randint(0, num_types, (num_edges,), generator=generator)
    centers = 5.0 * torch.rand(num_types, num_gaussians, generator=generator, dtype=dtype)
    exponents = -0.2 - torch.rand(num_types, num_gaussians, generator=generator, dtype=dtype)
    return (
        length,
        length / 5.0,
        species,
        centers.requires_grad_(),
        exponents.requires_grad_(),
    )


@pytest.mark.parametrize(
    "num_gaussians, dtype, rtol", [(8, torch.float64, 1e-13), (5, torch.float32, 1e-5)]
)
def test_radial_functions_equal_torch_form_with_first_derivatives(num_gaussians, dtype, rtol):
    """Values and gradients in lengths (through the Gaussians and the cutoff), centres and
    exponents; 2,000 edges over two threads (per-thread sums of the species' gradients)."""
    length, norm_length, species, centers, exponents = gaussian_inputs(
        2000, 3, num_gaussians, dtype
    )
    threads = torch.get_num_threads()
    results = {}
    try:
        torch.set_num_threads(2)
        for name, form in (("torch", SpeciesGaussians()), ("fused", FusedSpeciesGaussians())):
            radial = form(length, norm_length, species, centers, exponents)
            weights = torch.linspace(-1.0, 1.0, radial.numel(), dtype=dtype).view_as(radial)
            gradients = torch.autograd.grad(
                (radial * weights).sum(), (length, centers, exponents), retain_graph=True
            )
            results[name] = (radial, *gradients)
    finally:
        torch.set_num_threads(threads)
    for expected, actual in zip(results["torch"], results["fused"]):
        scale = expected.detach().abs().max()
        torch.testing.assert_close(actual, expected, rtol=0.0, atol=rtol * float(scale))
    # beyond the cutoff the radial functions are exactly zero
    assert bool((results["fused"][0][length.detach().view(-1) >= 5.0] == 0).all())


def test_radial_functions_gradcheck():
    length, norm_length, species, centers, exponents = gaussian_inputs(
        30, 2, 3, torch.float64, seed=1
    )
    norm_length = norm_length.detach().requires_grad_()
    module = FusedSpeciesGaussians()

    def radial(d, x, mu, alpha):
        return module(d, x, species, mu, alpha)

    assert torch.autograd.gradcheck(radial, (length, norm_length, centers, exponents))


def test_radial_functions_refuse_bad_inputs_and_second_derivatives():
    length, norm_length, species, centers, exponents = gaussian_inputs(6, 2, 3, torch.float64)
    module = FusedSpeciesGaussians()
    with pytest.raises(RuntimeError, match="species index is outside the 2 rows"):
        module(length, norm_length, species + 2, centers, exponents)
    with pytest.raises(RuntimeError, match="one floating dtype"):
        module(length, norm_length, species, centers.float(), exponents)
    with pytest.raises(RuntimeError, match=r"expected length, norm_length and species \[E\]"):
        module(length, norm_length[:3], species, centers, exponents)
    radial = module(length, norm_length, species, centers, exponents)
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(radial.sum(), length, create_graph=True)
    empty = module(length[:0], norm_length[:0], species[:0], centers, exponents)
    assert empty.shape == (0, 3)


BLOCK_CACHE_SCRIPT = """
import torch
from reann_nequip.nn.kernels import load_kernels
load_kernels()
torch.ops.reann.block_cache_install()


def address_of_block(slots):
    # a float64 [centres, slots, Gaussians] neighbour block of 7-9 MiB, freed at once
    return torch.empty(2048, slots, 8, dtype=torch.float64).data_ptr()


first = address_of_block(62)
assert torch.ops.reann.block_cache_bytes() > 0, "the freed block was not kept"
for slots in (63, 65, 72, 58, 62):
    assert address_of_block(slots) == first, f"{slots} slots took a fresh block"
assert address_of_block(40) != first, "a much smaller block took the large one"
torch.ops.reann.block_cache_next_step()
torch.ops.reann.block_cache_next_step()
assert torch.ops.reann.block_cache_bytes() == 0, "blocks unused for a step were not returned"
"""


def test_block_cache_reuses_blocks_as_neighbour_blocks_grow_and_shrink():
    """When the widest neighbour list changes by a few slots, every [centres, slots, K] block
    changes size: the cache hands out the freed block again instead of fresh pages (faulted in
    and zeroed by the kernel), and returns what a whole step did not use. Its own process: the
    cache replaces torch's CPU allocator for good."""
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_CACHE_SCRIPT], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_missing_kernel_library_is_a_clear_error(tmp_path):
    script = (
        "import reann_nequip.integrations.lammps as lammps\n"
        f"lammps.plugin_directory = lambda: {str(tmp_path)!r}\n"
        "from reann_nequip.nn.kernels import load_kernels\n"
        "load_kernels()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode != 0
    assert f"{tmp_path / KERNEL_FILE}` is not built" in result.stderr
    assert "reann-nequip build-lammps" in result.stderr


def test_density_kernel_choice_without_the_library(tmp_path):
    """Without the library, ``auto`` warns and takes the torch form, ``fused`` is an error
    naming the missing file; an unknown choice is an error."""
    script = (
        "import logging, pytest\n"
        "import reann_nequip.integrations.lammps as lammps\n"
        f"lammps.plugin_directory = lambda: {str(tmp_path)!r}\n"
        "from reann_nequip.nn import OrbitalGram, RecursiveEmbeddedDensity\n"
        "options = dict(type_names=['H'], num_gaussians=2, l_max=1, num_orbitals=3,\n"
        "    num_recursions=1, shared_mixing=True, initial_coefficient=1.0,\n"
        "    coefficient_network={'hidden': [4], 'num_blocks': 1,\n"
        "    'activation': 'silu', 'layer_norm': False, 'dropout': [0.0]}, irreps_in={'edge_embedding': '2x0e'})\n"
        "density = RecursiveEmbeddedDensity(**options)\n"
        "assert type(density.orbital_gram) is OrbitalGram\n"
        "with pytest.raises(ValueError, match='must be one of'):\n"
        "    RecursiveEmbeddedDensity(density_kernel='cuda', **options)\n"
        "RecursiveEmbeddedDensity(density_kernel='fused', **options)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode != 0
    assert "the density runs on torch operations" in result.stderr
    assert f"{tmp_path / KERNEL_FILE}` is not built" in result.stderr


def test_edge_vectors_and_forces_equal_torch_forms():
    """``reann::edge_vectors`` and ``reann::edge_forces``, the ends of a deployed energy
    model's call: r = x_j − x_i + s in float64 and rounded to the model dtype; forces from
    the scatter of ∂E/∂r onto both atoms of each edge; the symmetrised virial −Σ r ⊗ ∂E/∂r."""
    generator = torch.Generator().manual_seed(4)
    pos = 3.0 * torch.randn(9, 3, generator=generator, dtype=torch.float64)
    edge_index = torch.randint(0, 9, (2, 40), generator=generator)
    shift = torch.randn(40, 3, generator=generator, dtype=torch.float64)
    expected = pos[edge_index[1]] - pos[edge_index[0]] + shift
    for dtype in (torch.float32, torch.float64):
        exact, vectors = torch.ops.reann.edge_vectors(pos, edge_index, shift, dtype)
        assert exact.dtype == torch.float64 and vectors.dtype == dtype
        torch.testing.assert_close(exact, expected, rtol=0, atol=0)
        torch.testing.assert_close(vectors, expected.to(dtype), rtol=0, atol=0)

        gradient = torch.randn(40, 3, generator=generator, dtype=torch.float64).to(dtype)
        forces, virial = torch.ops.reann.edge_forces(gradient, edge_index, exact, 11)
        g = gradient.to(torch.float64)
        expected_forces = torch.zeros(11, 3, dtype=torch.float64)
        expected_forces.index_add_(0, edge_index[0], g).index_add_(0, edge_index[1], -g)
        expected_virial = -exact.T @ g
        expected_virial = 0.5 * (expected_virial + expected_virial.T)
        torch.testing.assert_close(forces, expected_forces, rtol=0, atol=1e-13)
        torch.testing.assert_close(virial, expected_virial, rtol=0, atol=1e-12)


def test_edge_vectors_and_forces_refuse_bad_inputs():
    pos = torch.zeros(4, 3, dtype=torch.float64)
    edge_index = torch.tensor([[0, 1], [1, 4]])
    shift = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="edge 1 has neighbour 4, outside the 4 atoms"):
        torch.ops.reann.edge_vectors(pos, edge_index, shift, torch.float32)
    with pytest.raises(RuntimeError, match="float64 CPU positions"):
        torch.ops.reann.edge_vectors(pos.float(), edge_index.clamp(max=3), shift, torch.float32)
    with pytest.raises(RuntimeError, match=r"float64 CPU shifts \[E = 2, 3\]"):
        torch.ops.reann.edge_vectors(pos, edge_index.clamp(max=3), shift[:1], torch.float32)
    with pytest.raises(RuntimeError, match="edge 0 has centre -1"):
        torch.ops.reann.edge_forces(shift, torch.tensor([[-1, 0], [1, 2]]), shift, 4)
    with pytest.raises(RuntimeError, match="edge gradients and float64 edge vectors"):
        torch.ops.reann.edge_forces(shift[:1], edge_index.clamp(max=3), shift, 4)


def element_networks(activation, layer_norm, num_blocks, hidden, dtype=torch.float64, seed=0):
    """Eval-mode networks of 3 elements, 10 inputs and 4 outputs, every parameter perturbed
    (a new network's output layer is zero)."""
    networks = ElementNetworks(
        3, 10, 4, hidden, num_blocks, activation, layer_norm, [0.0] * len(hidden)
    )
    return randomize_parameters(networks.to(dtype), seed=seed).eval()


def outputs_and_input_gradient(networks, x, atom_types, mixing=None):
    x = x.clone().requires_grad_(True)
    y = networks(x, atom_types, mixing)
    weights = torch.linspace(-1.0, 2.0, y.numel(), dtype=y.dtype).view_as(y)
    (gradient,) = torch.autograd.grad((y * weights).sum(), x)
    return y.detach(), gradient


@pytest.mark.parametrize("activation", ["relu_like", "tanh_like", "silu"])
@pytest.mark.parametrize("layer_norm", [True, False])
@pytest.mark.parametrize("num_blocks,hidden", [(0, [6]), (1, [6, 6]), (2, [7, 5, 3])])
@pytest.mark.parametrize("mixing", [False, True])
def test_element_networks_equal_torch_form(activation, layer_norm, num_blocks, hidden, mixing):
    """Output and input gradient of ``reann::element_networks`` equal the torch form: atoms
    in any order or grouped by element, one element absent, the input mixing folded or not."""
    networks = element_networks(activation, layer_norm, num_blocks, hidden)
    generator = torch.Generator().manual_seed(1)
    atom_types = torch.randint(0, 3, (40,), generator=generator)
    atom_types[atom_types == 1] = 2
    q = torch.randn(6, 10, generator=generator, dtype=torch.float64) if mixing else None
    x = torch.randn(40, 6 if mixing else 10, generator=generator, dtype=torch.float64)
    for types in (atom_types, torch.sort(atom_types).values):
        expected = outputs_and_input_gradient(networks, x, types, q)
        networks.use_fused_kernel()
        fused = outputs_and_input_gradient(networks, x, types, q)
        networks.fused = False
        for e, f in zip(expected, fused):
            torch.testing.assert_close(f, e, rtol=1e-12, atol=1e-12)


def test_element_networks_float32_threads_and_empty_input():
    networks = element_networks("relu_like", True, 1, [16, 16], dtype=torch.float32)
    generator = torch.Generator().manual_seed(2)
    atom_types = torch.randint(0, 3, (500,), generator=generator)
    x = torch.randn(500, 10, generator=generator, dtype=torch.float32)
    expected = outputs_and_input_gradient(networks, x, atom_types)
    networks.use_fused_kernel()
    threads = torch.get_num_threads()
    try:
        for num_threads in (1, 2):
            torch.set_num_threads(num_threads)
            fused = outputs_and_input_gradient(networks, x, atom_types)
            for e, f in zip(expected, fused):
                torch.testing.assert_close(f, e, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(threads)
    y, gradient = outputs_and_input_gradient(networks, x[:0], atom_types[:0])
    assert y.shape == (0, 4) and gradient.shape == (0, 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("hidden", [[64, 64], [70, 33]])
def test_element_networks_wide_layers(dtype, hidden):
    """The op's GEMM tiles (6 or 4 rows, panels of 12-64 columns) at the default widths and at
    widths across panel boundaries: 108 inputs, elements of 1, 13 and 50 atoms (rows not a
    whole number of tiles)."""
    networks = ElementNetworks(3, 108, 9, hidden, 1, "tanh_like", True, [0.0, 0.0])
    networks = randomize_parameters(networks.to(dtype), seed=3).eval()
    order = torch.randperm(64, generator=torch.Generator().manual_seed(5))
    atom_types = torch.tensor([0] + [1] * 13 + [2] * 50)[order]
    x = torch.randn(64, 108, generator=torch.Generator().manual_seed(4), dtype=dtype)
    expected = outputs_and_input_gradient(networks, x, atom_types)
    networks.use_fused_kernel()
    fused = outputs_and_input_gradient(networks, x, atom_types)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-4
    for e, f in zip(expected, fused):
        torch.testing.assert_close(f, e, rtol=tolerance, atol=tolerance)


def test_element_networks_train_with_torch_form_and_refuse_parameter_gradients():
    """Training mode runs the torch form (forces are differentiated again); in eval mode the
    op gives input gradients only and says so when asked for more."""
    networks = element_networks("relu_like", True, 1, [6, 6])
    networks.use_fused_kernel()
    x = torch.randn(5, 10, dtype=torch.float64, requires_grad=True)
    atom_types = torch.tensor([0, 2, 1, 0, 2])
    networks.train()
    (first,) = torch.autograd.grad(networks(x, atom_types).sum(), x, create_graph=True)
    first.square().sum().backward()
    assert networks.input_linear.weight.grad is not None
    networks.eval()
    with pytest.raises(RuntimeError, match="no gradients with respect to the network parameters"):
        networks(x, atom_types).sum().backward()
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(networks(x, atom_types).sum(), x, create_graph=True)


def test_element_networks_refuse_bad_inputs():
    networks = element_networks("silu", False, 1, [6])
    networks.use_fused_kernel()
    x = torch.randn(4, 10, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="atom 2 has type 3, outside the 3 types"):
        networks(x, torch.tensor([0, 1, 3, 2]))
    with pytest.raises(RuntimeError, match=r"weights\[0\] must be Float \[3, 10, 6\]"):
        networks(x.float(), torch.tensor([0, 1, 2, 2]))
    with pytest.raises(RuntimeError, match=r"expected int64 atom types \[4\]"):
        networks(x, torch.tensor([0, 1, 2]))


def test_energy_model_runs_fused_networks_and_radial_functions_in_eval_mode():
    """A REANN energy model built with the kernel runs its element networks and its radial
    functions as C++ ops in eval mode: the same energies, forces and stress as with the torch
    forms; training mode keeps the torch forms, and second derivatives with them."""
    set_global_state()
    model = randomize_parameters(
        ReannModel(
            seed=1,
            model_dtype="float64",
            type_names=["O", "H"],
            r_max=3.5,
            num_gaussians=4,
            num_recursions=2,
            energy_network={"hidden": [8, 8]},
            coefficient_network={"hidden": [8]},
        ),
        seed=3,
    ).eval()
    networks = [m for m in model.modules() if isinstance(m, ElementNetworks)]
    assert len(networks) == 3 and all(n.fused for n in networks)
    radial_basis = model.model.func.radial_basis
    assert isinstance(radial_basis.gaussians, FusedSpeciesGaussians)
    generator = torch.Generator().manual_seed(0)
    atoms = Atoms(
        "OH2OH2",
        positions=3.0 * torch.rand(6, 3, generator=generator).numpy(),
        cell=4.0 * torch.eye(3).numpy(),
        pbc=True,
    )
    data = model_input(atoms, ["O", "H"], 3.5)
    fused = model(dict(data))
    for n in networks:
        n.fused = False
    radial_basis.gaussians = SpeciesGaussians()
    expected = model(dict(data))
    for key in ("total_energy", "forces", "stress"):
        torch.testing.assert_close(fused[key], expected[key], rtol=1e-12, atol=1e-12)
    # training mode: force-loss gradients reach the radial parameters through the torch form
    radial_basis.gaussians = FusedSpeciesGaussians()
    model.train()
    forces = model(dict(data))["forces"]
    (gradient,) = torch.autograd.grad(forces.square().sum(), [radial_basis.exponents])
    assert gradient.abs().max() > 0
