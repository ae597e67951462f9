#!/usr/bin/env python
"""Train REANN on CO2/Ni(100) (configs/reann_co2_ni100.yaml) for a fixed wall-clock budget and
print the test errors on the last 191 frames.

The training budget is Lightning's ``max_time`` (data loading, statistics and the test pass come
on top); the test uses the best (EMA) checkpoint. REANN's schedule ends a run earlier only if the
learning rate reaches ``end_lr``. See ``benchmarks/README.md``.

Example::

    .venv/bin/python benchmarks/bench_co2_ni100.py --minutes 20
    .venv/bin/python benchmarks/bench_co2_ni100.py --minutes 2 --run-dir outputs/co2_quick
"""

import argparse
import csv
import math
import os
import pathlib
import platform
import re
import subprocess
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "configs" / "reann_co2_ni100.yaml"
DATA = REPO_ROOT / ".." / "shared" / "data" / "co2_ni100_reann" / "val" / "configuration"
TEST_METRICS = {
    "energy RMSE (meV/atom)": "test0_epoch/per_atom_energy_rmse_meV",
    "force RMSE (meV/Å)": "test0_epoch/forces_rmse_meV_per_A",
}


def max_time(minutes: float) -> str:
    """Lightning's ``DD:HH:MM:SS`` for a budget in minutes (whole seconds)."""
    seconds = int(round(minutes * 60))
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    return f"{days:02d}:{hours:02d}:{seconds // 60:02d}:{seconds % 60:02d}"


def last_metrics(metrics_csv: pathlib.Path) -> dict:
    """The last non-empty value of every column of a Lightning CSVLogger file."""
    values = {}
    with open(metrics_csv) as table:
        for row in csv.DictReader(table):
            values.update({key: value for key, value in row.items() if value not in ("", None)})
    return values


def error_log_epochs(nn_err: pathlib.Path) -> list:
    """(epoch, learning rate) of each line of an nn.err file."""
    pattern = re.compile(r"Epoch=\s*(\d+) learning rate (\S+)")
    return [
        (int(match[1]), float(match[2]))
        for match in map(pattern.match, nn_err.read_text().splitlines())
        if match
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True, help="training wall-clock budget")
    parser.add_argument(
        "--run-dir",
        type=pathlib.Path,
        default=None,
        help="nequip-train output directory (default outputs/bench_co2_ni100/<time>)",
    )
    args = parser.parse_args()
    if not args.minutes > 0:
        parser.error(f"--minutes must be > 0, found {args.minutes}")
    if not DATA.is_file():
        print(f"error: {DATA} not found (the shared data folder next to the repository)")
        return 1
    run_dir = (
        args.run_dir or REPO_ROOT / "outputs" / "bench_co2_ni100" / time.strftime("%Y%m%d-%H%M%S")
    ).resolve()

    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    command = [
        "nequip-train",
        str(CONFIG),
        f"hydra.run.dir={run_dir}",
        f"++trainer.max_time={max_time(args.minutes)}",
    ]
    print("running:", " ".join(command), flush=True)
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "nequip-train.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        print(result.stderr[-4000:])
        print(f"error: nequip-train failed; full log in {run_dir / 'nequip-train.log'}")
        return 1

    metrics = last_metrics(next(run_dir.glob("metrics/version_*/metrics.csv")))
    epochs = error_log_epochs(run_dir / "nn.err")
    rows = [
        ("training budget (min)", f"{args.minutes:g}"),
        ("wall time, all stages (min)", f"{wall / 60:.1f}"),
        ("epochs trained", f"{len(epochs)}"),
        ("learning rate of the last epoch", f"{epochs[-1][1]:.3e}" if epochs else "-"),
    ]
    for label, key in TEST_METRICS.items():
        value = float(metrics[key])
        rows.append((f"test {label}", f"{value:.2f}" if math.isfinite(value) else str(value)))
    rows += [
        ("CPU cores visible", str(os.cpu_count())),
        ("load average before / after", f"{load_before:.2f} / {os.getloadavg()[0]:.2f}"),
        ("torch threads", os.environ.get("OMP_NUM_THREADS", "default")),
        ("machine", f"{platform.machine()} {platform.processor() or ''}".strip()),
    ]

    width = max(len(label) for label, _ in rows)
    print(f"\nREANN on CO2/Ni(100): 720 train / 80 val / 191 test frames, run in {run_dir}")
    print(f"{'quantity':<{width}}  value")
    print(f"{'-' * width}  {'-' * 12}")
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
