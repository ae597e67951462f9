#!/usr/bin/env python
"""Render ``benchmarks/README.md`` from the benchmarks' result files, ``benchmarks/results/*.json``.

Every benchmark script writes its results with ``--json PATH``, together with its command line
and the machine it ran on (``provenance.py``). This script turns those files into the report: for
each benchmark, what it measures and how to run it (from the script's own docstring), then for
each of its result files the command, the machine and the table, made by the script's own
``markdown`` function. It also writes the table of headline numbers in the repository's
``README.md`` (between its ``headline numbers`` markers), from the scripts' ``headline``
functions. No table is edited by hand: run the benchmark again with ``--json``, then this script.

Example::

    python benchmarks/report.py           # writes benchmarks/README.md and README.md's table
    python benchmarks/report.py --check   # fails if either is not what the results give
"""

import argparse
import ast
import importlib
import json
import pathlib
import re
import sys
from typing import Dict, List, Optional, Tuple

BENCHMARKS_DIR = pathlib.Path(__file__).resolve().parent
RESULTS_DIR = BENCHMARKS_DIR / "results"
README = BENCHMARKS_DIR / "README.md"
# the repository's README.md, whose table of headline numbers lies between these lines
MAIN_README = BENCHMARKS_DIR.parent / "README.md"
HEADLINE_START = "<!-- headline numbers: written by benchmarks/report.py, do not edit -->"
HEADLINE_END = "<!-- end of headline numbers -->"
# the benchmarks, in the report's order: MD and model speed first, then training and data
BENCHMARKS = (
    "bench_md",
    "bench_model",
    "bench_ase_md",
    "bench_water",
    "bench_accuracy",
    "bench_ablation",
    "bench_co2_ni100",
    "bench_data_scale",
    "bench_configuration_reader",
    "bench_neighbor_lists",
)
# where the documentation's Performance page starts including this report (docs/performance.md)
TABLES_MARKER = "<!-- the report's sections -->\n"
# their --json files hold the whole document for `markdown`; the others put it under "results"
WHOLE_DOCUMENT = ("bench_water", "bench_accuracy", "bench_ablation")

INTRODUCTION = """\
# Benchmarks

<!-- Written by benchmarks/report.py from benchmarks/results/*.json: do not edit by hand. -->

Speed, memory and accuracy of `reann_nequip`, each measured by one script of this folder. Every
script prints its tables and, with `--json PATH`, writes them with the command that ran it and
the machine it ran on. This report is generated from those files by `benchmarks/report.py`:

```bash
python benchmarks/bench_md.py --json benchmarks/results/bench_md.json   # any benchmark
python benchmarks/report.py                                            # this file
```

How the timings are taken, unless a benchmark says otherwise: one torch thread per process, each
configuration in its own process (so that its peak resident memory is its own), medians (or the
best of repeated runs) of wall-clock times after warm-up calls. The speed benchmarks use the
default model of the benchmarks, REANN's own example hyperparameters (r_max 5 Å, 8 Gaussians,
l_max 2, 108 orbitals, 3 recursions, hidden widths 64 64), on bulk water. Their numbers are only
comparable between runs on a machine with no other load. `ab.py` is a tool, not a benchmark: it
runs a benchmark of two checkouts alternately, round by round, and gives their ratio.

The data sets (`water_deepmd`, `co2_ni100_reann`) live in `../shared/data`, next to the
repository; the CH4 and molecule data ship in `examples/`.
"""


def docstring_parts(name: str) -> Tuple[str, str, List[str]]:
    """The title (first paragraph), the description and the example commands of a script's
    docstring, read without importing the script."""
    tree = ast.parse((BENCHMARKS_DIR / f"{name}.py").read_text())
    docstring = ast.get_docstring(tree) or name
    text, _, examples = docstring.partition("Example::")
    paragraphs = text.strip().split("\n\n")
    title = " ".join(paragraphs[0].split())
    commands = [line.strip() for line in examples.splitlines() if line.strip()]
    return title, "\n\n".join(paragraphs[1:]), commands


def to_markdown(text: str) -> str:
    """reStructuredText markup of the docstrings as Markdown: roles and double backticks."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def benchmark_of(path: pathlib.Path, document: Dict) -> str:
    """Which benchmark wrote ``document``: its ``benchmark`` entry, or the longest benchmark
    name the file's name starts with."""
    name = document.get("benchmark")
    if name is None:
        prefixes = [b for b in BENCHMARKS if path.stem.startswith(b)]
        name = max(prefixes, key=len) if prefixes else None
    if name not in BENCHMARKS:
        raise ValueError(
            f"{path}: cannot tell which benchmark wrote it (its `benchmark` entry is "
            f"{document.get('benchmark')!r}); name the file after one of {list(BENCHMARKS)}"
        )
    return name


def load_results(directory: pathlib.Path) -> Dict[str, List[Tuple[pathlib.Path, Dict]]]:
    """The result files of ``directory`` by benchmark, each benchmark's in file-name order."""
    results: Dict[str, List[Tuple[pathlib.Path, Dict]]] = {name: [] for name in BENCHMARKS}
    for path in sorted(directory.glob("*.json")):
        document = json.loads(path.read_text())
        results[benchmark_of(path, document)].append((path, document))
    return results


def machine_line(document: Dict) -> str:
    machine = document.get("machine")
    if not machine:
        return "not recorded"
    load = " / ".join(f"{value:.2f}" for value in machine.get("load_average", []))
    return (
        f"{machine['cpu']}, {machine['cores']} cores, kernels at {machine['isa']}; "
        f"torch {machine['torch']}, nequip {machine['nequip']}, reann_nequip "
        f"{machine['reann_nequip']}, Python {machine['python']}"
        + (f"; load average at the end {load}" if load else "")
    )


def _module(name: str):
    """The benchmark script ``name`` as a module (imported only when it has results)."""
    if str(BENCHMARKS_DIR) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS_DIR))
    return importlib.import_module(name)


def tables(name: str, document: Dict) -> str:
    """The tables of one result file, by the benchmark's own ``markdown`` function."""
    return _module(name).markdown(document if name in WHOLE_DOCUMENT else document["results"])


def section(name: str, files: List[Tuple[pathlib.Path, Dict]]) -> str:
    title, description, commands = docstring_parts(name)
    lines = [f"## {name}", "", f"**{to_markdown(title)}**", ""]
    if description:
        lines += [to_markdown(description), ""]
    if commands:
        lines += ["Run it from the repository root:", "", "```bash", *commands, "```", ""]
    if not files:
        lines += [
            f"_Results not yet generated for `{name}`._ Run it with "
            f"`--json benchmarks/results/{name}.json`, then `python benchmarks/report.py`.",
            "",
        ]
    for path, document in files:
        lines += [
            f"### Results: `results/{path.name}`",
            "",
            f"- command: `{document.get('command', 'not recorded')}`",
            f"- machine: {machine_line(document)}",
            "",
            tables(name, document),
            "",
        ]
    return "\n".join(lines)


def render(results_dir: pathlib.Path = RESULTS_DIR) -> str:
    """The whole report from the result files in ``results_dir`` (which may not exist yet)."""
    results = load_results(results_dir) if results_dir.is_dir() else {b: [] for b in BENCHMARKS}
    contents = ["## Contents", ""]
    for name in BENCHMARKS:
        title = to_markdown(docstring_parts(name)[0])
        contents.append(f"- [{name}](#{name}): {title}")
    # the documentation's Performance page includes the report from this marker on
    parts = [INTRODUCTION, TABLES_MARKER, "\n".join(contents) + "\n"]
    parts += [section(name, results[name]) for name in BENCHMARKS]
    return "\n".join(parts).rstrip("\n") + "\n"


def headline_table(results_dir: pathlib.Path = RESULTS_DIR) -> str:
    """The table of headline numbers, each row linked to its benchmark's section of the report:
    the rows of every result file whose script has a ``headline`` function."""
    results = load_results(results_dir) if results_dir.is_dir() else {}
    rows = []
    for name, files in results.items():
        for _, document in files:
            module = _module(name)
            if hasattr(module, "headline"):
                content = document if name in WHOLE_DOCUMENT else document["results"]
                for quantity, value in module.headline(content):
                    link = f"[`{name}`](benchmarks/README.md#{name})"
                    rows.append(f"| {quantity} | {value} | {link} |")
    if not rows:
        return (
            "No benchmark results are recorded yet: see [benchmarks/README.md]"
            "(benchmarks/README.md) for how to produce them."
        )
    return "\n".join(["| quantity | value | benchmark |", "|---|---|---|", *rows])


def with_headline(readme: str, table: str) -> str:
    """``readme`` with the text between its headline markers replaced by ``table``."""
    start, end = readme.find(HEADLINE_START), readme.find(HEADLINE_END)
    if start < 0 or end < start:
        raise ValueError(f"README.md lacks the lines {HEADLINE_START!r} ... {HEADLINE_END!r}")
    return readme[: start + len(HEADLINE_START)] + "\n" + table + "\n" + readme[end:]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=pathlib.Path, default=RESULTS_DIR, help="result files")
    parser.add_argument("--output", type=pathlib.Path, default=README, help="report to write")
    parser.add_argument(
        "--readme",
        type=pathlib.Path,
        default=MAIN_README,
        help="README whose table of headline numbers to write",
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; fail if either is out of date"
    )
    args = parser.parse_args(argv)
    expected = {
        args.output: render(args.results),
        args.readme: with_headline(args.readme.read_text(), headline_table(args.results)),
    }
    for path, text in expected.items():
        if args.check:
            if not path.is_file() or path.read_text() != text:
                print(f"{path} is not what {args.results} gives: run benchmarks/report.py")
                return 1
        else:
            path.write_text(text)
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
