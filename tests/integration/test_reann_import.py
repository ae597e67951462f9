"""``reann-nequip import``: a REANN.pth state dict becomes a nequip checkpoint whose energies and
forces equal REANN's own forward pass with those weights, to round-off in float64.

The REANN side is a loop-by-loop transcription of REANN's forward written from its source
(src/density.py, src/MODEL.py, src/activate.py), reading the REANN state dict directly: ordered
3^L Cartesian products, Gaussians of the neighbour element, mixing, squares, residual coefficient
updates, element networks layer by layer with PyTorch's [out, in] Linear weights, E = Σ NN(ρ).
Forces come from autograd through that transcription.
"""

import itertools
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from nequip.data import AtomicDataDict
from nequip.model import ModelFromCheckpoint
from nequip.utils.global_state import set_global_state

from reann_nequip.cli import main as cli_main
from reann_nequip.integrations.ase import ReannCalculator
from reann_nequip.integrations.reann_checkpoint import ReannStateDictError, import_reann

from ..reference import random_atoms, reference_pairs
from ..utils import model_input

ATOMTYPE = ["H", "C", "O"]
CUTOFF = 3.5
NWAVE, NORBIT, NIPSIN = 3, 5, 2


@pytest.fixture(scope="module", autouse=True)
def float64_global_state():
    set_global_state()


# === REANN's layout, filled with known random weights ===


def write_para(para_dir, nl, oc_nl, nblock, oc_loop, table_norm, dropout_p):
    para_dir.mkdir()
    (para_dir / "input_nn").write_text(
        "# a small REANN model\n"
        "start_table = 1\n"
        "table_coor = 0\n"
        f"nl = {nl}\n"
        f"nblock = {nblock}\n"
        f"dropout_p = {dropout_p}\n"
        f"table_norm = {table_norm}\n"
        "activate = 'Tanh_like'\n"
        "oc_activate = 'Relu_like'\n"
        f"oc_nl = {oc_nl}   # coefficient networks\n"
        "oc_nblock = 1\n"
        "oc_table_norm = True\n"
        f"oc_loop = {oc_loop}\n"
        "dtype = 'float64'\n"
        f"norbit = {NORBIT}\n"
    )
    (para_dir / "input_density").write_text(
        f"cutoff = {CUTOFF}\nnipsin = {NIPSIN}\nnwave = {NWAVE}\nneigh_atoms = 20\n"
        f"atomtype = {ATOMTYPE}\n"
    )


def reann_element_net(gen, prefix, nl, nblock, table_norm, with_dropout, out):
    """State-dict entries of one REANN NNMod element Sequential (nl without REANN's M)."""
    widths = [NORBIT] + list(nl) + [nl[0]]
    state = {}

    def rand(*shape, scale=0.4):
        return scale * torch.randn(*shape, generator=gen, dtype=torch.float64)

    state[f"{prefix}.0.weight"] = rand(widths[1], widths[0])
    state[f"{prefix}.0.bias"] = rand(widths[1])
    for block in range(nblock):
        index = 0
        for i in range(1, len(widths) - 1):
            key = f"{prefix}.{block + 1}.resblock"
            state[f"{key}.{index}.alpha"] = 1.0 + rand(1, widths[i])
            state[f"{key}.{index}.beta"] = 0.3 + rand(1, widths[i], scale=0.1)
            index += 1
            if table_norm:
                state[f"{key}.{index}.weight"] = 1.0 + rand(widths[i])
                state[f"{key}.{index}.bias"] = rand(widths[i])
                index += 1
            if with_dropout:
                index += 1
            state[f"{key}.{index}.weight"] = rand(widths[i + 1], widths[i])
            state[f"{key}.{index}.bias"] = rand(widths[i + 1])
            index += 1
    state[f"{prefix}.{nblock + 1}.alpha"] = 1.0 + rand(1, nl[0])
    state[f"{prefix}.{nblock + 1}.beta"] = 0.3 + rand(1, nl[0], scale=0.1)
    state[f"{prefix}.{nblock + 2}.weight"] = rand(out, nl[0])
    state[f"{prefix}.{nblock + 2}.bias"] = rand(out) - 2.0
    return state


def reann_state_dict(seed, nl, oc_nl, nblock, oc_loop, table_norm, with_dropout, version):
    gen = torch.Generator().manual_seed(seed)
    n_types = len(ATOMTYPE)
    num_components = sum(3**order for order in range(NIPSIN + 1))
    state = {
        "density.rs": torch.rand(n_types, NWAVE, generator=gen, dtype=torch.float64) * CUTOFF,
        "density.inta": -(torch.rand(n_types, NWAVE, generator=gen, dtype=torch.float64) + 0.2),
        "density.cutoff": torch.tensor([CUTOFF], dtype=torch.float64),
        "density.index_para": torch.cat(
            [torch.full((3**order,), order, dtype=torch.long) for order in range(NIPSIN + 1)]
        ),
        "density.params": 0.05
        + 0.02 * torch.rand(n_types, NWAVE, generator=gen, dtype=torch.float64),
    }
    assert state["density.index_para"].numel() == num_components
    hyper_shape = (NIPSIN + 1, NWAVE, NORBIT)
    if version == "v1":
        hyper_shape = (oc_loop + 1, *hyper_shape)
    state["density.hyper"] = torch.randn(*hyper_shape, generator=gen, dtype=torch.float64)
    for element in ATOMTYPE:
        for step in range(oc_loop):
            state.update(
                reann_element_net(
                    gen,
                    f"density.ocmod.memssage_{step}.elemental_nets.{element}",
                    oc_nl,
                    1,
                    True,
                    False,
                    NWAVE,
                )
            )
        state.update(
            reann_element_net(
                gen, f"nnmod.elemental_nets.{element}", nl, nblock, table_norm, with_dropout, 1
            )
        )
    if version == "v1":
        state["nnmod.initpot"] = torch.tensor([-7.25], dtype=torch.float64)
    return state


# === REANN's forward, transcribed loop by loop from its source ===


def reann_activation(kind, alpha, beta, x):
    """REANN's Relu_like α·SiLU(β x) or Tanh_like α x / sqrt(1 + (β x)²)."""
    if kind == "Relu_like":
        return alpha * (beta * x) * torch.sigmoid(beta * x)
    return alpha * x / torch.sqrt(1.0 + (x * beta) ** 2)


def reann_network(state, prefix, x, kind):
    """Evaluate one REANN element Sequential: modules in key order, as torch.nn.Sequential."""
    indices = sorted(
        {int(key[len(prefix) + 1 :].split(".")[0]) for key in state if key.startswith(prefix + ".")}
    )
    for index in indices:
        key = f"{prefix}.{index}"
        if f"{key}.alpha" in state:
            x = reann_activation(kind, state[f"{key}.alpha"][0], state[f"{key}.beta"][0], x)
        elif f"{key}.resblock.0.alpha" in state:
            y = x
            sub = sorted(
                {
                    int(k[len(key) + 10 :].split(".")[0])
                    for k in state
                    if k.startswith(key + ".resblock.")
                }
            )
            for j in sub:
                sk = f"{key}.resblock.{j}"
                if f"{sk}.alpha" in state:
                    y = reann_activation(kind, state[f"{sk}.alpha"][0], state[f"{sk}.beta"][0], y)
                elif state[f"{sk}.weight"].dim() == 1:  # LayerNorm, eps 1e-5
                    mean = y.mean()
                    var = ((y - mean) ** 2).mean()
                    y = (y - mean) / torch.sqrt(var + 1e-5) * state[f"{sk}.weight"] + state[
                        f"{sk}.bias"
                    ]
                else:  # Linear, weight [out, in]
                    weight, bias = state[f"{sk}.weight"], state[f"{sk}.bias"]
                    y = torch.stack([bias[o] + (weight[o] * y).sum() for o in range(len(bias))])
            x = x + y
        else:
            weight, bias = state[f"{key}.weight"], state[f"{key}.bias"]
            x = torch.stack([bias[o] + (weight[o] * x).sum() for o in range(len(bias))])
    return x


def reann_energy(state, positions, cell, pbc, species, oc_loop):
    """REANN's total energy E = Σ_i NN_{Z_i}(ρ_i) (+ initpot per atom in v1)."""
    pairs = reference_pairs(positions.detach().numpy(), cell, pbc, CUTOFF)
    n = len(species)
    hyper = state["density.hyper"]

    def density(coefficients, step):
        mixing = hyper[step] if hyper.dim() == 4 else hyper
        rho = [torch.zeros(NORBIT, dtype=torch.float64) for _ in range(n)]
        for i in range(n):
            for order in range(NIPSIN + 1):
                for axes in itertools.product(range(3), repeat=order):
                    summed = torch.zeros(NWAVE, dtype=torch.float64)
                    for center, j, vec in pairs:
                        if center != i:
                            continue
                        # r_ij = r_i − r_j + shift, the shift fixed by the image
                        shift = torch.as_tensor(vec) - (positions[i] - positions[j]).detach()
                        r = positions[i] - positions[j] + shift
                        d = torch.linalg.norm(r)
                        orbital = (0.5 * torch.cos(d * math.pi / CUTOFF) + 0.5) ** 2
                        for a in axes:
                            orbital = orbital * r[a]
                        zj = species[j]
                        gauss = torch.exp(
                            state["density.inta"][zj] * (d - state["density.rs"][zj]) ** 2
                        )
                        summed = summed + coefficients[j] * orbital * gauss
                    mixed = summed @ mixing[order]
                    rho[i] = rho[i] + mixed**2
        return rho

    coefficients = [state["density.params"][z] for z in species]
    rho = density(coefficients, 0)
    for step in range(oc_loop):
        coefficients = [
            coefficients[i]
            + reann_network(
                state,
                f"density.ocmod.memssage_{step}.elemental_nets.{ATOMTYPE[z]}",
                rho[i],
                "Relu_like",
            )
            for i, z in enumerate(species)
        ]
        rho = density(coefficients, step + 1)
    energy = sum(
        reann_network(state, f"nnmod.elemental_nets.{ATOMTYPE[z]}", rho[i], "Tanh_like")[0]
        for i, z in enumerate(species)
    )
    if "nnmod.initpot" in state:
        energy = energy + n * state["nnmod.initpot"][0]
    return energy


CASES = {
    "v2_two_blocks_layer_norm": dict(
        nl=[4, 3], oc_nl=[3], nblock=2, oc_loop=2, table_norm=True, dropout=False, version="v2"
    ),
    "v2_dropout_no_norm": dict(
        nl=[4, 3], oc_nl=[3], nblock=1, oc_loop=1, table_norm=False, dropout=True, version="v2"
    ),
    "v1_per_step_mixing": dict(
        nl=[4], oc_nl=[3], nblock=1, oc_loop=2, table_norm=True, dropout=False, version="v1"
    ),
}


@pytest.mark.parametrize("periodic", [True, False], ids=["periodic", "molecule"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_imported_model_matches_reann_forward(tmp_path, case, periodic):
    c = CASES[case]
    dropout_p = [0.1, 0.1] if c["dropout"] else [0.0, 0.0]
    para = tmp_path / "para"
    write_para(para, c["nl"], c["oc_nl"], c["nblock"], c["oc_loop"], c["table_norm"], dropout_p)
    state = reann_state_dict(
        7,
        c["nl"],
        c["oc_nl"],
        c["nblock"],
        c["oc_loop"],
        c["table_norm"],
        c["dropout"],
        c["version"],
    )
    pth = tmp_path / "REANN.pth"
    # as REANN saves it, under DDP
    torch.save({"reannparam": {f"module.{k}": v for k, v in state.items()}, "optimizer": {}}, pth)
    out = tmp_path / "reann.ckpt"
    assert (
        cli_main(["import", str(pth), "--para", str(para), "-o", str(out), "--data", str(tmp_path)])
        == 0
    )

    model = ModelFromCheckpoint(str(out))["sole_model"]
    model.eval()
    rng = np.random.default_rng(3)
    atoms, species = random_atoms(rng, periodic)
    result = model(model_input(atoms, ATOMTYPE, CUTOFF))

    positions = torch.tensor(atoms.positions, dtype=torch.float64, requires_grad=True)
    energy = reann_energy(
        state, positions, np.asarray(atoms.cell), atoms.pbc, species, c["oc_loop"]
    )
    (gradient,) = torch.autograd.grad(energy, positions)
    assert result[AtomicDataDict.TOTAL_ENERGY_KEY].dtype == torch.float64
    np.testing.assert_allclose(
        result[AtomicDataDict.TOTAL_ENERGY_KEY].item(), energy.item(), rtol=1e-12, atol=1e-10
    )
    np.testing.assert_allclose(
        result[AtomicDataDict.FORCE_KEY].detach().numpy(), -gradient.numpy(), rtol=1e-9, atol=1e-10
    )
    assert gradient.abs().max() > 1e-3, "degenerate test: no forces"


def test_import_rejects_state_dict_that_does_not_match_para(tmp_path):
    para = tmp_path / "para"
    write_para(para, [4, 3], [3], 1, 1, True, [0.0, 0.0])
    state = reann_state_dict(1, [4, 3], [3], 1, 2, True, False, "v2")  # oc_loop 2, para says 1
    pth = tmp_path / "REANN.pth"
    torch.save({"reannparam": state}, pth)
    with pytest.raises(ReannStateDictError, match="memssage_1"):
        import_reann(str(pth), str(para), data_dir=str(tmp_path))
    state = reann_state_dict(1, [4, 3], [3], 1, 1, True, False, "v2")
    state["density.cutoff"] = torch.tensor([4.0], dtype=torch.float64)
    torch.save({"reannparam": state}, pth)
    with pytest.raises(ReannStateDictError, match="`density.cutoff` is 4.0"):
        import_reann(str(pth), str(para), data_dir=str(tmp_path))
    state = reann_state_dict(1, [5, 3], [3], 1, 1, True, False, "v2")  # nl [5, 3], para [4, 3]
    torch.save({"reannparam": state}, pth)
    with pytest.raises(ReannStateDictError, match="shape"):
        import_reann(str(pth), str(para), data_dir=str(tmp_path))


@pytest.mark.slow
def test_imported_model_deploys_with_reanns_energies(tmp_path):
    """REANN.pth → import → ``nequip-deploy build`` → ReannCalculator: energies and forces of the
    deployed file equal the imported model's and REANN's own to round-off in float64."""
    c = CASES["v2_two_blocks_layer_norm"]
    para = tmp_path / "para"
    write_para(para, c["nl"], c["oc_nl"], c["nblock"], c["oc_loop"], c["table_norm"], [0.0, 0.0])
    state = reann_state_dict(
        11, c["nl"], c["oc_nl"], c["nblock"], c["oc_loop"], c["table_norm"], False, "v2"
    )
    pth = tmp_path / "REANN.pth"
    torch.save({"reannparam": state, "optimizer": {}}, pth)
    imported = tmp_path / "reann.ckpt"
    assert cli_main(["import", str(pth), "--para", str(para), "-o", str(imported)]) == 0
    deployed = tmp_path / "reann.pth"
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "nequip-deploy"), "build"]
        + [str(imported), str(deployed)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "model_dtype           float64" in result.stdout, result.stdout

    model = ModelFromCheckpoint(str(imported))["sole_model"]
    model.eval()
    calculator = ReannCalculator(str(deployed))
    rng = np.random.default_rng(5)
    for periodic in (True, False):
        atoms, species = random_atoms(rng, periodic)
        expected = model(model_input(atoms, ATOMTYPE, CUTOFF))
        positions = torch.tensor(atoms.positions, dtype=torch.float64, requires_grad=True)
        reann = reann_energy(
            state, positions, np.asarray(atoms.cell), atoms.pbc, species, c["oc_loop"]
        )
        atoms.calc = calculator
        energy = atoms.get_potential_energy()
        np.testing.assert_allclose(
            energy, expected[AtomicDataDict.TOTAL_ENERGY_KEY].item(), rtol=1e-12, atol=1e-10
        )
        np.testing.assert_allclose(energy, reann.item(), rtol=1e-12, atol=1e-10)
        np.testing.assert_allclose(
            atoms.get_forces(),
            expected[AtomicDataDict.FORCE_KEY].detach().numpy(),
            rtol=1e-9,
            atol=1e-10,
        )
