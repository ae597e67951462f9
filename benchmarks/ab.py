#!/usr/bin/env python
"""A/B of two checkouts, or of two environments, in one run: a benchmark script of each,
alternately, round by round.

The host's speed drifts between minutes more than between neighbouring runs, so the two builds
are compared run by run within a round. ``A`` and ``B`` are repository roots, each with its own
``.venv`` (``make install``); every round runs ``<root>/.venv/bin/python
<root>/benchmarks/SCRIPT ARGS`` for A, then for B, and reads the figures each run prints
(``--metric``: a regular expression with the groups ``label`` and ``value``). The table gives
every round's B / A and their median. ``--a-env`` / ``--b-env KEY=VALUE`` set environment variables
for one side: with the same root on both sides they compare, for example, a variant build of the
kernel library (``LD_LIBRARY_PATH``, which the LAMMPS plugin's run path yields to) or a lower
instruction-set level (``REANN_NEQUIP_ISA``). ``--a-args`` / ``--b-args`` add arguments for one
side's script only, such as a flag an older checkout's script does not know.

Example (``pair_style reann`` at 12,288 atoms, one rank, float32 and float64)::

    python benchmarks/ab.py --a ../baseline --b . --b-args="--committee 0" --rounds 3 -- \\
        bench_md.py --sizes 12288 --ranks 1 --data ../shared/data/water_deepmd
    python benchmarks/ab.py --a . --b . --b-env REANN_NEQUIP_ISA=avx2 -- \
        bench_md.py --sizes 12288 --ranks 1 --dtypes float32
"""

import argparse
import os
import pathlib
import re
import shlex
import subprocess
import sys
from typing import Dict, List

import numpy as np

# bench_md.py's progress lines: "round 1: float32 memory keep  12288 atoms 1 rank(s) images:
# 13.4 µs/atom-step"
DEFAULT_METRIC = r"round \d+: (?P<label>.+?): (?P<value>[0-9.]+) µs/atom-step"


def run(
    root: pathlib.Path, env: Dict[str, str], script: str, args: List[str], metric: re.Pattern
) -> Dict[str, float]:
    """One run of ``script`` in checkout ``root`` with ``env`` added: its figures by label."""
    command = [str(root / ".venv" / "bin" / "python"), str(root / "benchmarks" / script), *args]
    result = subprocess.run(
        command, cwd=root, env={**os.environ, **env}, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    figures = {
        m.group("label"): float(m.group("value"))
        for m in metric.finditer(result.stdout + result.stderr)
    }
    if not figures:
        raise SystemExit(f"{' '.join(command)} printed nothing matching {metric.pattern!r}")
    return figures


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", required=True, type=pathlib.Path, help="checkout A (reference)")
    parser.add_argument("--b", required=True, type=pathlib.Path, help="checkout B (candidate)")
    for side in ("a", "b"):
        parser.add_argument(
            f"--{side}-env",
            nargs="+",
            default=[],
            metavar="KEY=VALUE",
            help=f"environment variables for {side.upper()}'s runs",
        )
        parser.add_argument(
            f"--{side}-args",
            default="",
            metavar="ARGS",
            help=f"arguments added for {side.upper()}'s script only, one string (a flag the "
            "other side's older script does not know, e.g. --committee 0)",
        )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of A then B (default 3)")
    parser.add_argument("--metric", default=DEFAULT_METRIC, help="regex with label and value")
    parser.add_argument("script", help="the benchmark script, e.g. bench_md.py")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    args = parser.parse_args(argv)
    metric = re.compile(args.metric)
    roots = {"A": args.a.resolve(), "B": args.b.resolve()}
    envs = {"A": environment(parser, args.a_env), "B": environment(parser, args.b_env)}
    script_args = {
        "A": args.args + shlex.split(args.a_args),
        "B": args.args + shlex.split(args.b_args),
    }

    results: Dict[str, List[Dict[str, float]]] = {"A": [], "B": []}
    for round_index in range(args.rounds):
        for side, root in roots.items():
            results[side].append(run(root, envs[side], args.script, script_args[side], metric))
            print(f"round {round_index + 1} {side}: {results[side][-1]}", file=sys.stderr)

    for side, root in roots.items():
        settings = [
            *(f"{k}={v}" for k, v in envs[side].items()),
            getattr(args, f"{side.lower()}_args"),
        ]
        print(f"{side} = {root} {' '.join(settings)}".rstrip())
    print(f"{args.script} {' '.join(args.args)}\n")
    print("| figure | A by round | B by round | B / A by round | median B / A |")
    print("|---|---|---|---|---|")
    for label in results["A"][0]:
        a = [r[label] for r in results["A"]]
        b = [r[label] for r in results["B"]]
        ratios = [y / x for x, y in zip(a, b)]
        print(
            f"| {label} | {' / '.join(f'{x:.2f}' for x in a)} | "
            f"{' / '.join(f'{y:.2f}' for y in b)} | {' / '.join(f'{r:.3f}' for r in ratios)} | "
            f"{float(np.median(ratios)):.3f} |"
        )


def environment(parser: argparse.ArgumentParser, pairs: List[str]) -> Dict[str, str]:
    """``KEY=VALUE`` arguments as a dictionary."""
    if any("=" not in pair for pair in pairs):
        parser.error(f"environment variables are KEY=VALUE, found {' '.join(pairs)}")
    return dict(pair.split("=", 1) for pair in pairs)


if __name__ == "__main__":
    main()
