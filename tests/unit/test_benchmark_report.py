"""benchmarks/report.py: the benchmark report is generated from the benchmarks' --json files."""

import importlib.util
import json

import pytest

from ..utils import REPO_ROOT

MACHINE = {
    "cpu": "Test CPU 9000",
    "cores": 2,
    "isa": "avx2",
    "system": "Linux x86_64",
    "load_average": [0.1, 0.2, 0.3],
    "torch": "2.13.0",
    "python": "3.11.7",
    "nequip": "0.19.1",
    "reann_nequip": "0.1.0",
}


@pytest.fixture(scope="module")
def report():
    """benchmarks/report.py as a module (benchmarks/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("report", REPO_ROOT / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(directory, name: str, document: dict):
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(json.dumps(document))


def test_report_gives_each_result_file_its_command_machine_and_table(tmp_path, report):
    results = tmp_path / "results"
    write(
        results,
        "bench_ase_md.json",
        {
            "benchmark": "bench_ase_md",
            "command": "python benchmarks/bench_ase_md.py --rounds 2",
            "machine": MACHINE,
            "results": {
                "rounds": 2,
                "runs": [
                    {"atoms": 192, "neighbor_list": "reann", "us_per_atom_step": [20.0, 22.0]},
                    {"atoms": 192, "neighbor_list": "vesin", "us_per_atom_step": [30.0, 33.0]},
                ],
            },
        },
    )
    text = report.render(results)

    section = text.split("## bench_ase_md")[1].split("\n## ")[0]
    assert "`python benchmarks/bench_ase_md.py --rounds 2`" in section
    assert "Test CPU 9000, 2 cores, kernels at avx2; torch 2.13.0" in section
    assert "| 192 | reann | 20.0 | 20.0 / 22.0 |  |" in section
    assert "| 192 | vesin | 30.0 | 30.0 / 33.0 | 1.50 / 1.50 (median 1.50) |" in section
    # what it measures and how to run it come from the script's docstring
    assert "velocity" in section and "```bash" in section
    # every other benchmark says that its results are missing, and how to make them
    for name in report.BENCHMARKS:
        missing = f"_Results not yet generated for `{name}`._"
        assert (missing in text) == (name != "bench_ase_md"), name
    assert "--json benchmarks/results/bench_md.json" in text


def test_report_reads_bench_water_files_by_their_name_without_provenance(tmp_path, report):
    """bench_water's files keep their own format; older ones have no command or machine."""
    speed = [
        {
            "path": "deployed",
            "atoms": 192,
            "model": model,
            "dtype": "float32",
            "us_per_atom": us,
            "cpu_us_per_atom": us,
            "wall_ratio_nequip_over_reann": ratio,
            "cpu_ratio_nequip_over_reann": ratio,
            "peak_rss_mb": 500.0,
        }
        for model, us, ratio in (("reann", 10.0, None), ("nequip", 250.0, 25.0))
    ]
    document = {"args": {}, "results": [{"path": "deployed"}], "speed": speed, "rounds": [speed]}
    write(tmp_path / "results", "bench_water_float32.json", document)

    section = report.render(tmp_path / "results").split("## bench_water")[1]
    section = section.split("\n## ")[0]
    assert "### Results: `results/bench_water_float32.json`" in section
    assert "- command: `not recorded`" in section and "- machine: not recorded" in section
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| deployed")]
    assert [[cell.strip() for cell in row] for row in rows] == [
        ["deployed", "192", "REANN", "float32", "10.0", "10.0", "–", "–", "500"],
        ["deployed", "192", "NequIP", "float32", "250.0", "250.0", "25.00", "25.00", "500"],
    ]


def test_report_refuses_a_file_of_no_known_benchmark(tmp_path, report):
    write(tmp_path / "results", "timings.json", {"results": {}})
    with pytest.raises(ValueError, match="timings.json: cannot tell which benchmark"):
        report.render(tmp_path / "results")


def test_headline_table_links_each_number_to_its_benchmark(tmp_path, report):
    run = {"atoms": 12288, "us_per_atom_step": 0.0, "pair_fraction": 0.9, "peak_rss_mb": 600.0}
    configurations = [
        {
            "dtype": dtype,
            "memory": "keep",
            "size": size,
            "ranks": ranks,
            "mode": mode,
            "models": models,
            "runs": [{**run, "us_per_atom_step": t} for t in times],
        }
        for dtype, size, ranks, mode, models, times in (
            ("float32", 192, 1, "images", 1, (15.0,)),
            ("float32", 12288, 1, "images", 1, (13.0, 12.5)),
            ("float32", 12288, 1, "images", 4, (52.0, 50.0)),
            ("float32", 12288, 2, "exchange", 1, (8.0,)),
        )
    ]
    results = {"steps": None, "repeats": 2, "configurations": configurations}
    write(tmp_path / "results", "bench_md.json", {"benchmark": "bench_md", "results": results})

    assert report.headline_table(tmp_path / "results").splitlines() == [
        "| quantity | value | benchmark |",
        "|---|---|---|",
        "| `pair_style reann` MD, 12,288 water atoms, 1 rank, float32 | 12.5 µs/atom-step "
        "| [`bench_md`](benchmarks/README.md#bench_md) |",
        "| committee of 4 with its model deviation every step, 12,288 atoms, float32, cost "
        "relative to one model | 4.00× | [`bench_md`](benchmarks/README.md#bench_md) |",
    ]
    readme = f"intro\n{report.HEADLINE_START}\nold table\n{report.HEADLINE_END}\nrest\n"
    updated = report.with_headline(readme, "new table")
    assert updated == f"intro\n{report.HEADLINE_START}\nnew table\n{report.HEADLINE_END}\nrest\n"


def test_benchmark_report_and_readme_numbers_are_those_of_the_committed_results(report):
    """Nobody edits the tables by hand: benchmarks/README.md and the headline numbers of
    README.md are exactly what report.py makes of benchmarks/results/ (run
    `python benchmarks/report.py` after adding results)."""
    assert (REPO_ROOT / "benchmarks" / "README.md").read_text() == report.render()
    readme = (REPO_ROOT / "README.md").read_text()
    assert report.with_headline(readme, report.headline_table()) == readme
