"""The benchmark scripts still run: each in its smallest form, on the shared water data, checking
that it prints its table with finite timings (no speed is asserted), and that its --json file
holds the command, the machine and what the report (benchmarks/report.py) needs for that table."""

import importlib.util
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

from ..utils import REPO_ROOT

BIN = pathlib.Path(sys.executable).parent


def run_benchmark(script: str, *args: str) -> str:
    """``benchmarks/SCRIPT ARGS`` with this venv's tools on PATH; asserts success, returns its
    output."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / script), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def check_json(path, script: str, output: str) -> None:
    """The --json file at ``path`` names ``script``, its command line and the machine, and the
    report renders from it the table the script printed."""
    document = json.loads(path.read_text())
    assert document["benchmark"] == script.removesuffix(".py")
    assert document["command"].startswith(f"python benchmarks/{script} ")
    assert "--json" in document["command"]
    assert document["machine"]["cores"] > 0 and document["machine"]["torch"]
    spec = importlib.util.spec_from_file_location("report", REPO_ROOT / "benchmarks" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    table = report.tables(document["benchmark"], document)
    printed = [line for line in output.splitlines() if line.startswith("|")]
    assert printed and all(line in table.splitlines() for line in printed), table


def test_bench_model_times_the_deployed_file(water_deepmd, tmp_path):
    output = run_benchmark(
        "bench_model.py",
        "--water", str(water_deepmd),
        "--sizes", "192",
        "--dtypes", "float32", "float64",
        "--no-training",
        "--molecules",
        "--time-limit", "0.2",
        "--min-repeats", "2",
        "--json", str(tmp_path / "bench_model.json"),
    )  # fmt: skip
    rows = re.findall(r"^\| (float32|float64) \| 192 \| ([\d.]+) \|", output, re.M)
    assert sorted(dtype for dtype, _ in rows) == ["float32", "float64"], output
    assert all(math.isfinite(float(us)) and float(us) > 0 for _, us in rows), output
    check_json(tmp_path / "bench_model.json", "bench_model.py", output)


@pytest.mark.slow
def test_bench_model_times_small_molecule_training(tmp_path):
    """The CH4 row: a model step and nequip-train's epochs (two runs, 1 and 2 epochs), with
    finite times and start-up, no deployed file."""
    output = run_benchmark(
        "bench_model.py",
        "--sizes",
        "--no-training",
        "--molecules", "ch4",
        "--epochs", "2",
        "--time-limit", "0.2",
        "--min-repeats", "2",
        "--json", str(tmp_path / "bench_model.json"),
    )  # fmt: skip
    (row,) = re.findall(r"^\| ch4 \| 5 \| ([^|]+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \| ([^|]+) "
                        r"\| ([^|]+) \|$", output, re.M)  # fmt: skip
    step_ms, model_rate, gflops, epoch_seconds, train_rate, startup = map(float, row)
    assert step_ms > 0 and model_rate == pytest.approx(5e3 / step_ms, rel=0.02), output
    assert gflops > 0 and epoch_seconds > 0 and startup > 0, output
    assert train_rate == pytest.approx(400 / epoch_seconds, rel=0.02), output
    assert "Deployed file" not in output, output
    check_json(tmp_path / "bench_model.json", "bench_model.py", output)


@pytest.mark.slow
def test_bench_md_runs_pair_style_reann(water_deepmd, tmp_path):
    """Two rounds of both dtypes: each row gives its best and both runs, float64 / float32 and a
    committee of 4 / one model are given round by round."""
    output = run_benchmark(
        "bench_md.py",
        "--data", str(water_deepmd),
        "--sizes", "192",
        "--ranks", "1",
        "--steps", "5",
        "--repeats", "2",
        "--json", str(tmp_path / "bench_md.json"),
    )  # fmt: skip
    for dtype in ("float32", "float64"):
        rows = re.findall(
            rf"^\| {dtype} \| keep \| 192 \| 1 \| images \| 5 \| ([\d.]+) \|.*\| ([\d.]+) / ([\d.]+) \|$",
            output,
            re.M,
        )
        assert len(rows) == 1, output
        fastest, first, second = map(float, rows[0])
        assert 0 < fastest == min(first, second), output
    ratios = re.findall(
        r"^\| keep \| 192 \| ([\d.]+) / ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", output, re.M
    )
    assert len(ratios) == 1 and all(math.isfinite(float(x)) for x in ratios[0]), output
    # the committee of 4 next to one model, round by round
    committee = re.findall(
        r"^\| (float32|float64) \| keep \| 192 \| 4 \| ([\d.]+) / ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$",
        output,
        re.M,
    )
    assert sorted(dtype for dtype, *_ in committee) == ["float32", "float64"], output
    assert all(float(x) > 1.0 for _, *values in committee for x in values), output
    check_json(tmp_path / "bench_md.json", "bench_md.py", output)


@pytest.mark.slow
def test_bench_water_rounds_give_the_ratio_round_by_round(water_deepmd, tmp_path):
    """The eager path only (no ``nequip-compile``), two rounds of both models: the last table
    gives both models' µs/atom and NequIP/REANN in each round, and their median."""
    output = run_benchmark(
        "bench_water.py",
        "--data", str(water_deepmd),
        "--paths", "eager",
        "--num-frames", "2",
        "--batch-size", "2",
        "--warmup", "1",
        "--inference-repeats", "2",
        "--train-warmup", "1",
        "--train-repeats", "1",
        "--rounds", "2",
        "--json", str(tmp_path / "bench_water.json"),
    )  # fmt: skip
    rows = re.findall(
        r"^\|\s+eager \|\s+192 \|\s+([\d.]+) / ([\d.]+) \|\s+([\d.]+) / ([\d.]+) \|"
        r"\s+([\d.]+) / ([\d.]+) \|\s+([\d.]+) \|$",
        output,
        re.M,
    )
    assert len(rows) == 1, output
    reann_1, reann_2, nequip_1, nequip_2, ratio_1, ratio_2, median = map(float, rows[0])
    assert ratio_1 == pytest.approx(nequip_1 / reann_1, rel=0.02), output
    assert ratio_2 == pytest.approx(nequip_2 / reann_2, rel=0.02), output
    assert median == pytest.approx((ratio_1 + ratio_2) / 2, abs=0.01), output
    check_json(tmp_path / "bench_water.json", "bench_water.py", output)


@pytest.mark.slow
def test_bench_ablation_compares_a_variant_with_the_baseline_on_ch4(tmp_path):
    """Two one-minute REANN runs at once, the baseline and a variant: both rows in the table
    with their ratio, the JSON readable by the report."""
    output = run_benchmark(
        "bench_ablation.py",
        "--datasets", "ch4",
        "--variants", "baseline", "force-weight-10",
        "--seeds", "1",
        "--minutes", "1",
        "--jobs", "2",
        "--curve-seconds", "20",
        "--json", str(tmp_path / "bench_ablation.json"),
    )  # fmt: skip
    for variant in ("baseline", "force-weight-10"):
        (mae,) = re.findall(rf"^\| {variant} \| ([\d.]+) \| \d+ \| [\d.]+ \|$", output, re.M)
        assert math.isfinite(float(mae)), output
    assert re.search(r"^\| force-weight-10 \| `[^`]+forces=10.0` \| [\d.]+ \|$", output, re.M)
    check_json(tmp_path / "bench_ablation.json", "bench_ablation.py", output)


@pytest.mark.slow
def test_bench_accuracy_smoke_trains_both_models_on_ch4(tmp_path):
    """The smallest form of the accuracy benchmark: one minute of training per model on the
    shipped CH4 data, both models' test errors finite, their ratio given, the curve drawn."""
    output = run_benchmark(
        "bench_accuracy.py",
        "--datasets", "ch4",
        "--minutes", "1",
        "--curve-seconds", "20",
        "--no-md-cost",
        "--json", str(tmp_path / "bench_accuracy.json"),
        "--plot", str(tmp_path / "curves.png"),
    )  # fmt: skip
    rows = re.findall(
        r"^\| ch4 \| 1 \| (REANN|NequIP) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| (\d+) \| – "
        r"\| [^|]+, [^|]+ \|$",
        output,
        re.M,
    )
    assert sorted(model for model, *_ in rows) == ["NequIP", "REANN"], output
    for _, *errors, steps in rows:
        assert all(math.isfinite(float(error)) for error in errors) and int(steps) > 0, output
    assert re.search(r"^\| ch4 \| 1 \| [\d.]+ \| [\d.]+ \| ", output, re.M), output
    assert (tmp_path / "curves.png").stat().st_size > 0
    check_json(tmp_path / "bench_accuracy.json", "bench_accuracy.py", output)
