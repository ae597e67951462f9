#!/usr/bin/env bash
# The quickstart: train REANN on the CH4 example, evaluate it, deploy it, and run the deployed
# model in ASE and in LAMMPS on one and on two MPI ranks.
#
# From the repository root, in the environment `make install` made (`.venv/bin` on PATH):
#
#   bash examples/quickstart/quickstart.sh [OUTDIR]        # default: outputs/quickstart
#
# It trains for 3 epochs only, so that it runs in a few minutes; without the
# `trainer.max_epochs=3` override the tutorial config trains for its 4-minute budget.
set -euo pipefail
out=${1:-outputs/quickstart}
here=$(dirname "$0")
mkdir -p "$out"

# 1. train: nequip-train takes a config file; Hydra overrides follow it
nequip-train configs/reann_ch4.yaml trainer.max_epochs=3 hydra.run.dir="$out/train"

# 2. evaluate: errors per property and element, and parity plots, of the best checkpoint
reann-nequip evaluate "$out/train/best.ckpt" examples/ch4/ch4_b3lyp_augccpvdz.xyz \
    -o "$out/evaluation"

# 3. deploy: one TorchScript file, read by LAMMPS and ASE, with its metadata inside
nequip-deploy build "$out/train/best.ckpt" "$out/ch4.pth"
nequip-deploy info "$out/ch4.pth"

# 4. ASE: energy, forces and a few MD steps; writes the same box for LAMMPS
python "$here/ase_md.py" "$out/ch4.pth" "$out/ch4_box.data"

# 5. LAMMPS on one rank, then on two: the same trajectory, the ranks exchange the orbital
#    coefficients of their boundary atoms between recursion steps
lmp -in "$here/in.lammps" -var model "$out/ch4.pth" -var data "$out/ch4_box.data" \
    -log "$out/log.1rank"
mpirun -np 2 lmp -in "$here/in.lammps" -var model "$out/ch4.pth" -var data "$out/ch4_box.data" \
    -log "$out/log.2ranks"
