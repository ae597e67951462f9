"""ASE calculator for files written by ``nequip-deploy build``: needs torch, ASE and the kernel
library only."""

import math
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.data import atomic_numbers

from .._limits import MIN_DISTANCE
from ..deploy.build import read_metadata
from ..deploy.committee import check_committee, force_deviation
from ..deploy.kernels import load_deployed_file


class _DeployedFile:
    """One deployed model with its metadata; its inputs come from ``reann::neighbor_list`` at
    its cutoff."""

    def __init__(self, path: str, expected_kinds: Tuple[str, ...], role: str):
        self.path = path
        self.metadata = read_metadata(path)
        self.kind = self.metadata["model_kind"]
        if self.kind not in expected_kinds:
            raise ValueError(
                f"`{path}` is a `{self.kind}` model; the {role} must be one of {expected_kinds}"
            )
        self.module = load_deployed_file(path)
        self.type_names = self.metadata["type_names"].split()
        self.r_max = float(self.metadata["r_max"])
        # atomic number → model type index, −1 for elements the model does not know
        self.type_of_number = torch.full((len(atomic_numbers) + 1,), -1, dtype=torch.int64)
        for index, name in enumerate(self.type_names):
            if name in atomic_numbers:
                self.type_of_number[atomic_numbers[name]] = index

    def __call__(self, *inputs):
        """The deployed model's outputs. Run as plain autograd ops (the TorchScript executor's
        optimisation off, as in pair_reann): its differentiable subgraphs backpropagate through
        many small generated ops and take ~10 % longer, and its first calls profile the graph."""
        with torch.jit.optimized_execution(False):
            return self.module(*inputs)

    def inputs(self, atoms: Atoms):
        """Positions, types, edges and Cartesian image shifts of ``atoms`` for this model."""
        numbers = torch.from_numpy(atoms.numbers).to(torch.int64)
        known = (numbers >= 0) & (numbers < self.type_of_number.shape[0])
        atom_types = torch.where(
            known, self.type_of_number[numbers.clamp(0, self.type_of_number.shape[0] - 1)], -1
        )
        unknown = torch.nonzero(atom_types < 0).view(-1)
        if unknown.numel():
            atom = int(unknown[0])
            raise ValueError(
                f"atom {atom} is {atoms.get_chemical_symbols()[atom]}, which model `{self.path}` "
                f"does not know (its elements: {' '.join(self.type_names)})"
            )
        positions = torch.from_numpy(atoms.get_positions())
        try:
            edge_index, shift, length = torch.ops.reann.neighbor_list(
                positions,
                torch.from_numpy(atoms.cell.array.astype(np.float64)),
                torch.from_numpy(atoms.pbc.copy()),
                self.r_max,
            )
        except RuntimeError as error:
            # non-finite positions, a singular or too thin periodic cell: the op names them
            raise ValueError(str(error)) from None
        if length.numel() and float(length.min()) < MIN_DISTANCE:
            k = int(torch.argmin(length))
            raise ValueError(
                f"atoms {int(edge_index[0, k])} and {int(edge_index[1, k])} are "
                f"{float(length[k]):.3g} Å apart (less than {MIN_DISTANCE} Å)"
            )
        return positions, atom_types, edge_index, shift


class ReannCalculator(Calculator):
    """A deployed REANN energy model, or a committee of them, and, optionally, its dipole and
    polarizability models.

    Properties: ``energy`` (eV), ``energies`` per atom, ``forces`` (eV/Å), ``stress`` (eV/Å³,
    fully periodic cells) from ``model_path``; ``dipole`` (e·Å; a transition-dipole model may
    stand in) from ``dipole_model``; ``polarizability`` (3×3, Å³) from ``polarizability_model``.
    A committee (several energy model files) adds ``energy_deviation`` (eV, the standard
    deviation of the models' total energies; the ``devi_e`` of a deviation file is this divided
    by the number of atoms) and ``forces_deviation`` [num_atoms] (eV/Å, sqrt(⟨‖F_i − ⟨F_i⟩‖²⟩)
    over the models, DeePMD's definition, see :mod:`reann_nequip.deploy.committee`).

    Example::

        calc = ReannCalculator(["m0.pth", "m1.pth", "m2.pth", "m3.pth"])
        atoms.calc = calc
        atoms.get_forces()                       # the first model's
        calc.results["forces_deviation"].max()   # DeePMD's max_devi_f

    Args:
        model_path: energy model written by ``nequip-deploy build``, or a list of them: a
            committee, whose files must share elements, cutoff, recursions, units and dtype
            (optional if a tensor model is given)
        potential: ``first`` (default): energies, forces and stress of the first model of a
            committee; ``mean``: the committee mean
        dipole_model: dipole or transition-dipole model file
        polarizability_model: polarizability model file
        num_threads: torch intra-op threads (default: leave torch's setting)
        memory: ``release`` (default: torch's allocator) or ``keep``: torch's CPU allocator
            becomes, for the whole process and for good, the block cache of ``pair_style reann
            ... memory keep``, which keeps freed blocks of 1 MiB and more for the next calculation
            and returns those a calculation did not use: no page faults on the model's large
            tensors at every MD step
    """

    implemented_properties = [
        "energy",
        "free_energy",
        "energies",
        "forces",
        "stress",
        "dipole",
        "polarizability",
        "energy_deviation",
        "forces_deviation",
    ]

    def __init__(
        self,
        model_path: Union[None, str, os.PathLike, Sequence[Union[str, os.PathLike]]] = None,
        *,
        potential: str = "first",
        dipole_model: Optional[str] = None,
        polarizability_model: Optional[str] = None,
        num_threads: Optional[int] = None,
        memory: str = "release",
        **kwargs,
    ):
        super().__init__(**kwargs)
        paths = [model_path] if isinstance(model_path, (str, os.PathLike)) else model_path or []
        paths = [os.fspath(path) for path in paths]
        if not paths and dipole_model is None and polarizability_model is None:
            raise ValueError("ReannCalculator needs at least one deployed model file")
        if memory not in ("release", "keep"):
            raise ValueError(f"memory must be `release` or `keep`, found {memory!r}")
        if potential not in ("first", "mean"):
            raise ValueError(f"potential must be `first` or `mean`, found {potential!r}")
        if potential == "mean" and len(paths) < 2:
            raise ValueError("potential `mean` needs a committee: several files in `model_path`")
        self.keep_memory = memory == "keep"
        self.potential = potential
        # the energy models; the first one's inputs (neighbour list) serve them all
        self.committee: List[_DeployedFile] = [
            _DeployedFile(path, ("energy",), "energy model") for path in paths
        ]
        check_committee(paths, [model.metadata for model in self.committee])
        self.models: Dict[str, _DeployedFile] = {}
        if self.committee:
            self.models["energy"] = self.committee[0]
        if dipole_model is not None:
            self.models["dipole"] = _DeployedFile(
                dipole_model, ("dipole", "transition_dipole"), "dipole model"
            )
        if polarizability_model is not None:
            self.models["polarizability"] = _DeployedFile(
                polarizability_model, ("polarizability",), "polarizability model"
            )
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        if self.keep_memory:
            torch.ops.reann.block_cache_install()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        """Evaluates only the models whose properties are asked for (ASE clears ``results``
        when the atoms change)."""
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if self.keep_memory:
            # a new step: the cached blocks the previous one did not use go back to the system
            torch.ops.reann.block_cache_next_step()
        energy_properties = {
            "energy",
            "free_energy",
            "energies",
            "forces",
            "stress",
            "energy_deviation",
            "forces_deviation",
        }
        wants_energy = bool(energy_properties.intersection(properties))
        if wants_energy and "energy" not in self.models:
            raise ValueError(f"{sorted(properties)} need an energy model (`model_path`)")
        if wants_energy:
            # the committee's models, each [num_atoms], [num_atoms, 3], [3, 3]
            energies, forces, virials = self._committee_outputs(atoms)
            potential = slice(None) if self.potential == "mean" else slice(0, 1)
            energy = float(energies[potential].sum(axis=1).mean())
            self.results.update(
                energy=energy,
                free_energy=energy,
                energies=energies[potential].mean(axis=0),
                forces=forces[potential].mean(axis=0),
            )
            if atoms.pbc.all():
                # ASE: σ = (1/V) ∂E/∂ε = −W/V, in Voigt order xx yy zz yz xz xy
                stress = -virials[potential].mean(axis=0) / atoms.get_volume()
                self.results["stress"] = stress.flat[[0, 4, 8, 5, 2, 1]].copy()
            if len(self.committee) > 1:
                self.results["energy_deviation"] = float(energies.sum(axis=1).std())
                self.results["forces_deviation"] = force_deviation(forces)
        for name in ("dipole", "polarizability"):
            if name in properties:
                if name not in self.models:
                    raise ValueError(f"`{name}` needs a {name} model (`{name}_model`)")
                model = self.models[name]
                value = model(*model.inputs(atoms)).numpy()
                _check_finite(model.path, atoms, name, value, per_atom=False)
                self.results[name] = value.copy()

    def _committee_outputs(self, atoms: Atoms) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Atomic energies [M, num_atoms] (eV), forces [M, num_atoms, 3] (eV/Å) and virials
        [M, 3, 3] (eV) of the M energy models, on one neighbour list, each checked finite."""
        inputs = self.models["energy"].inputs(atoms)
        energies, forces, virials = [], [], []
        for model in self.committee:
            atomic_energy, model_forces, virial = (
                value.numpy() for value in model(*inputs, len(atoms))
            )
            _check_finite(model.path, atoms, "energies", atomic_energy, per_atom=True)
            _check_finite(model.path, atoms, "forces", model_forces, per_atom=True)
            _check_finite(model.path, atoms, "virial", virial, per_atom=False)
            energies.append(atomic_energy)
            forces.append(model_forces)
            virials.append(virial)
        return np.stack(energies), np.stack(forces), np.stack(virials)


def _check_finite(path: str, atoms: Atoms, name: str, values: np.ndarray, per_atom: bool) -> None:
    """Raise ``ValueError`` if a model output holds NaN or infinity, naming the atoms at fault
    (``per_atom``: ``values`` is [num_atoms, ...]). One sum on success: a NaN or an infinity
    makes it non-finite."""
    if math.isfinite(float(values.sum())):
        return
    where = f"for {atoms.get_chemical_formula()} ({len(atoms)} atoms)"
    if per_atom:
        bad = np.flatnonzero(~np.isfinite(values.reshape(len(atoms), -1)).all(axis=1)).tolist()
        shown = ", ".join(str(i) for i in bad[:10]) + (" …" if len(bad) > 10 else "")
        where += f" on atom(s) {shown}"
    raise ValueError(
        f"model `{path}` returned non-finite {name} {where}: a geometry far outside its "
        "training data, or non-finite weights"
    )
