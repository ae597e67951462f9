"""IR and Raman spectra of CH4 from REANN models: MD with the energy model, dipole and
polarizability models evaluated along the trajectory, spectra from autocorrelation functions,
peaks compared with the PySCF harmonic frequencies of the training data's level of theory.

Run from the repository root (a quarter of an hour on two CPU cores):

    python examples/ch4_ir/ir_raman_spectra.py

Steps: (1) train the energy, dipole and polarizability models with the configs in configs/,
shortened by --*-minutes (skipped for a model whose checkpoint exists in --work-dir unless
--retrain); (2) minimise the model's CH4, harmonic frequencies of the model by finite
differences; (3) NVE trajectories from Maxwell-Boltzmann velocities (no net momentum or
rotation); (4) μ(t) and α(t) along them; (5) spectra and peaks; (6) ch4_ir_raman.png and
results.json next to this script.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
HARMONIC = REPO_ROOT / "examples" / "ch4" / "harmonic_frequencies.json"
C_CM_PER_FS = 2.99792458e-5  # speed of light in cm/fs: ν̃ [cm⁻¹] = f [1/fs] / c
MODES = [  # (label, Td symmetry, indices into the PySCF harmonic frequencies)
    ("ν4 bend", "T2", slice(0, 3)),
    ("ν2 bend", "E", slice(3, 5)),
    ("ν1 sym. stretch", "A1", slice(5, 6)),
    ("ν3 asym. stretch", "T2", slice(6, 9)),
]
IR = "IR (dipole autocorrelation)"
RAMAN_ISOTROPIC = "Raman, isotropic (α_iso autocorrelation)"
RAMAN_ANISOTROPIC = "Raman, anisotropic (β autocorrelation)"
# Td selection rules: the fundamentals each spectrum shows
ACTIVE = {
    IR: ["ν4 bend", "ν3 asym. stretch"],
    RAMAN_ISOTROPIC: ["ν1 sym. stretch"],
    RAMAN_ANISOTROPIC: ["ν4 bend", "ν2 bend", "ν3 asym. stretch"],
}
# bends and stretches differ in intensity by orders of magnitude: normalised separately (cm⁻¹)
REGIONS = [(800.0, 2000.0), (2000.0, 3700.0)]


# === (1) training ===


def train(config: str, minutes: float, run_dir: pathlib.Path, retrain: bool) -> pathlib.Path:
    """``nequip-train configs/<config>.yaml`` capped at ``minutes``; returns best.ckpt."""
    checkpoint = run_dir / "best.ckpt"
    if checkpoint.is_file() and not retrain:
        print(f"[train] {config}: using {checkpoint}")
        return checkpoint
    cap = time.strftime("%H:%M:%S", time.gmtime(minutes * 60.0))
    command = [
        os.path.join(os.path.dirname(sys.executable), "nequip-train"),
        f"configs/{config}.yaml",
        f"trainer.max_time=00:{cap}",
        f"hydra.run.dir={run_dir}",
    ]
    print(f"[train] {config}: {minutes} min → {run_dir}", flush=True)
    # one thread per process: on a shared 2-core machine extra threads mostly wait
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    (run_dir / "stdout.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0 or not checkpoint.is_file():
        raise RuntimeError(
            f"training {config} failed (exit {result.returncode}); see {run_dir / 'stdout.log'}:\n"
            + result.stderr[-2000:]
        )
    return checkpoint


def deployed_calculator(checkpoints: dict, work_dir: pathlib.Path):
    """One ASE calculator for the three trained models, through the files ``nequip-deploy build``
    writes (EMA weights): energy and forces for the MD, the dipole and polarizability along it."""
    from reann_nequip.deploy import deploy
    from reann_nequip.integrations.ase import ReannCalculator

    deployed = {}
    for name, checkpoint in checkpoints.items():
        deployed[name] = str(work_dir / f"{name}.pth")
        deploy(str(checkpoint), deployed[name])
    return ReannCalculator(
        deployed["energy"],
        dipole_model=deployed["dipole"],
        polarizability_model=deployed["polarizability"],
    )


# === (2) minimum and harmonic frequencies of the model ===


def model_minimum_and_harmonic(calculator, start):
    from ase.optimize import BFGS
    from ase.vibrations import VibrationsData

    atoms = start.copy()
    atoms.calc = calculator
    BFGS(atoms, logfile=None).run(fmax=1e-4, steps=500)
    # central differences of the forces, step 0.005 Å
    step = 0.005
    hessian = np.zeros((len(atoms) * 3, len(atoms) * 3))
    for index in range(len(atoms) * 3):
        atom, axis = divmod(index, 3)
        forces = []
        for sign in (1.0, -1.0):
            displaced = atoms.copy()
            displaced.calc = calculator
            displaced.positions[atom, axis] += sign * step
            forces.append(displaced.get_forces().reshape(-1))
        hessian[index] = -(forces[0] - forces[1]) / (2 * step)
    hessian = 0.5 * (hessian + hessian.T)
    vibrations = VibrationsData.from_2d(atoms, hessian)
    energies = vibrations.get_energies()  # eV; 3N of them, 6 ~ 0 (translations, rotations)
    wavenumbers = np.sort(np.abs(energies))[6:] / 1.239841984e-4  # eV → cm⁻¹
    return atoms, wavenumbers


# === (3) molecular dynamics ===


def run_md(calculator, minimum, temperature: float, steps: int, seed: int, timestep: float):
    """NVE positions every step, [steps, N, 3], from Maxwell-Boltzmann velocities at
    2·temperature (half of the kinetic energy flows into the potential)."""
    from ase import units
    from ase.md.velocitydistribution import (
        MaxwellBoltzmannDistribution,
        Stationary,
        ZeroRotation,
    )
    from ase.md.verlet import VelocityVerlet

    atoms = minimum.copy()
    atoms.calc = calculator
    MaxwellBoltzmannDistribution(
        atoms, temperature_K=2.0 * temperature, rng=np.random.default_rng(seed)
    )
    Stationary(atoms)
    ZeroRotation(atoms)  # vibrational spectra without rotational broadening
    dynamics = VelocityVerlet(atoms, timestep=timestep * units.fs)
    positions = np.empty((steps, len(atoms), 3))
    energies = np.empty(steps)
    for step in range(steps):
        dynamics.run(1)
        positions[step] = atoms.positions
        energies[step] = atoms.get_potential_energy() + atoms.get_kinetic_energy()
    drift = float(energies.max() - energies.min())
    return positions, drift


# === (4) properties along the trajectory ===


def evaluate(calculator, name: str, minimum, positions: np.ndarray):
    """The calculator's ``dipole`` or ``polarizability`` for every frame, [frames, ...]."""
    atoms = minimum.copy()
    values = []
    for frame_positions in positions:
        atoms.positions = frame_positions
        values.append(calculator.get_property(name, atoms))
    return np.array(values)


# === (5) spectra ===


def spectrum(signal: np.ndarray, timestep: float, max_lag: int):
    """Power spectrum of the time derivative of ``signal`` [frames, components] from its
    autocorrelation, Hann-windowed to ``max_lag`` steps: ∝ ω² · FT⟨x(0)·x(t)⟩, the classical
    IR line shape for x = μ. Returns (wavenumbers cm⁻¹, intensity)."""
    derivative = np.gradient(signal, timestep, axis=0).reshape(len(signal), -1)
    derivative = derivative - derivative.mean(axis=0)
    frames = len(derivative)
    padded = np.fft.rfft(derivative, n=2 * frames, axis=0)
    correlation = np.fft.irfft(np.abs(padded) ** 2, axis=0)[:max_lag].sum(axis=1)
    correlation /= frames - np.arange(max_lag)  # unbiased
    window = np.hanning(2 * max_lag)[max_lag:]
    symmetric = np.concatenate([correlation * window, np.zeros(3 * max_lag)])
    intensity = np.fft.rfft(symmetric).real
    wavenumbers = np.fft.rfftfreq(len(symmetric), d=timestep) / C_CM_PER_FS
    # a flat floor from round-off noise of float32 models (white in x, so ∝ ω² · ω⁻² here),
    # measured where CH4 has no bands
    floor = np.median(intensity[wavenumbers > 5000.0])
    return wavenumbers, np.clip(intensity - floor, 0.0, None)


def normalised_by_region(wavenumbers, intensity):
    """Intensity divided by its maximum within each of ``REGIONS``; and those factors."""
    scaled, factors = np.zeros_like(intensity), []
    for low, high in REGIONS:
        inside = (wavenumbers >= low) & (wavenumbers < high)
        factors.append(float(intensity[inside].max()))
        scaled[inside] = intensity[inside] / factors[-1]
    return scaled, factors


def local_peaks(wavenumbers, scaled, threshold: float = 0.1):
    """[(position cm⁻¹, height)] of the local maxima above ``threshold``, positions refined by
    a parabola through the three highest grid points."""
    peaks = []
    spacing = wavenumbers[1] - wavenumbers[0]
    for index in range(1, len(scaled) - 1):
        left, centre, right = scaled[index - 1 : index + 2]
        if centre > threshold and centre > left and centre >= right:
            offset = 0.5 * (left - right) / (left - 2 * centre + right)
            peaks.append((float(wavenumbers[index] + offset * spacing), float(centre)))
    return peaks


def assign_peaks(peaks, active, harmonic_by_mode, max_distance: float = 200.0):
    """Each peak goes to the nearest active mode (by harmonic frequency) within
    ``max_distance``; a mode keeps its highest peak, or None."""
    assigned = {}
    for position, height in peaks:
        mode = min(active, key=lambda label: abs(harmonic_by_mode[label] - position))
        if abs(harmonic_by_mode[mode] - position) > max_distance:
            continue
        if mode not in assigned or height > assigned[mode][1]:
            assigned[mode] = (position, height)
    return {mode: assigned[mode][0] if mode in assigned else None for mode in active}


def raman_signals(polarizability: np.ndarray):
    """Isotropic α_iso = tr α / 3 [frames, 1] and anisotropic β = α − α_iso I [frames, 9]."""
    isotropic = np.trace(polarizability, axis1=1, axis2=2)[:, None] / 3.0
    anisotropic = polarizability - isotropic[:, :, None] * np.eye(3)
    return isotropic, anisotropic.reshape(len(polarizability), 9)


# === (6) plot ===


def plot(spectra, peaks, harmonic_by_mode, path: pathlib.Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    for axis, (name, (wavenumbers, intensity)) in zip(axes, spectra.items()):
        scaled, factors = normalised_by_region(wavenumbers, intensity)
        shown = (wavenumbers >= REGIONS[0][0]) & (wavenumbers < REGIONS[-1][1])
        axis.plot(wavenumbers[shown], scaled[shown], color="k", lw=1.0)
        magnification = max(factors) / factors[0]
        axis.text(REGIONS[0][0] + 20, 1.2, f"×{magnification:.0f}", fontsize=8, color="0.4")
        axis.axvline(REGIONS[0][1], color="0.7", lw=0.6)
        for position in harmonic_by_mode.values():
            axis.axvline(position, color="tab:blue", ls=":", lw=0.8)
        for label, position in peaks[name].items():
            if position is None:
                continue
            height = np.interp(position, wavenumbers, scaled)
            axis.annotate(
                f"{label}\n{position:.0f}",
                (position, height),
                xytext=(0, 6),
                textcoords="offset points",
                ha="center",
                fontsize=8,
                color="tab:red",
            )
        axis.set_ylim(0, 1.45)
        axis.set_ylabel("intensity (norm.)")
        axis.set_title(name, fontsize=10)
    axes[-1].set_xlabel("wavenumber (cm$^{-1}$)   dotted: PySCF harmonic (B3LYP/aug-cc-pVDZ)")
    figure.suptitle("CH4, REANN models, classical NVE MD at 300 K", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=130)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=pathlib.Path, default=HERE / "outputs")
    parser.add_argument("--retrain", action="store_true", help="train even if checkpoints exist")
    parser.add_argument("--energy-minutes", type=float, default=4.0)
    parser.add_argument("--dipole-minutes", type=float, default=1.0)
    parser.add_argument("--polarizability-minutes", type=float, default=1.5)
    parser.add_argument("--temperature", type=float, default=300.0, help="K")
    parser.add_argument("--trajectories", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5000, help="per trajectory")
    parser.add_argument("--timestep", type=float, default=0.5, help="fs")
    parser.add_argument("--correlation-fs", type=float, default=1500.0, help="max. lag")
    args = parser.parse_args()
    if args.trajectories < 1 or args.steps < 100:
        parser.error("need --trajectories >= 1 and --steps >= 100")
    max_lag = int(args.correlation_fs / args.timestep)
    if max_lag >= args.steps:
        parser.error(f"--correlation-fs must be shorter than the trajectory ({args.steps} steps)")
    started = time.time()
    import torch

    torch.set_num_threads(1)
    from ase.build import molecule

    # === (1) ===
    checkpoints = {
        name: train(config, minutes, args.work_dir / name, args.retrain)
        for name, config, minutes in (
            ("energy", "reann_ch4", args.energy_minutes),
            ("dipole", "reann_ch4_dipole", args.dipole_minutes),
            ("polarizability", "reann_ch4_polarizability", args.polarizability_minutes),
        )
    }
    trained = time.time()
    calculator = deployed_calculator(checkpoints, args.work_dir)

    # === (2) ===
    reference = json.loads(HARMONIC.read_text())
    harmonic = np.array(reference["frequencies_cm-1"])
    # the optimised geometry is not stored: start from a regular tetrahedron at r_CH
    start = molecule("CH4")
    start.positions *= reference["r_CH_eq_angstrom"] / np.linalg.norm(start.positions[1])
    minimum, model_harmonic = model_minimum_and_harmonic(calculator, start)
    print("[harmonic] model:", np.round(model_harmonic, 1), flush=True)

    # === (3), (4) ===
    dipoles, polarizabilities, drifts = [], [], []
    for trajectory in range(args.trajectories):
        positions, drift = run_md(
            calculator,
            minimum,
            args.temperature,
            args.steps,
            seed=trajectory,
            timestep=args.timestep,
        )
        drifts.append(drift)
        dipoles.append(evaluate(calculator, "dipole", minimum, positions))
        polarizabilities.append(evaluate(calculator, "polarizability", minimum, positions))
        print(f"[md] trajectory {trajectory}: energy drift {drift:.2e} eV", flush=True)

    # === (5): spectra averaged over trajectories ===
    def averaged(signals):
        parts = [spectrum(signal, args.timestep, max_lag) for signal in signals]
        return parts[0][0], np.mean([intensity for _, intensity in parts], axis=0)

    isotropic, anisotropic = zip(*(raman_signals(alpha) for alpha in polarizabilities))
    spectra = {
        IR: averaged(dipoles),
        RAMAN_ISOTROPIC: averaged(isotropic),
        RAMAN_ANISOTROPIC: averaged(anisotropic),
    }
    harmonic_by_mode = {label: float(np.mean(harmonic[indices])) for label, _, indices in MODES}
    found = {
        name: local_peaks(wavenumbers, normalised_by_region(wavenumbers, intensity)[0])
        for name, (wavenumbers, intensity) in spectra.items()
    }
    peaks = {name: assign_peaks(found[name], ACTIVE[name], harmonic_by_mode) for name in spectra}

    # === (6) ===
    plot(spectra, peaks, harmonic_by_mode, HERE / "ch4_ir_raman.png")
    resolution = 1.0 / (2 * max_lag * args.timestep) / C_CM_PER_FS
    results = {
        "temperature_K": args.temperature,
        "trajectories": args.trajectories,
        "steps_per_trajectory": args.steps,
        "timestep_fs": args.timestep,
        "correlation_window_fs": args.correlation_fs,
        "resolution_cm-1": resolution,
        "max_energy_drift_eV": max(drifts),
        "training_minutes": {
            "energy": args.energy_minutes,
            "dipole": args.dipole_minutes,
            "polarizability": args.polarizability_minutes,
        },
        "pyscf_harmonic_cm-1": harmonic_by_mode,
        "model_harmonic_cm-1": {
            label: float(np.mean(model_harmonic[indices])) for label, _, indices in MODES
        },
        "md_peaks_cm-1": peaks,
        "all_local_maxima_cm-1": {
            name: [round(position, 1) for position, _ in maxima] for name, maxima in found.items()
        },
        "training_seconds": trained - started,
        "total_seconds": time.time() - started,
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(results, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
