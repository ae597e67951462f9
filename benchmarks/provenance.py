"""What every benchmark's ``--json`` file records besides its results: the command and the machine.

``benchmarks/report.py`` renders ``benchmarks/README.md`` from these files, so a table never
travels without the command that produced it and the machine it ran on.
"""

import json
import os
import pathlib
import platform
import shlex
import sys
from typing import Any, Dict, List, Optional

BENCHMARKS_DIR = pathlib.Path(__file__).resolve().parent


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (the platform's name elsewhere)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def kernel_isa() -> str:
    """The instruction-set level the package's kernels run at, or why it is unknown."""
    try:
        from reann_nequip.nn.kernels import kernel_isa as isa

        return isa()
    except (ImportError, RuntimeError) as error:
        return f"unknown ({error})"


def machine() -> Dict[str, Any]:
    """The machine and software a benchmark ran on."""
    import torch

    versions = {"torch": torch.__version__, "python": platform.python_version()}
    for package in ("nequip", "reann_nequip"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            versions[package] = "not installed"
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "isa": kernel_isa(),
        "system": f"{platform.system()} {platform.machine()}",
        "load_average": [round(value, 2) for value in os.getloadavg()],
        **versions,
    }


def command_line(script: str, argv: Optional[List[str]] = None) -> str:
    """The command that ran ``script`` (a file in ``benchmarks/``) with ``argv`` (default: this
    process's arguments), as typed from the repository root."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", f"benchmarks/{pathlib.Path(script).name}", *arguments])


def provenance(script: str, argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """``benchmark`` (the script's name without ``.py``), ``command`` and ``machine``."""
    return {
        "benchmark": pathlib.Path(script).stem,
        "command": command_line(script, argv),
        "machine": machine(),
    }


def write_json(
    path: str, script: str, results: Dict[str, Any], argv: Optional[List[str]] = None
) -> None:
    """Write ``results`` with the provenance of this run of ``script`` to ``path``."""
    document = {**provenance(script, argv), "results": results}
    pathlib.Path(path).write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)
