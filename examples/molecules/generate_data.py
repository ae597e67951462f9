#!/usr/bin/env python3
"""Generate ethanol and malonaldehyde reference data (energies, forces) from MD with PySCF labels.

Per molecule, two independent GFN2-xTB Langevin trajectories at 500 K (tblite + ASE) are
subsampled every 40 fs after 2 ps of equilibration: trajectory "A" is the training/validation
pool, trajectory "B" the test set. Every stored frame is labelled with restricted Kohn-Sham
B3LYP/6-31G(d) (RI-JK with cc-pVDZ-JKFIT, PySCF grid level 2, conv_tol 1e-10, analytic forces
with grid response). See README.md in this folder for the full provenance.

Steps
  1. isolated atoms C, O (triplets) and H (doublet) with UKS  -> isolated_atom_energies.json
  2. per molecule: GFN2-xTB minimum, then MD trajectories A and B (frames cached in a temp file)
  3. DFT label of every frame (JSON-lines checkpoint; a rerun with the same arguments resumes)
  4. forces vs central finite differences of the energy on the first pool frame
  5. extended XYZ (temp file, renamed into place after an ASE read-back check),
     generation_summary.json (merged per molecule)

Run (from the repository root; the committed files come from these two runs):
  OMP_NUM_THREADS=1 python examples/molecules/generate_data.py --molecule ethanol \
      --n-pool 600 --n-test 150 --seed 20240611
  OMP_NUM_THREADS=1 python examples/molecules/generate_data.py --molecule malonaldehyde \
      --n-pool 400 --n-test 100 --seed 20240611

Requires: pyscf, tblite, ase, numpy, scipy. Serial: one process, one thread.
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"  # one core: PySCF and tblite both read this at import

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402

import numpy as np  # noqa: E402
from pyscf import dft, gto, lib  # noqa: E402
from pyscf.dft import numint  # noqa: E402

lib.num_threads(1)

# ----------------------------------------------------------------------------------------
# Constants (CODATA 2018)
# ----------------------------------------------------------------------------------------
HARTREE_TO_EV = 27.211386245988
BOHR_TO_ANG = 0.529177210903
FORCE_AU_TO_EV_ANG = HARTREE_TO_EV / BOHR_TO_ANG

# ----------------------------------------------------------------------------------------
# Level of theory (labels)
# ----------------------------------------------------------------------------------------
XC = "b3lyp"  # libxc HYB_GGA_XC_B3LYP (id 402): VWN-RPA correlation, Gaussian-style B3LYP
BASIS = "6-31g*"  # 6-31G(d), spherical d functions (PySCF default cart=False)
AUXBASIS = "cc-pvdz-jkfit"  # RI for Coulomb and exchange (PySCF's choice for 6-31G*)
GRID_LEVEL = 2  # PySCF grid level 2, Treutler-Ahlrichs radial, Lebedev angular, NWChem pruning
CONV_TOL = 1e-10  # SCF energy convergence (Hartree); conv_tol_grad = sqrt(conv_tol)
CONV_TOL_TIGHT = 1e-12  # isolated atoms and finite-difference energies
MAX_SCF_CYCLES = 100
FD_STEP_ANG = 1e-3  # displacement for the force finite-difference check (Angstrom)
FD_TOL_EV_ANG = 1e-3  # largest accepted |F_analytic - F_fd|
METHOD_TAG = "b3lyp_631gd"
ATOM_SPIN = {"H": 1, "C": 2, "O": 2}  # 2S of the free-atom ground states (2S+1 = 2, 3, 3)

# ----------------------------------------------------------------------------------------
# Sampling (GFN2-xTB Langevin dynamics)
# ----------------------------------------------------------------------------------------
MD_METHOD = "GFN2-xTB"
XTB_FMAX_EV_ANG = 1e-3  # convergence of the GFN2-xTB minimisation that starts each trajectory
TIMESTEP_FS = 0.5
TEMPERATURE_K = 500.0
FRICTION_PER_FS = 0.01  # Langevin friction: velocity relaxation time 100 fs
EQUILIBRATION_FS = 2000.0
STRIDE_FS = 40.0  # time between stored frames
N_SPARE = 10  # extra frames per trajectory, used only if an SCF does not converge
BOND_SCALE = 1.25  # bonded if d < 1.25 x (sum of covalent radii), for the start geometry
MAX_HEAVY_BOND_ANG = 2.0  # a bond of the start geometry longer than this = broken molecule
MAX_H_NEIGHBOUR_ANG = 1.6  # every H must have a C or O this close (no H dissociation)

# Malonaldehyde, enol form (Z-3-hydroxyprop-2-enal) with the intramolecular O-H...O bond,
# planar: the GFN2-xTB minimum (Angstrom) of a hand-built start; re-minimised by the script.
MALONALDEHYDE_SYMBOLS = ["C", "C", "C", "O", "O", "H", "H", "H", "H"]
MALONALDEHYDE_POSITIONS = [
    [-1.2112, -0.6071, 0.0],  # carbonyl C (C=O 1.23 A)
    [0.0217, -1.3408, 0.0],  # central C
    [1.2026, -0.6723, 0.0],  # enol C, bonded to the OH group (C-O 1.31 A)
    [-1.2856, 0.6160, 0.0],  # carbonyl O
    [1.3131, 0.6338, 0.0],  # hydroxyl O
    [0.3876, 1.0112, 0.0],  # hydroxyl H (hydrogen bond to the carbonyl O)
    [-2.1314, -1.2136, 0.0],  # H on the carbonyl C
    [-0.0022, -2.4155, 0.0],  # H on the central C
    [2.1555, -1.1917, 0.0],  # H on the enol C
]
MOLECULES = ("ethanol", "malonaldehyde")
TRAJECTORIES = ("A", "B")  # A: training/validation pool, B: test set


def log(msg):
    """Progress line, flushed at once so a background run can be followed."""
    print(msg, flush=True)


def start_geometry(name):
    """Start geometry: ethanol from ASE's G2 set (anti conformer), malonaldehyde from above."""
    from ase import Atoms
    from ase.build import molecule

    if name == "ethanol":
        return molecule("CH3CH2OH")
    return Atoms(MALONALDEHYDE_SYMBOLS, positions=MALONALDEHYDE_POSITIONS)


# ----------------------------------------------------------------------------------------
# PySCF
# ----------------------------------------------------------------------------------------
class SCFFailure(RuntimeError):
    """The SCF did not converge, not even with the second-order solver."""


class CachedNumInt(numint.NumInt):
    """NumInt that evaluates the AO values on the grid once per SCF instead of every cycle.

    The grid does not move during an SCF, so the values are reused unchanged (no number
    changes; ~20 % less SCF time). Only deriv <= 1 loops are cached; the gradient code
    (deriv 2, grid response) uses the parent implementation.
    """

    def __init__(self):
        super().__init__()
        self._cache = {}

    def block_loop(
        self, mol, grids, nao=None, deriv=0, max_memory=2000, non0tab=None, blksize=None, buf=None
    ):
        if deriv > 1 or grids.coords is None:
            yield from super().block_loop(mol, grids, nao, deriv, max_memory, non0tab, blksize, buf)
            return
        key = (deriv, nao, blksize, non0tab is None)
        entry = self._cache.get(key)
        if entry is None or entry[0] is not grids.coords or entry[1] is not mol:
            blocks = [
                (ao.copy(order="K"), mask, weight, coords)
                for ao, mask, weight, coords in super().block_loop(
                    mol, grids, nao, deriv, max_memory, non0tab, blksize, None
                )
            ]
            entry = (grids.coords, mol, blocks)
            self._cache[key] = entry
        yield from entry[2]


def make_mol(symbols, pos_ang, spin=0):
    """Molecule in Bohr, converted with the CODATA-2018 Bohr radius (not PySCF's own)."""
    pos_bohr = np.asarray(pos_ang, dtype=float) / BOHR_TO_ANG
    return gto.M(
        atom=[(s, tuple(p)) for s, p in zip(symbols, pos_bohr)],
        unit="Bohr",
        basis=BASIS,
        cart=False,
        charge=0,
        spin=spin,
        symmetry=False,
        verbose=0,
    )


def make_ks(mol, unrestricted=False, conv_tol=CONV_TOL):
    mf = dft.UKS(mol) if unrestricted else dft.RKS(mol)
    mf = mf.density_fit(auxbasis=AUXBASIS)
    mf.xc = XC
    mf.grids.level = GRID_LEVEL
    mf.conv_tol = conv_tol
    mf.max_cycle = MAX_SCF_CYCLES
    mf._numint = CachedNumInt()
    return mf


def converge(mf):
    """SCF energy (Hartree); falls back to the second-order solver if DIIS does not converge."""
    e = mf.kernel()
    if not mf.converged:
        mf2 = mf.newton()
        e = mf2.kernel(mf.mo_coeff, mf.mo_occ)
        if not mf2.converged:
            raise SCFFailure("SCF did not converge")
        for attr in ("mo_coeff", "mo_occ", "mo_energy", "e_tot", "converged"):
            setattr(mf, attr, getattr(mf2, attr))
    return e


def label(symbols, pos_ang):
    """Energy (eV), forces (eV/A) and HOMO-LUMO gap (eV) of one closed-shell geometry."""
    mf = make_ks(make_mol(symbols, pos_ang))
    e = converge(mf)
    g = mf.nuc_grad_method()
    g.grid_response = True  # forces are the exact derivative of the (grid-dependent) energy
    g.verbose = 0
    grad = g.kernel()
    nocc = int(np.count_nonzero(mf.mo_occ > 0))
    return {
        "energy": float(e * HARTREE_TO_EV),
        "forces": (-grad * FORCE_AU_TO_EV_ANG).tolist(),
        "gap": float((mf.mo_energy[nocc] - mf.mo_energy[nocc - 1]) * HARTREE_TO_EV),
    }


def energy_only(symbols, pos_ang):
    mf = make_ks(make_mol(symbols, pos_ang), conv_tol=CONV_TOL_TIGHT)
    return converge(mf) * HARTREE_TO_EV


def isolated_atoms():
    """UKS energies (eV) of the free atoms in their high-spin ground states."""
    res, info = {}, {}
    for sym, spin in ATOM_SPIN.items():
        mf = make_ks(make_mol([sym], [[0.0, 0.0, 0.0]], spin=spin), True, CONV_TOL_TIGHT)
        e = converge(mf)
        s2, _ = mf.spin_square()
        res[sym] = float(e * HARTREE_TO_EV)
        info[sym] = {"two_s": spin, "energy_hartree": float(e), "s2": float(s2)}
        log(f"  {sym}: UKS 2S+1={spin + 1}  E = {e:.10f} Ha = {res[sym]:.6f} eV  <S^2> = {s2:.4f}")
    return res, info


def fd_components(name, natm):
    """Cartesian components checked by finite differences: all of them for ethanol, one per
    atom (x, y, z in turn) for the larger-basis malonaldehyde, to keep the check short."""
    if name == "ethanol":
        return [(a, k) for a in range(natm) for k in range(3)]
    return [(a, a % 3) for a in range(natm)]


def force_fd_check(symbols, pos, forces, components):
    """Central finite differences of the energy for the given (atom, axis) components."""
    fd, an = [], []
    for a, k in components:
        p = np.array(pos, float)
        p[a, k] += FD_STEP_ANG
        e_plus = energy_only(symbols, p)
        p[a, k] -= 2 * FD_STEP_ANG
        e_minus = energy_only(symbols, p)
        fd.append(-(e_plus - e_minus) / (2 * FD_STEP_ANG))
        an.append(forces[a, k])
    err = np.abs(np.array(fd) - np.array(an))
    return {
        "frame": "first frame of trajectory A",
        "step_ang": FD_STEP_ANG,
        "conv_tol_fd_energies": CONV_TOL_TIGHT,
        "components": [[a, "xyz"[k]] for a, k in components],
        "max_abs_force_ev_ang": float(np.abs(fd).max()),
        "max_abs_err_ev_ang": float(err.max()),
        "rms_err_ev_ang": float(np.sqrt(np.mean(err**2))),
    }


# ----------------------------------------------------------------------------------------
# Molecular dynamics (GFN2-xTB)
# ----------------------------------------------------------------------------------------
def xtb_calculator():
    from tblite.ase import TBLite

    return TBLite(method=MD_METHOD, verbosity=0)


def xtb_minimum(name):
    """GFN2-xTB minimum of the start geometry, centre of mass at the origin."""
    from ase.optimize import BFGS

    atoms = start_geometry(name)
    atoms.calc = xtb_calculator()
    BFGS(atoms, logfile=None).run(fmax=XTB_FMAX_EV_ANG, steps=1000)
    fmax = float(np.abs(atoms.get_forces()).max())
    assert fmax < XTB_FMAX_EV_ANG, f"GFN2-xTB minimisation of {name} did not converge"
    atoms.positions -= atoms.get_center_of_mass()
    return atoms


def bond_topology(atoms):
    """Heavy-atom bonds and the nearest heavy atom of each H, from covalent radii."""
    from ase.data import covalent_radii

    z = atoms.numbers
    d = atoms.get_all_distances()
    heavy = [i for i in range(len(atoms)) if z[i] > 1]
    bonds = [
        (i, j)
        for i in heavy
        for j in heavy
        if i < j and d[i, j] < BOND_SCALE * (covalent_radii[z[i]] + covalent_radii[z[j]])
    ]
    return bonds, heavy


def h_owners(pos, symbols, heavy):
    """Index of the nearest heavy atom of every H, and that distance."""
    h = [i for i, s in enumerate(symbols) if s == "H"]
    d = np.linalg.norm(pos[h][:, None, :] - pos[heavy][None, :, :], axis=-1)
    return [heavy[k] for k in d.argmin(axis=1)], d.min(axis=1)


def run_trajectory(start, n_frames, rng):
    """Langevin MD from the xTB minimum; returns n_frames stored frames after equilibration."""
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

    atoms = start.copy()
    atoms.calc = xtb_calculator()
    atoms.set_constraint(FixCom())
    thermalize_momenta(atoms, TEMPERATURE_K, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    dyn = Langevin(
        atoms,
        timestep=TIMESTEP_FS * units.fs,
        temperature_K=TEMPERATURE_K,
        friction=FRICTION_PER_FS / units.fs,
        fixcm=False,  # the FixCom constraint keeps the centre of mass instead
        rng=rng,
    )
    n_equil = int(round(EQUILIBRATION_FS / TIMESTEP_FS))
    n_stride = int(round(STRIDE_FS / TIMESTEP_FS))
    dyn.run(n_equil)
    frames = []
    for k in range(n_frames):
        dyn.run(n_stride)
        pos = atoms.positions - atoms.get_center_of_mass()
        frames.append(
            {
                "time_fs": EQUILIBRATION_FS + (k + 1) * STRIDE_FS,
                "positions": np.round(pos, 8).tolist(),
                "kinetic_temperature_K": float(atoms.get_temperature()),
            }
        )
    return frames


def sample(name, start, n_by_traj, seed, cache_path, header):
    """MD frames of trajectories A and B, from the temp cache when present."""
    if os.path.exists(cache_path):
        with open(cache_path) as fh:
            cached = json.load(fh)
        if cached["header"] == header:
            log(f"  MD frames from {cache_path}")
            return cached["frames"]
    frames = {}
    for i, traj in enumerate(TRAJECTORIES):
        t0 = time.time()
        rng = np.random.default_rng([seed, MOLECULES.index(name), i])
        frames[traj] = run_trajectory(start, n_by_traj[traj] + N_SPARE, rng)
        temps = [f["kinetic_temperature_K"] for f in frames[traj]]
        log(
            f"  trajectory {traj}: {len(frames[traj])} frames, "
            f"{frames[traj][-1]['time_fs'] / 1000:.1f} ps, mean T_kin {np.mean(temps):.0f} K "
            f"({time.time() - t0:.0f} s)"
        )
    with open(cache_path + ".tmp", "w") as fh:
        json.dump({"header": header, "frames": frames}, fh)
    os.replace(cache_path + ".tmp", cache_path)
    return frames


# ----------------------------------------------------------------------------------------
# Checkpoint, output and checks
# ----------------------------------------------------------------------------------------
def load_checkpoint(path, header):
    """Records of an earlier run with identical settings ([] if none)."""
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        lines = fh.read().splitlines()
    if not lines or json.loads(lines[0]) != header:
        log(f"  checkpoint {path} is from other settings: ignored")
        return []
    recs = []
    for line in lines[1:]:
        try:
            recs.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by an interrupted run
            break
    return recs


def build_atoms(symbols, rec):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = Atoms(symbols=symbols, positions=rec["positions"], pbc=False)
    atoms.info["trajectory"] = rec["trajectory"]
    atoms.info["time_fs"] = rec["time_fs"]
    atoms.info["temperature_K"] = TEMPERATURE_K
    atoms.info["kinetic_temperature_K"] = rec["kinetic_temperature_K"]
    atoms.calc = SinglePointCalculator(
        atoms, energy=rec["energy"], forces=np.asarray(rec["forces"], float)
    )
    return atoms


def check_roundtrip(path, frames):
    """Read the file back with ASE; energies, forces, positions and info must survive."""
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    back = ase.io.read(path, ":", format="extxyz")
    assert len(back) == len(frames)
    err = {"energy": 0.0, "forces": 0.0, "positions": 0.0}
    for a, b in zip(frames, back):
        assert isinstance(b.calc, SinglePointCalculator)
        assert b.get_chemical_symbols() == a.get_chemical_symbols() and not b.pbc.any()
        for key in ("trajectory", "time_fs", "temperature_K"):
            assert b.info[key] == a.info[key], key
        err["energy"] = max(err["energy"], abs(a.get_potential_energy() - b.get_potential_energy()))
        err["forces"] = max(err["forces"], float(np.abs(a.get_forces() - b.get_forces()).max()))
        err["positions"] = max(err["positions"], float(np.abs(a.positions - b.positions).max()))
    log(f"  ASE read-back of {len(back)} frames, max differences {err}")
    assert err["energy"] < 1e-9 and err["forces"] < 1e-7 and err["positions"] < 1e-7
    return err


def statistics(recs, e_low, heavy_h_ref, symbols, heavy):
    """Energy and force statistics of a set of labelled frames."""
    e = np.array([r["energy"] for r in recs])
    f = np.concatenate([np.asarray(r["forces"]).ravel() for r in recs])
    moved = [h_owners(np.asarray(r["positions"]), symbols, heavy)[0] != heavy_h_ref for r in recs]
    return {
        "count": len(recs),
        "energy_ev": {"min": e.min(), "max": e.max(), "mean": e.mean(), "std": e.std()},
        "energy_minus_lowest_ev": {"max": e.max() - e_low, "mean": e.mean() - e_low},
        "force_rms_ev_ang": float(np.sqrt(np.mean(f**2))),
        "force_max_abs_ev_ang": float(np.abs(f).max()),
        "kinetic_temperature_K_mean": float(np.mean([r["kinetic_temperature_K"] for r in recs])),
        "homo_lumo_gap_ev_min": float(min(r["gap"] for r in recs)),
        "fraction_frames_h_on_other_atom": float(np.mean(moved)),
        "seconds_per_frame": float(np.mean([r["seconds"] for r in recs])),
    }


def as_float(obj):
    """numpy scalars -> float, recursively, for json."""
    if isinstance(obj, dict):
        return {k: as_float(v) for k, v in obj.items()}
    if isinstance(obj, np.floating):
        return float(obj)
    return obj


# ----------------------------------------------------------------------------------------
# One molecule
# ----------------------------------------------------------------------------------------
def run_molecule(name, args, settings):
    """MD sampling, DFT labels, force check and output file of one molecule."""
    import ase.io

    t_start = time.time()
    n_by_traj = {"A": args.n_pool, "B": args.n_test}
    output = f"{name}_{METHOD_TAG}.xyz"
    stem = os.path.join(
        args.tmp_dir, f"{output}.seed{args.seed}.pool{args.n_pool}.test{args.n_test}"
    )
    header = json.loads(
        json.dumps(
            {
                "molecule": name,
                "seed": args.seed,
                "n": n_by_traj,
                "fd_check": not args.skip_fd_check,
                "settings": settings,
            }
        )
    )

    log(f"[{name}] GFN2-xTB minimum and MD")
    start = xtb_minimum(name)
    symbols = start.get_chemical_symbols()
    heavy_bonds, heavy = bond_topology(start)
    h_ref, _ = h_owners(start.positions, symbols, heavy)
    t0 = time.time()
    md = sample(name, start, n_by_traj, args.seed, stem + ".md.json", header)
    t_md = time.time() - t0

    log(f"[{name}] DFT labels: {args.n_pool} pool (A) + {args.n_test} test (B) frames")
    ckpt_path = stem + ".partial.jsonl"
    done = load_checkpoint(ckpt_path, header)
    if done:
        log(f"  resuming from {ckpt_path}: {len(done)} records")
    ckpt = open(ckpt_path, "w")
    ckpt.write(json.dumps(header) + "\n")
    n_total = args.n_pool + args.n_test
    n_resumed = len(done)
    recs, fd, n_failed, t_loop, n_new = [], None, 0, time.time(), 0

    def next_record():
        """The next record of the checkpoint if there is one, else None."""
        return done.pop(0) if done else None

    for traj in TRAJECTORIES:
        n_ok = 0
        for k, frame in enumerate(md[traj]):
            if n_ok == n_by_traj[traj]:
                break
            pos = np.asarray(frame["positions"])
            owners, h_dist = h_owners(pos, symbols, heavy)
            bond_len = max(np.linalg.norm(pos[i] - pos[j]) for i, j in heavy_bonds)
            assert bond_len < MAX_HEAVY_BOND_ANG, f"{name} {traj}{k}: bond broken ({bond_len:.2f})"
            assert h_dist.max() < MAX_H_NEIGHBOUR_ANG, f"{name} {traj}{k}: H dissociated"
            rec = next_record()
            if rec is not None:
                assert rec["trajectory"] == traj and rec["index"] == k, "checkpoint mismatch"
                assert rec["positions"] == frame["positions"], "checkpoint mismatch"
            else:
                t1 = time.time()
                rec = {"trajectory": traj, "index": k, **frame}
                try:
                    rec.update(label(symbols, pos))
                    rec["status"] = "ok"
                except SCFFailure:
                    rec["status"] = "scf_failed"
                    log(f"  {traj}{k}: SCF did not converge, frame skipped")
                rec["seconds"] = time.time() - t1
                n_new += 1
            ckpt.write(json.dumps(rec) + "\n")
            ckpt.flush()
            if rec["status"] != "ok":
                n_failed += 1
                continue
            n_ok += 1
            recs.append(rec)
            if fd is None and not args.skip_fd_check:
                fd = next_record()
                if fd is None:
                    log("  force finite-difference check on the first pool frame")
                    t1 = time.time()
                    comps = fd_components(name, len(symbols))
                    fd = force_fd_check(symbols, pos, np.asarray(rec["forces"]), comps)
                    fd["seconds"] = time.time() - t1
                assert "max_abs_err_ev_ang" in fd, "checkpoint mismatch"
                ckpt.write(json.dumps(fd) + "\n")
                ckpt.flush()
                log(
                    f"  max |F_analytic - F_fd| = {fd['max_abs_err_ev_ang']:.2e} eV/A "
                    f"(rms {fd['rms_err_ev_ang']:.1e}, max |F| {fd['max_abs_force_ev_ang']:.2f} "
                    f"eV/A, {len(fd['components'])} components, step {FD_STEP_ANG} A)"
                )
                assert fd["max_abs_err_ev_ang"] < FD_TOL_EV_ANG, "forces disagree with FD"
            n_done = len(recs)
            rate = (time.time() - t_loop) / max(n_new, 1)
            log(
                f"  {n_done:4d}/{n_total} {traj} t={frame['time_fs']:7.0f} fs "
                f"E={rec['energy']:.5f} eV max|F|={np.abs(rec['forces']).max():6.3f} "
                f"T_kin={frame['kinetic_temperature_K']:5.0f} K gap={rec['gap']:.2f} eV "
                f"H-moved={int(owners != h_ref)} ({rec['seconds']:.1f} s, "
                f"ETA {rate * (n_total - n_done) / 60:.1f} min)"
            )
        assert n_ok == n_by_traj[traj], f"{name} {traj}: too many SCF failures"
    ckpt.close()
    t_label = time.time() - t_loop

    log(f"[{name}] writing")
    frames = [build_atoms(symbols, r) for r in recs]
    path = os.path.join(args.out_dir, output)
    ase.io.write(path + ".tmp", frames, format="extxyz")
    roundtrip = check_roundtrip(path + ".tmp", frames)
    os.replace(path + ".tmp", path)

    e_low = min(r["energy"] for r in recs)
    table = {
        traj: statistics([r for r in recs if r["trajectory"] == traj], e_low, h_ref, symbols, heavy)
        for traj in TRAJECTORIES
    }
    table["all"] = statistics(recs, e_low, h_ref, symbols, heavy)
    for key, val in table.items():
        log(f"  {key}: {json.dumps(as_float(val))}")
    result = {
        "output": output,
        "output_bytes": os.path.getsize(path),
        "n_atoms": len(symbols),
        "symbols": symbols,
        "frames": {"A_pool": args.n_pool, "B_test": args.n_test},
        "n_scf_failures_skipped": n_failed,
        "xtb_minimum_positions_ang": np.round(start.positions, 6).tolist(),
        "force_fd_check": fd,
        "ase_roundtrip_max_diff": roundtrip,
        "statistics": as_float(table),
        "runtime_s": {
            "md": t_md,
            "labels_and_fd_check_this_run": t_label,
            "total_this_run": time.time() - t_start,
            "checkpoint_records_resumed": n_resumed,
        },
    }
    os.remove(ckpt_path)
    os.remove(stem + ".md.json")
    log(
        f"  done: {path} ({result['output_bytes']} bytes, {result['runtime_s']['total_this_run']:.0f} s)"
    )
    return result


def versions():
    import ase
    import pyscf
    import scipy
    from pyscf.dft import libxc

    return {
        "python": platform.python_version(),
        "pyscf": pyscf.__version__,
        "libxc": libxc.libxc_version(),
        "tblite": metadata.version("tblite"),
        "ase": ase.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--molecule", choices=(*MOLECULES, "all"), default="all")
    ap.add_argument("--n-pool", type=int, default=600, help="frames of trajectory A (pool)")
    ap.add_argument("--n-test", type=int, default=150, help="frames of trajectory B (test)")
    ap.add_argument("--seed", type=int, default=20240611, help="MD seed (default 20240611)")
    ap.add_argument("--out-dir", default=here, help="output folder (default: this folder)")
    ap.add_argument(
        "--tmp-dir",
        default=tempfile.gettempdir(),
        help="folder of the MD cache and the JSON-lines checkpoint; a rerun with the same "
        "arguments resumes from them",
    )
    ap.add_argument("--skip-fd-check", action="store_true", help="skip the force FD check")
    args = ap.parse_args(argv)

    t_start = time.time()
    os.makedirs(args.out_dir, exist_ok=True)
    settings = {
        "labels": {
            "method": "RKS (molecules) / UKS (atoms)",
            "xc": XC,
            "basis": BASIS,
            "spherical_basis": True,
            "density_fitting_jk": AUXBASIS,
            "grid_level": GRID_LEVEL,
            "conv_tol": CONV_TOL,
            "conv_tol_atoms_and_fd": CONV_TOL_TIGHT,
            "gradient_grid_response": True,
            "gradient_auxbasis_response": True,
        },
        "md": {
            "method": MD_METHOD,
            "integrator": "ase.md.langevin.Langevin, centre of mass fixed (FixCom)",
            "timestep_fs": TIMESTEP_FS,
            "temperature_K": TEMPERATURE_K,
            "friction_per_fs": FRICTION_PER_FS,
            "equilibration_fs": EQUILIBRATION_FS,
            "stride_fs": STRIDE_FS,
            "start": "GFN2-xTB minimum, Maxwell-Boltzmann velocities at temperature_K",
        },
    }
    vers = versions()
    log(f"versions: {vers}")
    log(f"threads: OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, pyscf {lib.num_threads()}")

    log("[atoms] isolated-atom energies")
    t0 = time.time()
    atom_e, atom_info = isolated_atoms()
    with open(os.path.join(args.out_dir, "isolated_atom_energies.json"), "w") as fh:
        json.dump(atom_e, fh, indent=2)
        fh.write("\n")
    t_atoms = time.time() - t0

    summary_path = os.path.join(args.out_dir, "generation_summary.json")
    summary = {}
    if os.path.exists(summary_path):
        with open(summary_path) as fh:
            summary = json.load(fh)
    if summary.get("settings") != settings or summary.get("seed") != args.seed:
        summary = {"molecules": {}}  # results of other settings are not kept
    summary.update(
        {
            "versions": vers,
            "settings": settings,
            "seed": args.seed,
            "isolated_atoms": {"energy_ev": atom_e, "details": atom_info, "runtime_s": t_atoms},
        }
    )
    names = MOLECULES if args.molecule == "all" else (args.molecule,)
    for name in names:
        summary["molecules"][name] = run_molecule(name, args, settings)
        summary["molecules"][name]["runtime_s"]["invocation_total"] = time.time() - t_start
        with open(summary_path + ".tmp", "w") as fh:
            json.dump(summary, fh, indent=2)
            fh.write("\n")
        os.replace(summary_path + ".tmp", summary_path)
    log(f"done in {(time.time() - t_start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
