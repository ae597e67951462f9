"""REANN's ``configuration`` format: the shared CO2/Ni(100) file read by hand, round trips,
and one fixture per kind of malformed input."""

import numpy as np
import pytest
import torch
from nequip.data import AtomicDataDict, from_dict

from reann_nequip._keys import POLARIZABILITY_KEY, TOTAL_DIPOLE_KEY
from reann_nequip.data import (
    ConfigurationFormatError,
    ReannConfigurationDataset,
    iter_configuration,
    read_configuration,
    write_configuration,
)

# === the shared CO2/Ni(100) file, checked against numbers read with sed ===

# `sed -n '1,6p;44p;45p'`: frame 1 (lines 1-45); fractional coordinates times the cell
# diagonal 7.5203, 7.5203, 20.3176, multiplied out with `bc -l`
FRAME_1 = {
    "first_atom_cartesian": [0.882369508307, 0.018705843814, 9.885411860152],  # O
    "first_atom_forces": [0.087592, 0.399301, -1.443369],
    "energy": -206.67048,
}
# `sed -n '22456,22500p'`: frame 500, third atom (C 0.17259691 0.1228237 0.32938305)
FRAME_500 = {
    "third_atom_cartesian": [1.297980542273, 0.92367107111, 6.692273056680],
    "third_atom_forces": [0.022211, -1.442659, 2.235888],
    "energy": -205.69582,
}
# `sed -n '44551,44595p'`: frame 991, first atom (O) and last atom (Ni 0.83333 0.83333 0.0)
FRAME_991 = {
    "first_atom_cartesian": [1.297210012335, 0.273290033293, 6.636220252272],
    "last_atom_cartesian": [6.266891599, 6.266891599, 0.0],
    "last_atom_forces": [-0.000562, 0.005765, 0.424301],
    "energy": -207.93812,
}


def test_co2_ni100_frames_match_values_read_by_hand(co2_ni100):
    frames = list(iter_configuration(co2_ni100, coordinates="fractional"))
    assert len(frames) == 991
    assert all(len(f.symbols) == 39 for f in frames)
    first, middle, last = frames[0], frames[499], frames[990]
    assert first.symbols[:3] == ["O", "O", "C"] and set(first.symbols[3:]) == {"Ni"}
    np.testing.assert_array_equal(first.cell, np.diag([7.5203, 7.5203, 20.3176]))
    assert first.pbc.tolist() == [True, True, True]
    assert first.header.strip() == "point=   1" and last.line == 44551
    np.testing.assert_allclose(first.masses[[0, 2, 3]], [15.999, 12.001, 58.693])

    np.testing.assert_allclose(first.positions[0], FRAME_1["first_atom_cartesian"], atol=1e-12)
    np.testing.assert_allclose(first.forces[0], FRAME_1["first_atom_forces"], atol=0)
    assert first.properties.tolist() == [FRAME_1["energy"]]
    np.testing.assert_allclose(middle.positions[2], FRAME_500["third_atom_cartesian"], atol=1e-12)
    np.testing.assert_allclose(middle.forces[2], FRAME_500["third_atom_forces"], atol=0)
    assert middle.properties.tolist() == [FRAME_500["energy"]]
    np.testing.assert_allclose(last.positions[0], FRAME_991["first_atom_cartesian"], atol=1e-12)
    np.testing.assert_allclose(last.positions[-1], FRAME_991["last_atom_cartesian"], atol=1e-12)
    np.testing.assert_allclose(last.forces[-1], FRAME_991["last_atom_forces"], atol=0)
    assert last.properties.tolist() == [FRAME_991["energy"]]


def test_dataset_selects_frames_as_a_reann_user_splits_them(co2_ni100):
    train = ReannConfigurationDataset(co2_ni100, frames=":800", coordinates="fractional")
    test = ReannConfigurationDataset(co2_ni100, frames="800:", coordinates="fractional")
    tail = ReannConfigurationDataset(co2_ni100, frames="-191:", coordinates="fractional")
    picked = ReannConfigurationDataset(co2_ni100, frames=[990, 499, 0], coordinates="fractional")
    assert (len(train), len(test), len(tail), len(picked)) == (800, 191, 191, 3)

    last = test[190]
    assert last[AtomicDataDict.TOTAL_ENERGY_KEY].shape == (1, 1)
    assert last[AtomicDataDict.TOTAL_ENERGY_KEY].item() == pytest.approx(FRAME_991["energy"])
    torch.testing.assert_close(tail[190][AtomicDataDict.POSITIONS_KEY], last["pos"])
    torch.testing.assert_close(picked[0]["pos"], last["pos"])
    np.testing.assert_allclose(
        picked[1][AtomicDataDict.FORCE_KEY][2].numpy(), FRAME_500["third_atom_forces"], rtol=1e-6
    )
    assert picked[2][AtomicDataDict.TOTAL_ENERGY_KEY].item() == pytest.approx(FRAME_1["energy"])
    assert last[AtomicDataDict.CELL_KEY].shape == (1, 3, 3)
    assert last[AtomicDataDict.ATOMIC_NUMBERS_KEY][:3].tolist() == [8, 8, 6]


def test_fractional_file_read_as_cartesian_is_refused(co2_ni100):
    """The `coordinates` argument is honoured (and required: the file cannot tell): read as
    Cartesian, the fractional coordinates put atoms 0.098 Å apart, which the reader refuses."""
    with pytest.raises(
        ConfigurationFormatError,
        match=r"line 6: frame 0 .* atoms 0 and 2 are 0.098 Å apart.*`coordinates: fractional`",
    ):
        next(iter_configuration(co2_ni100, coordinates="cartesian"))
    with pytest.raises(ValueError, match="`coordinates` is required"):
        ReannConfigurationDataset(co2_ni100, frames=":1")


# === round trips ===


def _mixed_frames(rng):
    """Frames of different size, composition, cell and periodicity, with forces."""
    import ase

    images = []
    for symbols, pbc in (("CH4", [False] * 3), ("NiCO2Ni", [True, True, False]), ("H2O", True)):
        cell = np.diag([10.0, 11.0, 12.0]) + rng.uniform(-0.5, 0.5, (3, 3))
        atoms = ase.Atoms(symbols, cell=cell, pbc=pbc)
        atoms.positions = rng.uniform(0, 1, (len(atoms), 3)) @ cell
        atoms.info["header"] = f"frame of {symbols}"
        images.append(atoms)
    return images


@pytest.mark.parametrize("coordinates", ["cartesian", "fractional"])
@pytest.mark.parametrize("prop", ["energy", "dipole", "polarizability"])
def test_write_then_read_round_trip(tmp_path, coordinates, prop):
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(0)
    images = _mixed_frames(rng)
    for atoms in images:
        results = {"forces": rng.normal(size=(len(atoms), 3)), "energy": rng.normal()}
        results["dipole"] = rng.normal(size=3)
        atoms.calc = SinglePointCalculator(atoms, **results)
        pol = rng.normal(size=(3, 3))
        atoms.info["polarizability"] = pol + pol.T
    path = tmp_path / "configuration"
    write_configuration(path, images, coordinates=coordinates, prop=prop)

    back = read_configuration(path, ":", coordinates=coordinates)
    assert len(back) == len(images)
    for original, read in zip(images, back):
        assert read.get_chemical_symbols() == original.get_chemical_symbols()
        assert read.info["header"] == original.info["header"]
        np.testing.assert_allclose(read.positions, original.positions, rtol=1e-13, atol=1e-13)
        np.testing.assert_array_equal(np.asarray(read.cell), np.asarray(original.cell))
        assert read.pbc.tolist() == original.pbc.tolist()
        np.testing.assert_array_equal(read.get_masses(), original.get_masses())
        np.testing.assert_array_equal(read.get_forces(), original.get_forces())
        if prop == "energy":
            assert read.get_potential_energy() == original.get_potential_energy()
        elif prop == "dipole":
            np.testing.assert_array_equal(read.get_dipole_moment(), original.get_dipole_moment())
        else:
            np.testing.assert_array_equal(
                read.info["polarizability"], original.info["polarizability"]
            )

    dataset = ReannConfigurationDataset(path, coordinates=coordinates)
    assert [AtomicDataDict.num_nodes(dataset[i]) for i in range(3)] == [5, 5, 3]
    key = {
        "energy": AtomicDataDict.TOTAL_ENERGY_KEY,
        "dipole": TOTAL_DIPOLE_KEY,
        "polarizability": POLARIZABILITY_KEY,
    }[prop]
    assert (
        dataset[1][key].shape
        == {"energy": (1, 1), "dipole": (1, 3), "polarizability": (1, 3, 3)}[prop]
    )
    assert dataset[0][AtomicDataDict.PBC_KEY].tolist() == [[False, False, False]]
    assert dataset[1][AtomicDataDict.PBC_KEY].tolist() == [[True, True, False]]


def test_frames_without_forces_and_last_frame_by_default(tmp_path):
    path = tmp_path / "configuration"
    path.write_text(
        "first\n10 0 0\n0 10 0\n0 0 10\npbc 0 0 0\nH 1.008 0 0 0\nH 1.008 0.74 0 0\n"
        "abprop: -31.5\n"
        "second\n10 0 0\n0 10 0\n0 0 10\npbc 0 0 0\nHe 4.0 1 1 1\nabprop: -79.0\n\n\n"
    )
    last = read_configuration(str(path), coordinates="cartesian")
    assert last.get_chemical_symbols() == ["He"]
    assert last.get_potential_energy() == -79.0
    with pytest.raises(Exception, match="forces"):
        last.get_forces()
    dataset = ReannConfigurationDataset(path, coordinates="cartesian")
    assert AtomicDataDict.FORCE_KEY not in dataset[0]


# === the dataset keeps frames packed and builds nequip data on access ===


def _nequip_data(frame):
    """The reference conversion of one parsed frame to nequip data: every field of the file but
    the masses, in its own units."""
    data = {
        AtomicDataDict.POSITIONS_KEY: frame.positions,
        AtomicDataDict.CELL_KEY: frame.cell,
        AtomicDataDict.PBC_KEY: frame.pbc,
        AtomicDataDict.ATOMIC_NUMBERS_KEY: frame.numbers,
    }
    if frame.forces is not None:
        data[AtomicDataDict.FORCE_KEY] = frame.forces
    field, shape = {
        "energy": (AtomicDataDict.TOTAL_ENERGY_KEY, (1, 1)),
        "dipole": (TOTAL_DIPOLE_KEY, (1, 3)),
        "polarizability": (POLARIZABILITY_KEY, (1, 3, 3)),
    }[frame.property_name]
    data[field] = frame.properties.reshape(shape)
    return from_dict(data)


def _assert_same_data(actual, expected, where):
    assert sorted(actual) == sorted(expected), where
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=where + key)


@pytest.mark.parametrize("prop", ["energy", "dipole", "polarizability"])
def test_dataset_equals_parsed_frames_frame_by_frame(tmp_path, prop):
    """Frames of different sizes, elements and periodicity come back exactly as parsed, by
    index, negative index, slice and index tensor."""
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(1)
    images = _mixed_frames(rng) * 3
    for atoms in images:
        atoms.calc = SinglePointCalculator(
            atoms,
            forces=rng.normal(size=(len(atoms), 3)),
            energy=rng.normal(),
            dipole=rng.normal(size=3),
        )
        atoms.info["polarizability"] = rng.normal(size=(3, 3))
    path = tmp_path / "configuration"
    write_configuration(path, images, coordinates="fractional", prop=prop)
    parsed = [_nequip_data(f) for f in iter_configuration(path, coordinates="fractional")]

    dataset = ReannConfigurationDataset(path, coordinates="fractional")
    assert len(dataset) == len(parsed) == 9
    for index, expected in enumerate(parsed):
        _assert_same_data(dataset[index], expected, f"frame {index}: ")
    _assert_same_data(dataset[-1], parsed[-1], "frame -1: ")
    for actual, expected in zip(dataset[1:8:3], parsed[1:8:3]):
        _assert_same_data(actual, expected, "slice: ")
    for actual, expected in zip(dataset[torch.tensor([8, 0])], [parsed[8], parsed[0]]):
        _assert_same_data(actual, expected, "tensor index: ")
    with pytest.raises(IndexError):
        dataset[9]


def test_dataset_of_co2_ni100_equals_parsed_frames_and_stays_packed(co2_ni100):
    """All 991 frames as parsed; kept in a few arrays (about 2 kB per 39-atom frame), not as
    Python objects per frame; a frame changed in place leaves the dataset unchanged."""
    import gc
    import tracemalloc

    gc.collect()
    objects_before = len(gc.get_objects())
    tracemalloc.start()
    dataset = ReannConfigurationDataset(
        co2_ni100, frames=[5, *range(991)], coordinates="fractional"
    )
    kept_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    gc.collect()
    assert len(gc.get_objects()) - objects_before < 100
    # positions and forces alone are 39 * 6 * 8 = 1872 bytes per frame
    assert kept_bytes / len(dataset) < 2500

    parsed = [_nequip_data(f) for f in iter_configuration(co2_ni100, coordinates="fractional")]
    assert len(dataset) == 992
    _assert_same_data(dataset[0], parsed[5], "frame 5 first: ")
    for index, expected in enumerate(parsed):
        _assert_same_data(dataset[index + 1], expected, f"frame {index}: ")

    frame = dataset[3]
    frame[AtomicDataDict.POSITIONS_KEY] += 1.0
    frame[AtomicDataDict.FORCE_KEY].zero_()
    _assert_same_data(dataset[3], parsed[2], "after an in-place change: ")


def test_write_configuration_streams_a_generator(tmp_path):
    """A generator of atoms writes the same file as the list of them."""
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(2)
    images = _mixed_frames(rng)
    for atoms in images:
        atoms.calc = SinglePointCalculator(atoms, energy=rng.normal())
    write_configuration(tmp_path / "list", images, coordinates="fractional")
    write_configuration(tmp_path / "generator", (a for a in images), coordinates="fractional")
    assert (tmp_path / "generator").read_text() == (tmp_path / "list").read_text()


# === malformed input: one fixture per defect, each error names file and line ===

GOOD_FRAME = [
    "point= 1",
    "10.0 0.0 0.0",
    "0.0 10.0 0.0",
    "0.0 0.0 10.0",
    "pbc 1 1 0",
    "O 15.999 0.1 0.2 0.3 0.5 -0.5 0.0",
    "H 1.008 0.2 0.2 0.3 -0.5 0.5 0.0",
    "abprop: -12.5",
]


def _with(line_number, text):
    """GOOD_FRAME twice, with (1-based) line `line_number` of the second frame replaced."""
    lines = GOOD_FRAME + list(GOOD_FRAME)
    if text is None:
        del lines[8 + line_number - 1 :]
    else:
        lines[8 + line_number - 1] = text
    return "\n".join(lines) + "\n"


MALFORMED = {
    # name: (file text, line named in the error, text of the error)
    "truncated_frame": (_with(7, None), 15, "file ends inside the frame starting at line 9"),
    "non_number": (_with(6, "O 15.999 0.1 0.2 zero 0.5 -0.5 0.0"), 14, "must be numbers"),
    "nan_position": (_with(6, "O 15.999 0.1 nan 0.3 0.5 -0.5 0.0"), 14, "finite"),
    "nan_energy": (_with(8, "abprop: NaN"), 16, "finite"),
    "wrong_column_count": (_with(7, "H 1.008 0.2 0.2 0.3 -0.5 0.5"), 15, "5 or 8 columns"),
    "forces_on_some_atoms": (_with(7, "H 1.008 0.2 0.2 0.3"), 15, "forces or none"),
    "unknown_element": (_with(7, "Xx 1.008 0.2 0.2 0.3 -0.5 0.5 0.0"), 15, "unknown element 'Xx'"),
    "singular_cell": (_with(4, "10.0 10.0 0.0"), 12, "singular"),
    "lattice_row_length": (_with(3, "0.0 10.0"), 11, "lattice vector b must have 3"),
    "pbc_two_flags": (_with(5, "pbc 1 1"), 13, "exactly 3 flags"),
    "pbc_four_flags": (_with(5, "pbc 1 1 1 1"), 13, "exactly 3 flags"),
    "pbc_not_a_flag": (_with(5, "pbc 1 2 1"), 13, "0 or 1"),
    "pbc_missing": (_with(5, "O 15.999 0.1 0.2 0.3 0.5 -0.5 0.0"), 13, "`pbc px py pz`"),
    "abprop_length": (_with(8, "abprop: 1.0 2.0"), 16, r"1 \(energy\), 3 \(dipole\) or 9"),
    "abprop_changes_kind": (_with(8, "abprop: 1.0 2.0 3.0"), 9, "one kind of labels"),
    "negative_mass": (_with(6, "O -15.999 0.1 0.2 0.3 0.5 -0.5 0.0"), 14, "masses must be"),
    "blank_line_between_frames": (
        "\n".join(GOOD_FRAME) + "\n\n" + "\n".join(GOOD_FRAME) + "\n",
        9,
        "empty line between frames",
    ),
    "frame_without_atoms": (_with(6, "abprop: 1.0"), 14, "has no atoms"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_file_raises_naming_file_and_line(tmp_path, name):
    text, line, message = MALFORMED[name]
    path = tmp_path / f"{name}.configuration"
    path.write_text(text)
    with pytest.raises(ConfigurationFormatError, match=message) as error:
        list(iter_configuration(path, coordinates="cartesian"))
    assert error.value.line == line
    assert str(error.value).startswith(f"{path}, line {line}: ")
    # the dataset and the ASE-style reader stop on it too, even when the frame is not selected
    with pytest.raises(ConfigurationFormatError) as dataset_error:
        ReannConfigurationDataset(path, frames=":1", coordinates="cartesian")
    assert str(dataset_error.value) == str(error.value)
    with pytest.raises(ConfigurationFormatError):
        read_configuration(path, 0, coordinates="cartesian")


def test_bad_arguments_are_named(tmp_path):
    path = tmp_path / "configuration"
    path.write_text("\n".join(GOOD_FRAME) + "\n")
    with pytest.raises(ValueError, match="`coordinates` must be one of"):
        list(iter_configuration(path, coordinates="direct"))
    with pytest.raises(ValueError, match="`frames` must be a slice"):
        ReannConfigurationDataset(path, frames="a:b", coordinates="cartesian")
    with pytest.raises(IndexError, match=r"frame\(s\) \[3\] out of range"):
        ReannConfigurationDataset(path, frames=[0, 3], coordinates="cartesian")
    with pytest.raises(ValueError, match="selects no frame"):
        ReannConfigurationDataset(path, frames="5:", coordinates="cartesian")
