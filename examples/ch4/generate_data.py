#!/usr/bin/env python3
"""Generate CH4 reference data (energies, forces, dipoles, polarizabilities) with PySCF.

Level of theory: restricted Kohn-Sham B3LYP / aug-cc-pVDZ (spherical basis, no density fitting),
PySCF DFT grid level 2, SCF conv_tol 1e-10. See README.md in this folder for the full provenance.

Steps
  1. isolated atoms C (triplet) and H (doublet) with UKS  -> isolated_atom_energies.json
  2. Td-constrained 1-D minimisation of E(r_CH) (root of dE/dr from analytic gradients)
  3. analytic Hessian -> harmonic frequencies (cm^-1)     -> harmonic_frequencies.json
     (plus a finite-difference Hessian from analytic gradients as a cross-check)
  4. checks at equilibrium: finite-field vs analytic (CPKS) polarizability, two field sizes
  5. sample geometries: ~60 % classical normal-mode (Boltzmann, 300-2000 K) around the minimum,
     ~40 % strongly distorted; random rotation + translation for every frame
  6. check forces against a finite difference of the energy on one distorted geometry
  7. energy, forces, dipole, finite-field polarizability for every geometry
  8. write extended XYZ (to a temp file, renamed into place only when everything is done)

Run (from the repository root):
  OMP_NUM_THREADS=1 python examples/ch4/generate_data.py --n-frames 500 --seed 20240601

Requires: pyscf, ase, numpy, scipy (and optionally pyscf-properties for the analytic
polarizability check). Computation is serial (one process, one thread).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

# ----------------------------------------------------------------------------------------
# Constants (CODATA 2018)
# ----------------------------------------------------------------------------------------
HARTREE_TO_EV = 27.211386245988
BOHR_TO_ANG = 0.529177210903
FORCE_AU_TO_EV_ANG = HARTREE_TO_EV / BOHR_TO_ANG
DIPOLE_AU_TO_E_ANG = BOHR_TO_ANG
POLAR_AU_TO_ANG3 = BOHR_TO_ANG**3
AMU_TO_ME = 1822.888486209  # electron masses per dalton
KB_HARTREE_PER_K = 3.1668115634556e-6  # Boltzmann constant in Hartree / K
HARTREE_TO_CM1 = 219474.6313632  # Hartree -> wavenumber (cm^-1)

# ----------------------------------------------------------------------------------------
# Level of theory
# ----------------------------------------------------------------------------------------
XC = "b3lyp"  # libxc HYB_GGA_XC_B3LYP (id 402): VWN-RPA correlation, Gaussian-style B3LYP
BASIS = "aug-cc-pvdz"
GRID_LEVEL = 2  # PySCF grid level 2: C (60 radial, 302 Lebedev), H (40, 194), NWChem pruning
CONV_TOL = 1e-10  # SCF energy convergence (Hartree); PySCF conv_tol_grad = sqrt(conv_tol)
FIELD = 1e-3  # finite-field step (atomic units) for the central-difference polarizability
FIELD_CHECK = 5e-4  # second field size used only for the check at the equilibrium geometry
FD_STEP_ANG = 1e-3  # displacement for the force finite-difference check (Angstrom)

SYMBOLS = ["C", "H", "H", "H", "H"]
# Masses used for normal modes / frequencies: ASE's standard atomic masses, i.e. the masses an
# ASE-driven MD run would use, so frequencies are comparable with an IR spectrum from MD.
MASSES_AMU = {"C": 12.011, "H": 1.008}

# Sampling parameters
NEAR_EQ_FRACTION = 0.6
TEMPERATURES_K = (300.0, 600.0, 1000.0, 1500.0, 2000.0)
CH_RANGE_ANG = (0.8, 1.8)
MIN_HH_ANG = 0.7
MIN_CH_ANG = 0.75
TRANSLATION_ANG = 2.0  # uniform in [-2, 2] Angstrom per Cartesian component
ASYM_WARN = 1e-3  # relative asymmetry of the raw finite-field tensor: counted and reported
ASYM_FAIL = 2e-2  # ... and treated as a failure of the finite-field procedure
N_SPARE = 60  # spare geometries of each kind, used only if an SCF fails to converge


def log(msg):
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------
# PySCF helpers
# ----------------------------------------------------------------------------------------
from pyscf import dft, gto, lib  # noqa: E402
from pyscf.dft import numint  # noqa: E402

lib.num_threads(1)


class CachedNumInt(numint.NumInt):
    """NumInt that keeps AO values on the grid between SCF cycles.

    At one geometry the molecule and the grid do not change between the zero-field SCF and
    the six finite-field SCFs, so the AO values (and gradients) on the grid are evaluated
    once and reused; this changes no number, it only saves ~30 % of the run time.  Only the
    deriv <= 1 loops (energy / potential) are cached; gradients use the parent code.
    """

    def __init__(self):
        super().__init__()
        self._ao_cache = {}

    def block_loop(
        self, mol, grids, nao=None, deriv=0, max_memory=2000, non0tab=None, blksize=None, buf=None
    ):
        if deriv > 1 or grids.coords is None or mol is not grids.mol:
            yield from super().block_loop(mol, grids, nao, deriv, max_memory, non0tab, blksize, buf)
            return
        key = (
            id(mol),
            id(grids),
            grids.coords.ctypes.data,
            grids.coords.shape[0],
            nao,
            deriv,
            None if non0tab is None else non0tab.ctypes.data,
            blksize,
        )
        if key not in self._ao_cache:
            self._ao_cache[key] = [
                (ao.copy(order="K"), mask, weight, coords)
                for ao, mask, weight, coords in super().block_loop(
                    mol, grids, nao, deriv, max_memory, non0tab, blksize, None
                )
            ]
        yield from self._ao_cache[key]


class SCFFailure(RuntimeError):
    pass


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
    mf.xc = XC
    mf.grids.level = GRID_LEVEL
    mf.conv_tol = conv_tol
    mf.max_cycle = 100
    mf._numint = CachedNumInt()
    return mf


def converge(mf, dm0=None):
    e = mf.kernel(dm0=dm0)
    if not mf.converged:
        # second-order solver starting from where DIIS stopped
        mf2 = mf.newton()
        e = mf2.kernel(mf.mo_coeff, mf.mo_occ)
        if not mf2.converged:
            raise SCFFailure("SCF did not converge")
        for attr in ("mo_coeff", "mo_occ", "mo_energy", "e_tot", "converged"):
            setattr(mf, attr, getattr(mf2, attr))
    return e


def gradient(mf):
    g = mf.nuc_grad_method()
    g.grid_response = True  # forces are the exact derivative of the (grid-dependent) energy
    g.verbose = 0
    return g.kernel()


def dipole_au(mol, dm, rints):
    """Dipole about the coordinate origin (atomic units); rints = <mu|r|nu> about origin."""
    nuc = np.einsum("i,ix->x", mol.atom_charges(), mol.atom_coords())
    return nuc - np.einsum("xij,ji->x", rints, dm)


def finite_field_polarizability(mf, rints, dm0, field):
    """alpha_ij = d mu_i / d F_j by central differences (atomic units), raw (unsymmetrised).

    The perturbation is -mu_op . F; for electrons mu_op = -r, so +F . r is added to the core
    Hamiltonian (this sign gives a positive polarizability, checked against CPKS)."""
    h0 = mf.get_hcore()
    alpha = np.zeros((3, 3))
    try:
        for j in range(3):
            mus = {}
            dm_plus = None
            for sign in (+1, -1):
                f = sign * field
                mf.get_hcore = lambda *args, _f=f, _j=j, **kw: h0 + _f * rints[_j]
                # -F: start from the linear extrapolation 2 D(0) - D(+F), error O(F^2)
                guess = dm0 if dm_plus is None else 2.0 * dm0 - dm_plus
                converge(mf, dm0=guess)
                dm = mf.make_rdm1()
                if dm_plus is None:
                    dm_plus = dm
                mus[sign] = dipole_au(mf.mol, dm, rints)
            alpha[:, j] = (mus[+1] - mus[-1]) / (2.0 * field)
    finally:
        if "get_hcore" in mf.__dict__:
            del mf.get_hcore
    return alpha


def compute_frame(pos_ang, field=FIELD):
    """All reference quantities for one CH4 geometry (SI-ish output units, see README)."""
    mol = make_mol(SYMBOLS, pos_ang)
    mf = make_ks(mol)
    e = converge(mf)
    grad = gradient(mf)
    dm0 = mf.make_rdm1()
    with mol.with_common_orig((0.0, 0.0, 0.0)):
        rints = mol.intor("int1e_r", comp=3)
    mu = dipole_au(mol, dm0, rints)
    mo_e = mf.mo_energy
    nocc = int(np.count_nonzero(mf.mo_occ > 0))
    gap_ev = float(mo_e[nocc] - mo_e[nocc - 1]) * HARTREE_TO_EV
    alpha_raw = finite_field_polarizability(mf, rints, dm0, field)
    alpha = 0.5 * (alpha_raw + alpha_raw.T)
    return {
        "energy": e * HARTREE_TO_EV,
        "forces": -grad * FORCE_AU_TO_EV_ANG,
        "dipole": mu * DIPOLE_AU_TO_E_ANG,
        "polarizability": alpha * POLAR_AU_TO_ANG3,
        "polarizability_asym_au": float(np.max(np.abs(alpha_raw - alpha_raw.T))),
        "polarizability_max_au": float(np.max(np.abs(alpha_raw))),
        "homo_lumo_gap_ev": gap_ev,
        "energy_au": e,
        "mf": mf,
        "rints": rints,
        "dm0": dm0,
    }


def energy_only(pos_ang, conv_tol=1e-12):
    mf = make_ks(make_mol(SYMBOLS, pos_ang), conv_tol=conv_tol)
    return converge(mf) * HARTREE_TO_EV


# ----------------------------------------------------------------------------------------
# Geometry helpers
# ----------------------------------------------------------------------------------------
TD_DIRS = np.array([[1, 1, 1], [-1, -1, 1], [-1, 1, -1], [1, -1, -1]], float) / np.sqrt(3.0)


def td_geometry(r_ch):
    """Td CH4, C at the origin, H on cube-corner directions (Lebedev grids keep Td exactly)."""
    return np.vstack([np.zeros(3), r_ch * TD_DIRS])


def random_rotation(rng):
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def min_distances(pos):
    ch = np.linalg.norm(pos[1:] - pos[0], axis=1).min()
    hh = min(np.linalg.norm(pos[i] - pos[j]) for i in range(1, 5) for j in range(i + 1, 5))
    return ch, hh


def acceptable(pos):
    ch, hh = min_distances(pos)
    return ch >= MIN_CH_ANG and hh >= MIN_HH_ANG


def rotate_translate(pos, rng):
    com = pos.mean(axis=0)
    rot = random_rotation(rng)
    shift = rng.uniform(-TRANSLATION_ANG, TRANSLATION_ANG, size=3)
    return (pos - com) @ rot.T + shift


def normal_modes(hess_au, pos_ang, masses_amu):
    """Vibrational normal modes in atomic units.

    hess_au: (natm, natm, 3, 3) in Hartree/Bohr^2.  Returns omega (Hartree, i.e. hbar*omega)
    and Cartesian displacement vectors per unit mass-weighted coordinate (columns, Bohr/sqrt(me)).
    Translations and rotations are projected out."""
    natm = len(masses_amu)
    m = np.asarray(masses_amu) * AMU_TO_ME
    h = hess_au.transpose(0, 2, 1, 3).reshape(3 * natm, 3 * natm)
    h = 0.5 * (h + h.T)
    sqm = np.repeat(np.sqrt(m), 3)
    hmw = h / np.outer(sqm, sqm)
    x = np.asarray(pos_ang) / BOHR_TO_ANG
    x = x - (m[:, None] * x).sum(0) / m.sum()
    tr = []
    for k in range(3):
        v = np.zeros((natm, 3))
        v[:, k] = 1.0
        tr.append((v * np.sqrt(m)[:, None]).ravel())
        e_k = np.eye(3)[k]
        tr.append((np.cross(e_k, x) * np.sqrt(m)[:, None]).ravel())
    q, _ = np.linalg.qr(np.array(tr).T)
    proj = np.eye(3 * natm) - q @ q.T
    w2, vec = np.linalg.eigh(proj @ hmw @ proj)
    order = np.argsort(w2)[6:]  # drop the 6 projected (zero) modes
    w2, vec = w2[order], vec[:, order]
    assert np.all(w2 > 0), "imaginary frequency at the optimised geometry"
    return np.sqrt(w2), vec / sqm[:, None]


def sample_near_eq(rng, n, pos_eq, omega, cart_modes):
    """Classical harmonic Boltzmann distribution of the normal coordinates at temperature T.

    Each mass-weighted normal coordinate q_k ~ N(0, k T / omega_k^2), i.e. the distribution a
    classical MD run at T samples in the harmonic limit (mean potential energy 9/2 k T).
    Temperatures cycle through TEMPERATURES_K."""
    out = []
    for i in range(n):
        temp = TEMPERATURES_K[i % len(TEMPERATURES_K)]
        while True:
            sigma = np.sqrt(KB_HARTREE_PER_K * temp) / omega
            qn = rng.normal(size=omega.size) * sigma
            disp = (cart_modes @ qn).reshape(-1, 3) * BOHR_TO_ANG
            pos = pos_eq + disp
            if acceptable(pos):
                break
        out.append(("near_eq", temp, rotate_translate(pos, rng)))
    return out


def sample_distorted(rng, n):
    out = []
    while len(out) < n:
        r = rng.uniform(*CH_RANGE_ANG, size=4)
        d = rng.normal(size=(4, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        pos = np.vstack([np.zeros(3), d * r[:, None]])
        if not acceptable(pos):
            continue
        out.append(("distorted", 0.0, rotate_translate(pos, rng)))
    return out


# ----------------------------------------------------------------------------------------
# Main stages
# ----------------------------------------------------------------------------------------
def isolated_atoms():
    res = {}
    for sym, spin in (("C", 2), ("H", 1)):
        mol = make_mol([sym], [[0.0, 0.0, 0.0]], spin=spin)
        mf = make_ks(mol, unrestricted=True, conv_tol=1e-12)
        e = converge(mf)
        s2, mult = mf.spin_square()
        res[sym] = e * HARTREE_TO_EV
        log(
            f"  isolated {sym}: UKS 2S+1={spin + 1}  E = {e:.10f} Ha = {res[sym]:.6f} eV  "
            f"<S^2> = {s2:.4f}"
        )
    return res


def optimise_td():
    """Root of dE/dr_CH (Td symmetry kept exactly) from analytic gradients."""
    from scipy.optimize import brentq

    def dedr(r):
        mol = make_mol(SYMBOLS, td_geometry(r))
        mf = make_ks(mol, conv_tol=1e-12)
        converge(mf)
        g = gradient(mf)  # Hartree / Bohr
        return float(np.einsum("ix,ix->", g[1:], TD_DIRS))  # dE/dr in Hartree / Bohr

    r_eq = brentq(dedr, 1.05, 1.15, xtol=1e-7, rtol=1e-12)
    pos = td_geometry(r_eq)
    mol = make_mol(SYMBOLS, pos)
    mf = make_ks(mol, conv_tol=1e-12)
    e = converge(mf)
    g = gradient(mf)
    log(f"  r_CH(eq) = {r_eq:.6f} A   E = {e:.10f} Ha   max|grad| = {np.abs(g).max():.2e} Ha/Bohr")
    for dr in (-1e-3, 1e-3):
        e2 = energy_only(td_geometry(r_eq + dr)) / HARTREE_TO_EV
        assert e2 > e, "optimised geometry is not a minimum along r_CH"
    return r_eq, pos, mf


def fd_hessian(pos_ang, step_bohr=5e-3):
    """Hessian by central differences of analytic gradients (with grid response)."""
    natm = len(pos_ang)
    hess = np.zeros((natm, 3, natm, 3))
    for a in range(natm):
        for k in range(3):
            gs = []
            for s in (+1, -1):
                p = np.array(pos_ang, float)
                p[a, k] += s * step_bohr * BOHR_TO_ANG
                mf = make_ks(make_mol(SYMBOLS, p), conv_tol=1e-12)
                converge(mf)
                gs.append(gradient(mf))
            hess[a, k] = (gs[0] - gs[1]) / (2 * step_bohr)
    hess = hess.transpose(0, 2, 1, 3)  # (natm, natm, 3, 3)
    h = hess.transpose(0, 2, 1, 3).reshape(3 * natm, 3 * natm)
    h = 0.5 * (h + h.T)
    return h.reshape(natm, 3, natm, 3).transpose(0, 2, 1, 3)


def frequencies(mol, hess, masses_amu):
    from pyscf.hessian import thermo

    res = thermo.harmonic_analysis(mol, hess, mass=np.asarray(masses_amu))
    freqs = np.asarray(res["freq_wavenumber"])
    assert not np.iscomplexobj(freqs) or np.all(np.abs(freqs.imag) < 1e-6), freqs
    return np.sort(freqs.real)


def analytic_polarizability(mf):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pyscf.prop.polarizability.rks import Polarizability
    except ImportError:
        return None
    return np.asarray(Polarizability(mf).polarizability())


def force_fd_check(pos_ang, forces_ev_ang):
    """Central finite differences of the energy on every Cartesian coordinate."""
    fd = np.zeros_like(forces_ev_ang)
    for a in range(len(pos_ang)):
        for k in range(3):
            ep, em = [], []
            p = np.array(pos_ang, float)
            p[a, k] += FD_STEP_ANG
            ep = energy_only(p)
            p[a, k] -= 2 * FD_STEP_ANG
            em = energy_only(p)
            fd[a, k] = -(ep - em) / (2 * FD_STEP_ANG)
    return fd


def build_atoms(pos, res, kind):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = Atoms(symbols=SYMBOLS, positions=pos, cell=np.zeros((3, 3)), pbc=False)
    atoms.info["kind"] = kind
    atoms.info["dipole"] = np.asarray(res["dipole"], float)
    atoms.info["polarizability"] = np.asarray(res["polarizability"], float).reshape(9)
    atoms.calc = SinglePointCalculator(
        atoms, energy=float(res["energy"]), forces=np.asarray(res["forces"], float)
    )
    return atoms


def check_roundtrip(path, frames):
    """Read the file back with ASE and show where every quantity ends up."""
    import ase.io

    back = ase.io.read(path, ":", format="extxyz")
    assert len(back) == len(frames)
    a0 = back[0]
    log("  ASE read-back of frame 0:")
    log(f"    type(atoms.calc)          = {type(a0.calc).__name__}")
    log(f"    atoms.calc.results keys   = {sorted(a0.calc.results)}")
    log(f"    atoms.info keys           = {sorted(a0.info)}")
    log(f"    atoms.arrays keys         = {sorted(a0.arrays)}")
    log(f"    get_potential_energy()    = {a0.get_potential_energy()!r}")
    log(f"    get_forces().shape        = {a0.get_forces().shape}")
    log(f"    dipole: calc.results['dipole'] = {a0.calc.results.get('dipole')}")
    pol = a0.info.get("polarizability")
    log(
        f"    info['polarizability'] shape {np.shape(pol)} (older ASE versions turn 9 numbers "
        f"into a 3x3 matrix in Fortran order; the tensor is symmetric, so the order is irrelevant)"
    )
    log(f"    cell = {a0.cell.array.tolist()}  pbc = {a0.pbc.tolist()}")
    err = {"energy": 0.0, "forces": 0.0, "dipole": 0.0, "polarizability": 0.0, "positions": 0.0}
    for a, b in zip(frames, back):
        assert a.info["kind"] == b.info["kind"]
        err["energy"] = max(err["energy"], abs(a.get_potential_energy() - b.get_potential_energy()))
        err["forces"] = max(err["forces"], np.abs(a.get_forces() - b.get_forces()).max())
        err["positions"] = max(err["positions"], np.abs(a.positions - b.positions).max())
        dip_b = b.calc.results["dipole"] if "dipole" in b.calc.results else b.info["dipole"]
        err["dipole"] = max(err["dipole"], np.abs(a.info["dipole"] - dip_b).max())
        pol_b = np.asarray(b.info["polarizability"]).reshape(3, 3)
        pol_a = a.info["polarizability"].reshape(3, 3)
        err["polarizability"] = max(
            err["polarizability"], min(np.abs(pol_a - pol_b).max(), np.abs(pol_a - pol_b.T).max())
        )
    log(f"    max round-trip differences: {err}")
    assert err["energy"] < 1e-9 and err["forces"] < 1e-7 and err["dipole"] < 1e-9
    assert err["polarizability"] < 1e-9 and err["positions"] < 1e-7
    return err


def load_checkpoint(path, header):
    """Finished frames from an earlier run with identical settings ([] if none)."""
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


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-frames", type=int, default=500, help="number of geometries (default 500)")
    ap.add_argument("--seed", type=int, default=20240601, help="numpy seed (default 20240601)")
    ap.add_argument("--out-dir", default=here, help="output folder (default: this folder)")
    ap.add_argument("--output", default="ch4_b3lyp_augccpvdz.xyz", help="extxyz file name")
    ap.add_argument(
        "--skip-fd-hessian",
        action="store_true",
        help="skip the finite-difference Hessian cross-check (saves ~2 min)",
    )
    ap.add_argument(
        "--checkpoint",
        default=None,
        help="JSON-lines checkpoint of finished frames (default: in the temp folder); "
        "a rerun with the same arguments resumes from it",
    )
    args = ap.parse_args(argv)

    import ase
    import pyscf
    import scipy

    t_start = time.time()
    os.makedirs(args.out_dir, exist_ok=True)
    versions = {
        "python": platform.python_version(),
        "pyscf": pyscf.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "ase": ase.__version__,
    }
    try:
        from pyscf.dft import libxc

        versions["libxc"] = libxc.libxc_version()
    except Exception:  # pragma: no cover
        pass
    log(f"versions: {versions}")
    log(
        f"level: RKS {XC}/{BASIS} (spherical), grid level {GRID_LEVEL}, conv_tol {CONV_TOL}, "
        f"no density fitting; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    )
    summary = {
        "versions": versions,
        "settings": {
            "xc": XC,
            "basis": BASIS,
            "spherical_basis": True,
            "grid_level": GRID_LEVEL,
            "conv_tol": CONV_TOL,
            "density_fitting": False,
            "gradient_grid_response": True,
            "finite_field_au": FIELD,
            "n_frames": args.n_frames,
            "seed": args.seed,
            "near_eq_fraction": NEAR_EQ_FRACTION,
            "temperatures_K": list(TEMPERATURES_K),
            "ch_range_ang": list(CH_RANGE_ANG),
            "min_hh_ang": MIN_HH_ANG,
            "min_ch_ang": MIN_CH_ANG,
            "translation_ang": TRANSLATION_ANG,
            "masses_amu": MASSES_AMU,
        },
    }

    # 1. isolated atoms ---------------------------------------------------------------------
    log("[1] isolated atoms")
    atoms_e = isolated_atoms()
    with open(os.path.join(args.out_dir, "isolated_atom_energies.json"), "w") as fh:
        json.dump(atoms_e, fh, indent=2)
        fh.write("\n")

    # 2. equilibrium ------------------------------------------------------------------------
    log("[2] Td optimisation of r_CH")
    t0 = time.time()
    r_eq, pos_eq, mf_eq = optimise_td()
    e_min_ev = mf_eq.e_tot * HARTREE_TO_EV
    log(f"  ({time.time() - t0:.0f} s)")

    # 3. frequencies ------------------------------------------------------------------------
    log("[3] harmonic frequencies")
    t0 = time.time()
    masses = [MASSES_AMU[s] for s in SYMBOLS]
    hess = mf_eq.Hessian().kernel()
    freqs = frequencies(mf_eq.mol, hess, masses)
    omega, cart_modes = normal_modes(hess, pos_eq, masses)
    own = np.sort(omega * HARTREE_TO_CM1)
    assert np.allclose(own, freqs, atol=0.05), (own, freqs)
    log(f"  analytic Hessian frequencies (cm^-1): {np.round(freqs, 2).tolist()}")
    freq_out = {
        "level_of_theory": f"RKS {XC.upper()}/{BASIS}, PySCF grid level {GRID_LEVEL}",
        "r_CH_eq_angstrom": r_eq,
        "energy_min_eV": e_min_ev,
        "masses_amu": MASSES_AMU,
        "method": "analytic Hessian (pyscf.hessian, no grid response), "
        "pyscf.hessian.thermo.harmonic_analysis with translations/rotations projected out",
        "frequencies_cm-1": [float(f) for f in freqs],
    }
    if not args.skip_fd_hessian:
        hess_fd = fd_hessian(pos_eq)
        freqs_fd = frequencies(mf_eq.mol, hess_fd, masses)
        log(f"  finite-difference-of-gradient frequencies: {np.round(freqs_fd, 2).tolist()}")
        freq_out["frequencies_fd_gradients_cm-1"] = [float(f) for f in freqs_fd]
        freq_out["fd_method"] = (
            "central differences (0.005 Bohr) of analytic gradients with "
            "DFT-grid response, i.e. the Hessian of the PES in the data set"
        )
    # degeneracy pattern of Td CH4: A1 + E + 2 T2 -> 1 + 2 + 3 + 3
    with open(os.path.join(args.out_dir, "harmonic_frequencies.json"), "w") as fh:
        json.dump(freq_out, fh, indent=2)
        fh.write("\n")
    log(f"  ({time.time() - t0:.0f} s)")

    # 4. polarizability checks at equilibrium ------------------------------------------------
    log("[4] polarizability checks at the equilibrium geometry")
    t0 = time.time()
    res_eq = compute_frame(pos_eq)
    a1 = finite_field_polarizability(res_eq["mf"], res_eq["rints"], res_eq["dm0"], FIELD)
    a2 = finite_field_polarizability(res_eq["mf"], res_eq["rints"], res_eq["dm0"], FIELD_CHECK)
    iso1, iso2 = np.trace(a1) / 3, np.trace(a2) / 3
    rel_field = abs(iso1 - iso2) / iso1
    log(
        f"  FF alpha_iso (F={FIELD}) = {iso1:.6f} au, (F={FIELD_CHECK}) = {iso2:.6f} au, "
        f"rel. diff {rel_field:.1e}"
    )
    pol_check = {
        "alpha_iso_ff_au": iso1,
        "alpha_iso_ff_half_field_au": iso2,
        "rel_diff_field_sizes": rel_field,
        "alpha_iso_ff_ang3": iso1 * POLAR_AU_TO_ANG3,
        "dipole_eq_e_ang": res_eq["dipole"].tolist(),
    }
    assert rel_field < 1e-4, "finite-field polarizability depends on the field size"
    a_an = analytic_polarizability(mf_eq)  # zero-field SCF at the minimum (conv_tol 1e-12)
    if a_an is not None:
        rel_an = np.abs(a1 - a_an).max() / np.abs(a_an).max()
        log(
            f"  analytic (CPKS, pyscf-properties) alpha diag = {np.diag(a_an).round(6).tolist()} au,"
            f" FF diag = {np.diag(a1).round(6).tolist()} au, max rel. diff {rel_an:.1e}"
        )
        pol_check.update(
            {
                "alpha_iso_analytic_au": float(np.trace(a_an) / 3),
                "max_rel_diff_ff_vs_analytic": float(rel_an),
            }
        )
        assert rel_an < 1e-3
    else:
        log("  pyscf-properties not installed: analytic check skipped")
    assert np.abs(res_eq["dipole"]).max() < 1e-5, "Td CH4 must have no dipole"
    summary["polarizability_check"] = pol_check
    log(f"  ({time.time() - t0:.0f} s)")

    # 5. sampling ---------------------------------------------------------------------------
    log("[5] sampling geometries")
    rng = np.random.default_rng(args.seed)
    n_near = int(round(NEAR_EQ_FRACTION * args.n_frames))
    n_dist = args.n_frames - n_near
    near = sample_near_eq(rng, n_near + N_SPARE, pos_eq, omega, cart_modes)
    dist = sample_distorted(rng, n_dist + N_SPARE)
    todo = near[:n_near] + dist[:n_dist]
    spares = {"near_eq": near[n_near:], "distorted": dist[n_dist:]}
    order = rng.permutation(len(todo))
    # positions are rounded to the precision written to the file, so the stored positions
    # are exactly the ones the quantities were computed at
    todo = [(todo[i][0], todo[i][1], np.round(todo[i][2], 8)) for i in order]
    for k in spares:
        spares[k] = [(a, b, np.round(c, 8)) for a, b, c in spares[k]]
    log(f"  {n_near} near-equilibrium + {n_dist} distorted, seed {args.seed}")

    # 6. force check ------------------------------------------------------------------------
    log("[6] force finite-difference check")
    t0 = time.time()
    check_pos = next(p for k, _, p in todo if k == "distorted")
    res_c = compute_frame(check_pos)
    fd = force_fd_check(check_pos, res_c["forces"])
    f_err = float(np.abs(fd - res_c["forces"]).max())
    log(
        f"  max |F_analytic - F_fd| = {f_err:.2e} eV/A (max |F| = {np.abs(fd).max():.3f} eV/A, "
        f"step {FD_STEP_ANG} A)"
    )
    assert f_err < 2e-4, "analytic forces disagree with finite differences of the energy"
    summary["force_fd_check_max_abs_err_ev_ang"] = f_err
    log(f"  ({time.time() - t0:.0f} s)")

    # 7. main loop --------------------------------------------------------------------------
    # Every finished frame is appended to a JSON-lines checkpoint (outside the repository by
    # default); a rerun with the same arguments resumes from it.  The extxyz file itself is
    # written only at the very end.
    log(f"[7] computing {len(todo)} frames")
    t_loop = time.time()
    header = json.loads(json.dumps({"seed": args.seed, "settings": summary["settings"]}))
    ckpt_path = args.checkpoint or os.path.join(
        tempfile.gettempdir(), f"{args.output}.seed{args.seed}.n{args.n_frames}.partial.jsonl"
    )
    done_recs = load_checkpoint(ckpt_path, header)
    if done_recs:
        log(f"  resuming from {ckpt_path}: {len(done_recs)} frames already done")
    ckpt = open(ckpt_path, "w")
    ckpt.write(json.dumps(header) + "\n")
    frames, records, n_replaced, n_asym_warn = [], [], 0, 0
    for i, (kind, temp, pos) in enumerate(todo):
        t1 = time.time()
        if i < len(done_recs):
            rec = done_recs[i]
            for _ in range(rec["n_spares_used"]):
                kind, temp, pos = spares[kind].pop(0)
            assert np.array_equal(np.asarray(rec["positions"]), pos), "checkpoint mismatch"
            n_replaced += rec["n_spares_used"]
        else:
            n_spares_used = 0
            while True:
                try:
                    res = compute_frame(pos)
                    break
                except SCFFailure:
                    n_spares_used += 1
                    log(f"  frame {i}: SCF failed, using a spare {kind} geometry")
                    kind, temp, pos = spares[kind].pop(0)
            n_replaced += n_spares_used
            rec = {
                "kind": kind,
                "T": temp,
                "n_spares_used": n_spares_used,
                "positions": pos.tolist(),
                "energy": float(res["energy"]),
                "forces": res["forces"].tolist(),
                "dipole": res["dipole"].tolist(),
                "polarizability": res["polarizability"].tolist(),
                "asym_rel": res["polarizability_asym_au"] / res["polarizability_max_au"],
                "gap": res["homo_lumo_gap_ev"],
            }
        ckpt.write(json.dumps(rec) + "\n")
        ckpt.flush()
        forces = np.asarray(rec["forces"])
        pol = np.asarray(rec["polarizability"])
        e_rel = rec["energy"] - e_min_ev
        assert e_rel > (0.0 if kind == "distorted" else -1e-3), (i, kind, e_rel)
        # the raw finite-field tensor is symmetric to ~1e-5 near equilibrium; strongly
        # distorted, small-gap frames reach ~1e-3 (higher-order response); stored symmetrised
        assert rec["asym_rel"] < ASYM_FAIL, (i, rec["asym_rel"])
        if rec["asym_rel"] > ASYM_WARN:
            n_asym_warn += 1
        frames.append(build_atoms(pos, rec, kind))
        records.append(
            {
                "kind": kind,
                "T": temp,
                "e_rel": e_rel,
                "f_rms": float(np.sqrt(np.mean(forces**2))),
                "f_max": float(np.abs(forces).max()),
                "dip": float(np.linalg.norm(rec["dipole"])),
                "pol_iso": float(np.trace(pol) / 3),
                "pol_eig": np.linalg.eigvalsh(pol).tolist(),
                "asym_rel": rec["asym_rel"],
                "gap": rec["gap"],
            }
        )
        done = i + 1
        elapsed = time.time() - t_loop
        eta = elapsed / done * (len(todo) - done)
        log(
            f"  {done:4d}/{len(todo)} {kind:9s} T={temp:6.0f} E-Emin={e_rel:9.4f} eV "
            f"Fmax={records[-1]['f_max']:8.3f} |mu|={records[-1]['dip']:.3f} "
            f"a_iso={records[-1]['pol_iso']:.3f} gap={rec['gap']:.2f} "
            f"asym={rec['asym_rel']:.1e} ({time.time() - t1:.1f} s, ETA {eta / 60:.1f} min)"
        )
    ckpt.close()

    # 8. write ------------------------------------------------------------------------------
    import ase.io

    log("[8] writing")
    path = os.path.join(args.out_dir, args.output)
    tmp = path + ".tmp"
    ase.io.write(tmp, frames, format="extxyz")
    check_roundtrip(tmp, frames)
    os.replace(tmp, path)

    # summary -----------------------------------------------------------------------------
    def stats(vals):
        vals = np.asarray(vals, float)
        return {"min": float(vals.min()), "max": float(vals.max()), "mean": float(vals.mean())}

    table = {}
    for kind in ("near_eq", "distorted", "all"):
        rs = [r for r in records if kind == "all" or r["kind"] == kind]
        table[kind] = {
            "count": len(rs),
            "e_minus_emin_ev": stats([r["e_rel"] for r in rs]),
            "force_rms_ev_ang": float(np.sqrt(np.mean([r["f_rms"] ** 2 for r in rs]))),
            "force_max_abs_ev_ang": max(r["f_max"] for r in rs),
            "dipole_norm_e_ang": stats([r["dip"] for r in rs]),
            "polarizability_iso_ang3": stats([r["pol_iso"] for r in rs]),
            "polarizability_eig_ang3": stats([e for r in rs for e in r["pol_eig"]]),
            "homo_lumo_gap_ev": stats([r["gap"] for r in rs]),
        }
    summary.update(
        {
            "r_CH_eq_angstrom": r_eq,
            "energy_min_eV": e_min_ev,
            "isolated_atoms_eV": atoms_e,
            "harmonic_frequencies_cm-1": freq_out["frequencies_cm-1"],
            "n_scf_failures_replaced": n_replaced,
            "max_polarizability_rel_asymmetry": max(r["asym_rel"] for r in records),
            f"n_frames_polarizability_rel_asymmetry_above_{ASYM_WARN}": n_asym_warn,
            "table": table,
            "output": os.path.basename(path),
            "output_bytes": os.path.getsize(path),
            "runtime_s": {
                "total": time.time() - t_start,
                "main_loop": time.time() - t_loop,
                "per_frame": (time.time() - t_loop) / len(todo),
            },
        }
    )
    with open(os.path.join(args.out_dir, "generation_summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
        fh.write("\n")
    log(json.dumps(summary["table"], indent=2))
    os.remove(ckpt_path)
    log(
        f"done: {path} ({os.path.getsize(path)} bytes), total {summary['runtime_s']['total'] / 60:.1f}"
        f" min, {n_replaced} SCF failures replaced"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
