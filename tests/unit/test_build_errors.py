"""Bad configuration fails at build time, naming the offending key."""

import pytest
import torch
from ase.build import molecule
from nequip.data import from_ase
from nequip.utils.global_state import set_global_state

from reann_nequip.data import ChemicalSpeciesToAtomTypeMapper
from reann_nequip.model import ReannModel

GOOD = {"seed": 1, "model_dtype": "float64", "type_names": ["C", "H"], "r_max": 4.0}


@pytest.fixture(scope="module", autouse=True)
def global_state():
    set_global_state()


@pytest.mark.parametrize(
    "change, key",
    [
        ({"l_max": -1}, "`l_max`"),
        ({"num_recursions": -2}, "`num_recursions`"),
        ({"num_recursions": 1.5}, "`num_recursions`"),
        ({"num_gaussians": 0}, "`num_gaussians`"),
        ({"num_orbitals": 0}, "`num_orbitals`"),
        ({"r_max": 0.0}, "`r_max`"),
        ({"r_max": -3.0}, "`r_max`"),
        ({"r_max": float("nan")}, "`r_max`"),
        ({"type_names": ["C", "C"]}, "`type_names`"),
        ({"type_names": ["C-1"]}, "`type_names`"),
        ({"avg_num_neighbors": 0.0}, "`avg_num_neighbors`"),
        ({"energy_network": {"activation": "relu"}}, "`energy_network.activation`"),
        ({"coefficient_network": {"activation": "gelu"}}, "`coefficient_network.activation`"),
        ({"energy_network": {"hidden": []}}, "`energy_network.hidden`"),
        ({"energy_network": {"num_blocks": -1}}, "`energy_network.num_blocks`"),
        ({"energy_network": {"dropout": [0.1]}}, "`energy_network.dropout`"),
        ({"energy_network": {"widths": [8]}}, "`energy_network` has unknown keys ['widths']"),
        ({"gaussian_exponents": [[0.5] * 8] * 2}, "`gaussian_exponents`"),
        ({"gaussian_centers": [[1.0] * 7] * 2}, "`gaussian_centers`"),
        ({"gaussian_centers": [1.0] * 7}, "`gaussian_centers`"),
    ],
)
def test_bad_configuration_names_the_key(change, key):
    with pytest.raises(ValueError) as error:
        ReannModel(**{**GOOD, **change})
    assert key in str(error.value)


def test_unknown_element_in_data_is_named():
    mapper = ChemicalSpeciesToAtomTypeMapper(model_type_names=["C", "H"])
    data = from_ase(molecule("CH3OH"))
    with pytest.raises(
        ValueError,
        match=r"\['O'\] on atom\(s\) 1 are not among the model's `type_names` \['C', 'H'\]",
    ):
        mapper(data)


def test_known_elements_map_to_type_indices():
    mapper = ChemicalSpeciesToAtomTypeMapper(model_type_names=["H", "C"])
    data = mapper(from_ase(molecule("CH4")))
    assert data["atom_types"].tolist() == [1, 0, 0, 0, 0]
    assert data["atom_types"].dtype == torch.long
