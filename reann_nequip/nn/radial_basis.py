"""REANN's radial functions: Gaussians of the neighbour's species under a squared-cosine cutoff."""

import math
from typing import List, Optional

import torch
from nequip.data import AtomicDataDict
from nequip.nn import GraphModuleMixin

from .forms import KernelStage


def squared_cosine_cutoff(x: torch.Tensor) -> torch.Tensor:
    """f_c = (½ cos(π x) + ½)² for x = d / r_c < 1, and 0 beyond.

    The explicit zero matters: the squared cosine rises again past x = 1, and a neighbour list
    built with a skin or with a larger cutoff than the pair's own hands in such edges.
    """
    fc = (0.5 * torch.cos(math.pi * x) + 0.5).square()
    return torch.where(x < 1.0, fc, torch.zeros_like(fc))


def species_gaussians(
    length: torch.Tensor,
    norm_length: torch.Tensor,
    neighbor_type: torch.Tensor,
    centers: torch.Tensor,
    exponents: torch.Tensor,
) -> torch.Tensor:
    """f_c(d / r_c) · exp(α_{Z_j,k} (d − μ_{Z_j,k})²): lengths d [num_edges] in Å, d / r_c
    [num_edges], neighbour species [num_edges], μ and α [num_types, K] → [num_edges, K]."""
    gaussians = torch.exp(
        torch.index_select(exponents, 0, neighbor_type)
        * (length.unsqueeze(1) - torch.index_select(centers, 0, neighbor_type)).square()
    )
    return squared_cosine_cutoff(norm_length).unsqueeze(1) * gaussians


class SpeciesGaussianBasis(GraphModuleMixin, KernelStage):
    """Edge radial functions f_c(d) · exp(α_{Z_j,k} (d − μ_{Z_j,k})²), k = 1 … K.

    α (REANN ``inta``) and μ (REANN ``rs``) are learnable, one row per *neighbour* species Z_j.
    The cutoff uses the normalised length d / r_c written by nequip's ``EdgeLengthNormalizer``
    (so per-edge-type cutoffs work); the Gaussians use the length d in Å. Kernel form:
    ``reann::radial_functions``, one pass over the edges.

    Writes ``edge_embedding`` [num_edges, K] in the model dtype.

    Args:
        type_names (list[str]): element names
        r_max (float): cutoff radius r_c in Å (REANN ``cutoff``)
        num_gaussians (int): K (REANN ``nwave``)
        centers (list | None): initial μ in Å, [num_types][K] (REANN ``rs``) or [K] for every
            species; default: uniform random in [0, r_c), as REANN does
        exponents (list | None): initial α in Å⁻², negative, [num_types][K] (REANN ``inta``) or
            [K] for every species; default: uniform random in [−1.2, −0.2), as REANN does
    """

    def __init__(
        self,
        type_names: List[str],
        r_max: float,
        num_gaussians: int,
        centers: Optional[List] = None,
        exponents: Optional[List] = None,
        irreps_in=None,
    ):
        super().__init__()
        num_types = len(type_names)
        shape = (num_types, num_gaussians)
        centers_t = (
            torch.rand(shape) * r_max
            if centers is None
            else self._per_species("gaussian_centers", centers, shape)
        )
        exponents_t = (
            -(torch.rand(shape) + 0.2)
            if exponents is None
            else self._per_species("gaussian_exponents", exponents, shape)
        )
        if bool((exponents_t >= 0).any()):
            raise ValueError(
                f"`gaussian_exponents` must all be negative (REANN's exp(α (d − μ)²) has no "
                f"minus sign), found {exponents}"
            )
        self.centers = torch.nn.Parameter(centers_t)  # [num_types, K], Å
        self.exponents = torch.nn.Parameter(exponents_t)  # [num_types, K], Å⁻²
        self._model_dtype = torch.get_default_dtype()
        self._init_irreps(
            irreps_in=irreps_in,
            required_irreps_in=[AtomicDataDict.NORM_LENGTH_KEY],
            irreps_out={AtomicDataDict.EDGE_EMBEDDING_KEY: f"{num_gaussians}x0e"},
        )

    @staticmethod
    def _per_species(name: str, values, shape) -> torch.Tensor:
        """[K] (the same for every species) or [num_types][K] → tensor [num_types, K]."""
        tensor = torch.as_tensor(values, dtype=torch.get_default_dtype())
        if tensor.dim() == 1 and tensor.shape[0] == shape[1]:
            tensor = tensor.expand(shape).clone()
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"`{name}` must have shape [num_gaussians={shape[1]}] or [num_types={shape[0]}]"
                f"[num_gaussians={shape[1]}], found {list(tensor.shape)}"
            )
        return tensor

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        length = data[AtomicDataDict.EDGE_LENGTH_KEY].view(-1).to(self._model_dtype)
        norm_length = data[AtomicDataDict.NORM_LENGTH_KEY].view(-1).to(self._model_dtype)
        neighbor = data[AtomicDataDict.EDGE_INDEX_KEY][1]
        neighbor_type = torch.index_select(data[AtomicDataDict.ATOM_TYPE_KEY].view(-1), 0, neighbor)
        if self.runs_kernels(length):
            radial = torch.ops.reann.radial_functions(
                length, norm_length, neighbor_type, self.centers, self.exponents
            )
        else:
            radial = species_gaussians(
                length, norm_length, neighbor_type, self.centers, self.exponents
            )
        data[AtomicDataDict.EDGE_EMBEDDING_KEY] = radial  # [num_edges, K]
        return data
