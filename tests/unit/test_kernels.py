"""The C++ ops ``torch.ops.reann`` on their own: exact derivatives (gradcheck, gradgradcheck),
threads, empty inputs, errors for bad inputs instead of crashes, the block cache, the library's
location and its instruction-set levels. That each stage's kernel form equals its torch form is
tests/unit/test_forms.py."""

import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from reann_nequip.nn import ElementNetworks
from reann_nequip.nn.embedded_density import CartesianMonomials, neighbor_blocks
from reann_nequip.nn.kernels import library_path, load_kernels, supported_kernel_isas

from ..utils import REPO_ROOT, randomize_parameters

SCRIPTS = REPO_ROOT / "tests" / "scripts"


@pytest.fixture(scope="module", autouse=True)
def kernels():
    load_kernels()


def random_edges(num_centers, max_neighbors, num_gaussians, num_atoms, dtype, seed=0):
    """Random edges (0 … max_neighbors per centre, centre 0 full) in centre order: vectors
    [E, 3], ``edge_index``, radial functions [E, K], coefficients of all atoms [num_atoms, K]."""
    generator = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, max_neighbors + 1, (num_centers,), generator=generator)
    counts[0] = max_neighbors
    center = torch.repeat_interleave(torch.arange(num_centers), counts)
    num_edges = center.shape[0]
    vectors = 2.0 * torch.randn(num_edges, 3, generator=generator, dtype=dtype)
    radial = torch.rand(num_edges, num_gaussians, generator=generator, dtype=dtype)
    neighbor = torch.randint(0, num_atoms, (num_edges,), generator=generator)
    coefficients = torch.randn(num_atoms, num_gaussians, generator=generator, dtype=dtype)
    return vectors, torch.stack([center, neighbor]), radial, coefficients


def orbital_gram(vectors, radial, neighbor, coefficients, l_max):
    monomials = CartesianMonomials(l_max)
    return torch.ops.reann.orbital_gram(
        vectors,
        radial,
        neighbor,
        coefficients,
        monomials.exponents,
        monomials.weights.to(vectors.dtype),
    )


# === neighbour blocks ===


@pytest.mark.parametrize("in_centre_order", [True, False])
def test_neighbor_slots_keep_each_centres_edges_in_input_order(in_centre_order):
    """Each centre's edges fill its first slots in input order, whether the edges come grouped
    by centre (pair_reann's) or shuffled; the blocks hold them there, zero in padding."""
    generator = torch.Generator().manual_seed(7)
    counts = torch.randint(0, 6, (9,), generator=generator)
    center = torch.repeat_interleave(torch.arange(9), counts)
    if not in_centre_order:
        center = center[torch.randperm(center.shape[0], generator=generator)]
    slot, width = torch.ops.reann.neighbor_slots(center, 11)
    assert width == int(counts.max())
    assert torch.equal(slot // width, center)
    for atom in range(9):
        assert torch.equal(slot[center == atom] % width, torch.arange(int(counts[atom])))
    values = torch.randn(center.shape[0], 2, generator=generator, dtype=torch.float64)
    blocks = torch.ops.reann.to_blocks(values, slot, 11, width, False)  # [11, width, 2]
    assert torch.equal(blocks.view(-1, 2)[slot], values)
    assert int((blocks != 0).sum()) == int((values != 0).sum())


def test_block_ops_are_exact_to_any_order():
    """``to_blocks`` and ``from_blocks`` are each other's backward pass."""
    vectors, edge_index, radial, _ = random_edges(12, 6, 4, 20, torch.float64, seed=2)

    def blocks(v, r):
        return neighbor_blocks(v, r, edge_index, 14)[:2]

    inputs = (vectors.requires_grad_(), radial.requires_grad_())
    assert torch.autograd.gradcheck(blocks, inputs)
    assert torch.autograd.gradgradcheck(blocks, inputs)


def test_block_ops_without_edges_and_with_bad_inputs():
    empty = neighbor_blocks(
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


# === orbital Gram matrices ===


def gram_inputs(num_centers, max_neighbors, num_gaussians, num_atoms, dtype, seed=0):
    vectors, edge_index, radial, coefficients = random_edges(
        num_centers, max_neighbors, num_gaussians, num_atoms, dtype, seed
    )
    v, r, n = neighbor_blocks(vectors, radial, edge_index, num_centers)
    return v, r, n, coefficients


@pytest.mark.parametrize("l_max, num_gaussians", [(0, 1), (2, 3), (4, 2), (2, 8)])
def test_orbital_gram_gradcheck_and_gradgradcheck(l_max, num_gaussians):
    vectors, radial, neighbor, coefficients = gram_inputs(5, 4, num_gaussians, 7, torch.float64)
    # vectors of ~1 Å: at l_max = 4, 2 Å ones give G ~ 1e5, beyond finite differences' precision
    inputs = (
        (0.5 * vectors).requires_grad_(),
        radial.requires_grad_(),
        coefficients.requires_grad_(),
    )

    def gram(v, r, c):
        return orbital_gram(v, r, neighbor, c, l_max)

    assert torch.autograd.gradcheck(gram, inputs)
    assert torch.autograd.gradgradcheck(gram, inputs)


def first_and_second_derivatives(vectors, radial, neighbor, coefficients):
    inputs = [t.clone().requires_grad_(True) for t in (vectors, radial, coefficients)]
    gram = orbital_gram(inputs[0], inputs[1], neighbor, inputs[2], 2)
    first = torch.autograd.grad(gram.square().sum(), inputs, create_graph=True)
    second = torch.autograd.grad(sum((d * d.detach()).sum() for d in first), inputs)
    return [gram.detach(), *[d.detach() for d in first], *second]


def test_orbital_gram_threads_agree():
    blocks = gram_inputs(200, 17, 8, 260, torch.float64, seed=3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = first_and_second_derivatives(*blocks)
        torch.set_num_threads(2)
        parallel = first_and_second_derivatives(*blocks)
    finally:
        torch.set_num_threads(threads)
    for expected, actual in zip(serial, parallel):
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_orbital_gram_of_empty_blocks():
    """A rank that owns no atoms, and centres without neighbours (zero slots)."""
    for num_centers, slots in ((0, 5), (3, 0)):
        vectors = torch.zeros(num_centers, 3, slots, dtype=torch.float64, requires_grad=True)
        radial = torch.zeros(num_centers, slots, 4, dtype=torch.float64)
        neighbor = torch.zeros(num_centers * slots, dtype=torch.long)
        coefficients = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
        gram = orbital_gram(vectors, radial, neighbor, coefficients, 2)
        assert gram.shape == (num_centers, 3 * 10) and bool((gram == 0).all())
        gram.sum().backward()
        assert coefficients.grad.shape == coefficients.shape


def test_orbital_gram_refuses_third_derivatives_and_bad_inputs():
    vectors, radial, neighbor, coefficients = gram_inputs(4, 3, 2, 4, torch.float64)
    vectors.requires_grad_(True)
    gram = orbital_gram(vectors, radial, neighbor, coefficients, 1)
    (first,) = torch.autograd.grad(gram.square().sum(), vectors, create_graph=True)
    torch.autograd.grad(first.square().sum(), vectors, retain_graph=True)
    with pytest.raises(RuntimeError, match="no third derivative"):
        torch.autograd.grad(first.square().sum(), vectors, create_graph=True)
    with pytest.raises(
        RuntimeError, match=r"index \d+ \(centre 0, slot 0\) is outside the 4 atoms"
    ):
        orbital_gram(vectors, radial, neighbor + 4, coefficients, 1)
    with pytest.raises(RuntimeError, match="do not match vectors"):
        orbital_gram(vectors, radial[:, :2], neighbor, coefficients, 1)
    with pytest.raises(RuntimeError, match="share one dtype"):
        orbital_gram(vectors, radial.float(), neighbor, coefficients, 1)


# === radial functions ===


def radial_inputs(num_edges, num_types, num_gaussians, dtype, seed=0):
    """Lengths [E] in 0 … 6 Å (some beyond a 5 Å cutoff), the lengths over the cutoff,
    neighbour species [E], centres and negative exponents [num_types, K]."""
    generator = torch.Generator().manual_seed(seed)
    length = 6.0 * torch.rand(num_edges, generator=generator, dtype=dtype)
    species = torch.randint(0, num_types, (num_edges,), generator=generator)
    centers = 5.0 * torch.rand(num_types, num_gaussians, generator=generator, dtype=dtype)
    exponents = -0.2 - torch.rand(num_types, num_gaussians, generator=generator, dtype=dtype)
    return length, length / 5.0, species, centers, exponents


def test_radial_functions_gradcheck_and_gradgradcheck():
    """First derivatives in lengths, centres and exponents; second derivatives in the lengths
    (forces' own gradients; those in the parameters are checked against the torch form in
    test_forms.py)."""
    length, norm_length, species, centers, exponents = radial_inputs(30, 2, 3, torch.float64, 1)
    inputs = [t.requires_grad_() for t in (length, norm_length, centers, exponents)]

    def radial(d, x, mu, alpha):
        return torch.ops.reann.radial_functions(d, x, species, mu, alpha)

    assert torch.autograd.gradcheck(radial, inputs)

    def radial_of_lengths(d, x):
        return torch.ops.reann.radial_functions(d, x, species, centers.detach(), exponents.detach())

    assert torch.autograd.gradgradcheck(radial_of_lengths, inputs[:2])


def test_radial_functions_threads_agree_and_vanish_beyond_the_cutoff():
    length, norm_length, species, centers, exponents = radial_inputs(2000, 3, 8, torch.float64)
    threads = torch.get_num_threads()
    results = []
    try:
        for num_threads in (1, 2):
            torch.set_num_threads(num_threads)
            mu, alpha = centers.clone().requires_grad_(), exponents.clone().requires_grad_()
            radial = torch.ops.reann.radial_functions(length, norm_length, species, mu, alpha)
            results.append([radial, *torch.autograd.grad(radial.square().sum(), [mu, alpha])])
    finally:
        torch.set_num_threads(threads)
    for serial, parallel in zip(*results):
        torch.testing.assert_close(parallel, serial, rtol=1e-12, atol=1e-12)
    assert bool((results[0][0][length >= 5.0] == 0).all())


def test_radial_functions_refuse_bad_inputs_and_third_derivatives():
    length, norm_length, species, centers, exponents = radial_inputs(6, 2, 3, torch.float64)
    op = torch.ops.reann.radial_functions
    with pytest.raises(RuntimeError, match="species index is outside the 2 rows"):
        op(length, norm_length, species + 2, centers, exponents)
    with pytest.raises(RuntimeError, match="one floating dtype"):
        op(length, norm_length, species, centers.float(), exponents)
    with pytest.raises(RuntimeError, match=r"expected length, norm_length and species \[E\]"):
        op(length, norm_length[:3], species, centers, exponents)
    assert op(length[:0], norm_length[:0], species[:0], centers, exponents).shape == (0, 3)
    length.requires_grad_(True)
    radial = op(length, norm_length, species, centers, exponents)
    (first,) = torch.autograd.grad(radial.square().sum(), length, create_graph=True)
    torch.autograd.grad(first.square().sum(), length, retain_graph=True)
    with pytest.raises(RuntimeError, match="no third derivative"):
        torch.autograd.grad(first.square().sum(), length, create_graph=True)


# === edge vectors and forces of a deployed call ===


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


# === element networks ===


def networks(hidden, dtype=torch.float64, activation="relu_like", num_inputs=10, seed=0):
    """Networks of 3 elements, ``num_inputs`` inputs and 4 outputs, every parameter perturbed
    (a new network's output layer is zero)."""
    stage = ElementNetworks(3, num_inputs, 4, hidden, 1, activation, True, [0.0] * len(hidden))
    return randomize_parameters(stage.to(dtype), seed=seed)


def outputs_and_input_gradient(stage, form, x, atom_types):
    x = x.clone().requires_grad_(True)
    y = form(x, atom_types, stage.input_linear.weight, stage.input_linear.bias)
    weights = torch.linspace(-1.0, 2.0, y.numel(), dtype=y.dtype).view_as(y)
    (gradient,) = torch.autograd.grad((y * weights).sum(), x)
    return y.detach(), gradient


def test_element_networks_threads_agree_and_take_empty_input():
    stage = networks([16, 16], dtype=torch.float32)
    generator = torch.Generator().manual_seed(2)
    atom_types = torch.randint(0, 3, (500,), generator=generator)
    x = torch.randn(500, 10, generator=generator, dtype=torch.float32)
    threads = torch.get_num_threads()
    results = []
    try:
        for num_threads in (1, 2):
            torch.set_num_threads(num_threads)
            results.append(outputs_and_input_gradient(stage, stage.kernel_form, x, atom_types))
    finally:
        torch.set_num_threads(threads)
    for serial, parallel in zip(*results):
        torch.testing.assert_close(parallel, serial, rtol=1e-6, atol=1e-6)
    y, gradient = outputs_and_input_gradient(stage, stage.kernel_form, x[:0], atom_types[:0])
    assert y.shape == (0, 4) and gradient.shape == (0, 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("hidden", [[64, 64], [70, 33]])
def test_element_networks_at_the_default_widths(dtype, hidden):
    """The op's GEMM tiles (6 or 4 rows, panels of 12-64 columns) at the default widths and at
    widths across panel boundaries: 108 inputs, elements of 1, 13 and 50 atoms (rows not a
    whole number of tiles)."""
    stage = networks(hidden, dtype, activation="tanh_like", num_inputs=108, seed=3)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(5))
    atom_types = torch.tensor([0] + [1] * 13 + [2] * 50)[order]
    x = torch.randn(64, 108, generator=torch.Generator().manual_seed(4), dtype=dtype)
    expected = outputs_and_input_gradient(stage, stage.torch_form, x, atom_types)
    actual = outputs_and_input_gradient(stage, stage.kernel_form, x, atom_types)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-4
    for e, a in zip(expected, actual):
        torch.testing.assert_close(a, e, rtol=tolerance, atol=tolerance)


def test_element_networks_refuse_bad_inputs_and_third_derivatives():
    stage = networks([6])
    x = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
    weight, bias = stage.input_linear.weight, stage.input_linear.bias
    with pytest.raises(RuntimeError, match="atom 2 has type 3, outside the 3 types"):
        stage.kernel_form(x, torch.tensor([0, 1, 3, 2]), weight, bias)
    with pytest.raises(RuntimeError, match=r"weights\[0\] must be Float \[3, 10, 6\]"):
        stage.kernel_form(x.float(), torch.tensor([0, 1, 2, 2]), weight, bias)
    with pytest.raises(RuntimeError, match=r"expected int64 atom types \[4\]"):
        stage.kernel_form(x, torch.tensor([0, 1, 2]), weight, bias)
    y = stage.kernel_form(x, torch.tensor([0, 1, 2, 2]), weight, bias)
    (first,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    torch.autograd.grad(first.square().sum(), x, retain_graph=True)
    with pytest.raises(RuntimeError, match="no third derivative"):
        torch.autograd.grad(first.square().sum(), x, create_graph=True)


# === the library ===


def test_block_cache_reuses_blocks_as_neighbour_blocks_grow_and_shrink():
    """When the widest neighbour list changes by a few slots, every [centres, slots, K] block
    changes size: the cache hands out the freed block again instead of fresh pages (faulted in
    and zeroed by the kernel), and returns what a whole step did not use."""
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "block_cache.py")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_package_finds_its_library_and_says_when_it_is_missing(tmp_path):
    assert library_path().parent.parent == REPO_ROOT / "reann_nequip"
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "missing_kernel_library.py"), str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and result.stdout.strip() == "False"
    assert f"{tmp_path / 'libreann_ops.so'}` is missing" in result.stderr
    assert "pip install --no-build-isolation" in result.stderr


def kernel_isa_in_a_process(value):
    env = {**os.environ, "REANN_NEQUIP_ISA": value}
    code = "import reann_nequip.nn.kernels as k; print(k.kernel_isa())"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_the_environment_chooses_a_lower_instruction_set_level():
    levels = supported_kernel_isas()
    assert levels[0] == "baseline"
    for level in levels:
        result = kernel_isa_in_a_process(level)
        assert result.returncode == 0 and result.stdout.strip() == level, result.stderr
    result = kernel_isa_in_a_process("avx9")
    assert result.returncode != 0
    assert "REANN_NEQUIP_ISA=avx9 must be one of baseline, avx2, avx512" in result.stderr
    if "avx512" not in levels:
        result = kernel_isa_in_a_process("avx512")
        assert "asks for the avx512 kernels, but this CPU runs only" in result.stderr


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils)")
def test_only_each_levels_own_code_uses_its_instructions():
    """One build runs on every x86-64 CPU only if code outside the AVX2 and AVX-512 namespaces
    uses no VEX/EVEX instructions and AVX2 code no AVX-512: in particular the linker must have
    kept the baseline copies of the inline functions that several levels compile."""
    disassembly = subprocess.run(
        ["objdump", "-d", "-C", "--no-show-raw-insn", str(library_path())],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    offending = {}
    function = ""
    for line in disassembly.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            function = header.group(1)
            continue
        if "\t" not in line:
            continue
        instruction = re.sub(r"<.*>", "", line.split("\t", 1)[1]).strip()
        if not instruction:
            continue
        mnemonic, operands = instruction.split()[0], instruction[len(instruction.split()[0]) :]
        avx512 = "zmm" in operands or re.search(r"%k[0-7]\b", operands) or "{" in operands
        vex = mnemonic.startswith("v") or "ymm" in operands
        level = (
            "avx512"
            if "reann::avx512::" in function
            else "avx2"
            if "reann::avx2::" in function
            else "baseline"
        )
        if (level == "baseline" and (vex or avx512)) or (level == "avx2" and avx512):
            offending.setdefault(function, instruction)
    assert not offending, f"{len(offending)} functions above their level, e.g. {offending}"
