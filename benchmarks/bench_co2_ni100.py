#!/usr/bin/env python
"""Train REANN on CO2/Ni(100) (configs/reann_co2_ni100.yaml) for a fixed wall-clock budget and
print the test errors on the last 191 frames.

The training budget is Lightning's ``max_time`` (data loading, statistics and the test pass come
on top); the test uses the best (EMA) checkpoint. REANN's schedule ends a run earlier only if the
learning rate reaches ``end_lr``.

Example::

    .venv/bin/python benchmarks/bench_co2_ni100.py --minutes 20
    .venv/bin/python benchmarks/bench_co2_ni100.py --minutes 2 --run-dir outputs/co2_quick
"""

import argparse
import csv
import math
import os
import pathlib
import re
import subprocess
import sys
import time
from typing import Dict, List, Optional

from provenance import write_json

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


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True, help="training wall-clock budget")
    parser.add_argument(
        "--run-dir",
        type=pathlib.Path,
        default=None,
        help="nequip-train output directory (default outputs/bench_co2_ni100/<time>)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH")
    args = parser.parse_args(argv)
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
    test_errors = {}
    for label, key in TEST_METRICS.items():
        value = float(metrics[key])
        test_errors[label] = value if math.isfinite(value) else str(value)
    results = {
        "minutes": args.minutes,
        "wall_minutes": wall / 60,
        "epochs": len(epochs),
        "last_learning_rate": epochs[-1][1] if epochs else None,
        "test": test_errors,
        "load_average": [load_before, os.getloadavg()[0]],
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
    }
    print(f"\nREANN on CO2/Ni(100): 720 train / 80 val / 191 test frames, run in {run_dir}")
    print(markdown(results))
    if args.json:
        write_json(args.json, __file__, results, argv)
    return 0


def markdown(results: Dict) -> str:
    """The table of a ``--json`` file's ``results``."""
    rate = results["last_learning_rate"]
    rows = [
        ("training budget (min)", f"{results['minutes']:g}"),
        ("wall time, all stages (min)", f"{results['wall_minutes']:.1f}"),
        ("epochs trained", f"{results['epochs']}"),
        ("learning rate of the last epoch", "-" if rate is None else f"{rate:.3e}"),
    ]
    for label, value in results["test"].items():
        rows.append((f"test {label}", f"{value:.2f}" if isinstance(value, float) else value))
    rows += [
        ("load average before / after", " / ".join(f"{x:.2f}" for x in results["load_average"])),
        ("torch threads", str(results["threads"])),
    ]
    lines = ["| quantity | value |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
