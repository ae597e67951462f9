"""Recomputed row-wise functions (force training's memory saver) have exact first and second
derivatives, chunked or not."""

import pytest
import torch
from nequip.data import AtomicDataDict
from nequip.utils.global_state import set_global_state

import reann_nequip.nn.recompute as recompute
from reann_nequip.nn import SpeciesGaussianBasis


def species_gaussians(length, scaled, species, centers, exponents):
    """A radial-basis-like row-wise function with per-species parameters."""
    return torch.cos(scaled).square() * torch.exp(
        exponents[species] * (length - centers[species]).square()
    )


def with_parameters(centers, exponents):
    """:func:`species_gaussians` of these parameters, as a function of the rows."""
    return lambda length, scaled, species: species_gaussians(
        length, scaled, species, centers, exponents
    )


def inputs(num_rows, seed=0):
    generator = torch.Generator().manual_seed(seed)
    length = 5.0 * torch.rand(num_rows, 1, generator=generator, dtype=torch.float64)
    scaled = length / 5.0 + 0.01 * torch.rand(num_rows, 1, generator=generator, dtype=torch.float64)
    species = torch.randint(0, 2, (num_rows,), generator=generator)
    centers = 5.0 * torch.rand(2, 4, generator=generator, dtype=torch.float64)
    exponents = -0.2 - torch.rand(2, 4, generator=generator, dtype=torch.float64)
    return length, scaled, species, centers, exponents


@pytest.mark.parametrize("chunk_rows", [65536, 3])
def test_recomputed_gradcheck_and_gradgradcheck(monkeypatch, chunk_rows):
    monkeypatch.setattr(recompute, "CHUNK_ROWS", chunk_rows)
    length, scaled, species, centers, exponents = inputs(10)
    tensors = tuple(t.requires_grad_() for t in (length, scaled, centers, exponents))

    def function(length, scaled, centers, exponents):
        return recompute.recomputed(
            with_parameters(centers, exponents),
            (length, scaled),
            (species,),
            (centers, exponents),
        )

    assert torch.autograd.gradcheck(function, tensors)
    assert torch.autograd.gradgradcheck(function, tensors)


def test_recomputed_without_rows_and_third_derivative(monkeypatch):
    monkeypatch.setattr(recompute, "CHUNK_ROWS", 4)
    for num_rows in (0, 9):
        length, scaled, species, centers, exponents = inputs(num_rows, seed=1)
        length.requires_grad_()
        centers.requires_grad_()
        out = recompute.recomputed(
            with_parameters(centers, exponents),
            (length, scaled),
            (species,),
            (centers, exponents),
        )
        assert out.shape == (num_rows, 4)
        (first,) = torch.autograd.grad(out.square().sum(), length, create_graph=True)
        (second,) = torch.autograd.grad(first.square().sum(), centers, retain_graph=True)
        assert second.shape == centers.shape
    with pytest.raises(RuntimeError, match="no third derivative"):
        torch.autograd.grad(first.square().sum(), centers, create_graph=True)


def test_radial_basis_recomputed_in_training_equals_direct():
    """Training mode recomputes the radial functions; values, first and second derivatives
    equal those of the direct evaluation (inference mode)."""
    torch.manual_seed(0)
    set_global_state()  # float64 model dtype
    basis = SpeciesGaussianBasis(
        ["H", "O"],
        r_max=4.0,
        num_gaussians=5,
        irreps_in={AtomicDataDict.NORM_LENGTH_KEY: "0e"},
    )
    num_edges = 50
    length = 4.5 * torch.rand(num_edges, dtype=torch.float64)
    data = {
        AtomicDataDict.EDGE_INDEX_KEY: torch.randint(0, 6, (2, num_edges)),
        AtomicDataDict.ATOM_TYPE_KEY: torch.randint(0, 2, (6,)),
    }
    results = []
    for training in (True, False):
        basis.train(training)
        d = length.clone().requires_grad_()
        out = basis(
            {
                **data,
                AtomicDataDict.EDGE_LENGTH_KEY: d,
                AtomicDataDict.NORM_LENGTH_KEY: (d / 4.0).unsqueeze(1),
            }
        )[AtomicDataDict.EDGE_EMBEDDING_KEY]
        (first,) = torch.autograd.grad(out.square().sum(), d, create_graph=True)
        second = torch.autograd.grad(
            (first * torch.cos(d)).sum(), [d, basis.centers, basis.exponents]
        )
        results.append([out.detach(), first.detach(), *second])
    assert results[0][1].abs().max() > 1e-3, "degenerate test"
    for recomputed_value, direct in zip(*results):
        torch.testing.assert_close(recomputed_value, direct, rtol=1e-12, atol=1e-12)
