"""benchmarks/ab.py: two checkouts or two environments, round by round, B / A per round."""

import os
import re
import subprocess
import sys

from ..utils import REPO_ROOT

# a stand-in benchmark: one figure, the environment's SPEED times --factor, in bench_md's
# progress format; it refuses arguments it does not know, as an older checkout's script would
FAKE_BENCHMARK = """
import argparse, os, sys
parser = argparse.ArgumentParser()
parser.add_argument("--factor", type=float, default=1.0)
speed = float(os.environ["SPEED"]) * parser.parse_args().factor
print(f"  round 1: float32 12288 atoms: {speed} µs/atom-step", file=sys.stderr)
"""


def checkout(path):
    """A checkout as ab.py sees one: ``.venv/bin/python`` and ``benchmarks/fake.py``."""
    (path / ".venv" / "bin").mkdir(parents=True)
    os.symlink(sys.executable, path / ".venv" / "bin" / "python")
    (path / "benchmarks").mkdir()
    (path / "benchmarks" / "fake.py").write_text(FAKE_BENCHMARK)
    return path


def run_ab(*arguments, check=True):
    """benchmarks/ab.py with ``arguments``, its output captured."""
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "ab.py"), *arguments],
        capture_output=True,
        text=True,
        check=check,
    )


def test_ab_gives_each_sides_figures_and_their_ratio_by_round(tmp_path):
    root = checkout(tmp_path / "checkout")
    result = run_ab(
        "--a", str(root), "--b", str(root),
        "--a-env", "SPEED=20",
        "--b-env", "SPEED=25",
        "--rounds", "2",
        "--", "fake.py",
    )  # fmt: skip
    row = re.search(
        r"^\| float32 12288 atoms \| (.*) \| (.*) \| (.*) \| (.*) \|$", result.stdout, re.M
    )
    assert row, result.stdout
    assert row.groups() == ("20.00 / 20.00", "25.00 / 25.00", "1.250 / 1.250", "1.250")
    assert "SPEED=25" in result.stdout


def test_ab_refuses_an_environment_variable_without_a_value(tmp_path):
    root = checkout(tmp_path / "checkout")
    result = run_ab(
        "--a", str(root), "--b", str(root), "--b-env", "SPEED", "--", "fake.py", check=False
    )
    assert result.returncode == 2 and "KEY=VALUE" in result.stderr


def test_ab_gives_one_side_its_own_arguments(tmp_path):
    root = checkout(tmp_path / "checkout")
    result = run_ab(
        "--a", str(root), "--b", str(root),
        "--a-env", "SPEED=20",
        "--b-env", "SPEED=20",
        "--b-args=--factor 1.5",
        "--rounds", "1",
        "--", "fake.py",
    )  # fmt: skip
    row = re.search(r"^\| float32 12288 atoms \| .* \| (.*) \|$", result.stdout, re.M)
    assert row and row.group(1) == "1.500", result.stdout
    assert "--factor 1.5" in result.stdout
