"""benchmarks/bench_accuracy.py: results of several runs (``--merge``) make one consistent file."""

import argparse
import json
import shlex

import pytest

from ..utils import benchmark_script


@pytest.fixture(scope="module")
def bench():
    return benchmark_script("bench_accuracy")


def arguments(**changes) -> argparse.Namespace:
    settings = {
        "datasets": ["water"],
        "models": ["reann", "nequip"],
        "minutes": 15,
        "epochs": None,
        "seeds": [2],
        "threads": 2,
        "curve_seconds": 60,
        "md_cost": True,
        "reann_config": None,
        "overrides": [],
        "reann_overrides": [],
        "workdir": None,
        "json": "results.json",
        "merge": True,
        "plot": "curves.png",
    }
    return argparse.Namespace(**{**settings, **changes})


def row(dataset: str, seed: int, reann: float, nequip: float = 20.0) -> dict:
    def result(force_mae):
        final = {
            "energy_mae_meV": 1.0,
            "energy_rmse_meV": 1.0,
            "energy_mae_meV_per_atom": 0.1,
            "forces_mae_meV_per_A": force_mae,
            "forces_rmse_meV_per_A": force_mae,
        }
        curve = [{"seconds": 60.0, "step": 10, **final}]
        return {"final": final, "curve": curve, "wall_seconds": 900.0, "steps": 10,
                "md_us_per_atom": 1.0}  # fmt: skip

    return {"dataset": dataset, "seed": seed, "host": "CPU A, avx512", "reann": result(reann),
            "nequip": result(nequip), "reann_seconds_to_nequip_final": None}  # fmt: skip


def test_merged_rows_are_one_per_data_set_and_seed_the_newest_kept(bench):
    previous = [row("co2_ni100", 1, 10.0), row("ethanol", 1, 11.0), row("ethanol", 2, 12.0)]
    new = [row("water", 1, 13.0), row("ethanol", 2, 14.0)]
    rows = bench.merged(previous, new)
    assert [(r["dataset"], r["seed"]) for r in rows] == [
        ("ethanol", 1),
        ("ethanol", 2),
        ("water", 1),
        ("co2_ni100", 1),
    ]
    assert rows[1]["reann"]["final"]["forces_mae_meV_per_A"] == 14.0


def test_merge_refuses_a_file_made_with_other_settings(bench, tmp_path):
    path = tmp_path / "results.json"
    bench.write_results(path, [row("ethanol", 1, 10.0)], arguments(minutes=5))
    with pytest.raises(SystemExit, match="minutes=5.*--merge adds only"):
        bench.previous_rows(path, arguments())
    assert bench.previous_rows(path, arguments(minutes=5))[0]["seed"] == 1
    assert bench.previous_rows(tmp_path / "none.json", arguments()) == []


def test_rows_keep_their_host_which_older_rows_did_not_record(bench, tmp_path):
    path = tmp_path / "results.json"
    bench.write_results(path, [row("ethanol", 1, 10.0)], arguments())
    document = json.loads(path.read_text())
    older = {key: value for key, value in row("ethanol", 2, 10.0).items() if key != "host"}
    document["rows"].append(older)
    path.write_text(json.dumps(document))
    rows = bench.previous_rows(path, arguments())
    assert [r["host"] for r in rows] == ["CPU A, avx512", "not recorded"]
    assert "| 10 | 1.0 | not recorded |" in bench.markdown(document)
    assert bench.host({"cpu": "CPU B", "isa": "avx2"}) == "CPU B, avx2"


def test_merged_file_records_one_command_that_makes_all_its_rows(bench, tmp_path):
    path = tmp_path / "results.json"
    rows = [row("ethanol", 1, 10.0), row("ethanol", 3, 10.0), row("water", 2, 30.0, 20.0)]
    bench.write_results(path, rows, arguments(reann_overrides=["model.l_max=3"]))
    document = json.loads(path.read_text())
    assert bench.headline(document) == []
    command = shlex.split(document["command"])
    assert command[:2] == ["python", "benchmarks/bench_accuracy.py"]
    assert "--merge" not in command
    flags = " ".join(command[2:])
    assert "--datasets ethanol water " in flags and "--seeds 1 2 3 " in flags
    assert "--minutes 15 " in flags and "--reann-overrides model.l_max=3 " in flags
    assert document["arguments"]["datasets"] == ["ethanol", "water"]
    assert document["arguments"]["seeds"] == [1, 2, 3]
    document["arguments"]["reann_overrides"] = []
    document["arguments"]["overrides"] = ["trainer.gradient_clip_val=1.0"]
    assert bench.headline(document) == []
    document["arguments"]["overrides"] = []
    assert bench.headline(document) == [
        ("test force MAE, REANN / NequIP, ethanol, 15 min of training each (median of 2 seeds)",
         "0.50"),
        ("test force MAE, REANN / NequIP, water, 15 min of training each", "1.50"),
    ]  # fmt: skip


def test_report_gives_each_data_set_its_seeds_and_median_ratio(bench):
    rows = [row("ethanol", 1, 10.0), row("ethanol", 2, 30.0), row("ethanol", 3, 16.0)]
    report = bench.format_report(rows, arguments(datasets=["ethanol"], seeds=[1, 2, 3]))
    assert (
        "| ethanol | 1, 2, 3 | 10.0 / 30.0 / 16.0 | 20.0 / 20.0 / 20.0 | 0.50 / 1.50 / 0.80 "
        "| 0.80 |" in report.splitlines()
    ), report


def test_overrides_set_values_and_append_to_lists_naming_a_wrong_key(bench, tmp_path):
    def config(*overrides):
        args = arguments(reann_overrides=list(overrides))
        return bench.training_config("reann", bench.DATASETS["ethanol"], tmp_path, 700, args, 1)

    changed = config(
        "training_module.optimizer.lr=0.002",
        "trainer.callbacks+={_target_: reann_nequip.train.StandardizeDensity}",
    )
    assert changed["training_module"]["optimizer"]["lr"] == 0.002
    targets = [callback["_target_"] for callback in changed["trainer"]["callbacks"]]
    assert "reann_nequip.train.StandardizeDensity" in targets
    with pytest.raises(SystemExit, match="`trainer.callbackz` is not a list"):
        config("trainer.callbackz+={_target_: x}")


def test_shared_overrides_change_both_models_and_reann_overrides_only_reann(bench, tmp_path):
    args = arguments(
        overrides=["trainer.gradient_clip_val=1.0"],
        reann_overrides=["training_module.optimizer.lr=0.002"],
    )
    configs = {
        model: bench.training_config(model, bench.DATASETS["ethanol"], tmp_path, 700, args, 1)
        for model in ("reann", "nequip")
    }
    assert all(config["trainer"]["gradient_clip_val"] == 1.0 for config in configs.values())
    assert configs["reann"]["training_module"]["optimizer"]["lr"] == 0.002
    assert configs["nequip"]["training_module"]["optimizer"] == bench.NEQUIP["optimizer"]
