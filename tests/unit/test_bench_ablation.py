"""benchmarks/bench_ablation.py: every variant changes settings that exist in both recommended
configs, and the table compares each variant with the baseline of the same seed."""

import argparse
import inspect
import json
import shlex

import pytest
from omegaconf import ListConfig, OmegaConf

from ..utils import REPO_ROOT, benchmark_script


@pytest.fixture(scope="module")
def bench():
    return benchmark_script("bench_ablation")


@pytest.mark.parametrize("config", ["reann_molecules", "reann_condensed"])
def test_every_variant_changes_settings_that_exist(bench, config):
    """A misspelt key would silently add a setting nothing reads: each key is in the config, or
    an argument of the model, of its element networks or of the Lightning trainer that the config
    leaves at its default."""
    from lightning import Trainer

    from reann_nequip.model.reann_models import DEFAULT_NETWORK, ReannModel, _density_network

    model_arguments = set(inspect.signature(_density_network).parameters)
    model_arguments |= set(inspect.signature(inspect.unwrap(ReannModel)).parameters)
    trainer_arguments = set(inspect.signature(Trainer).parameters)
    base = OmegaConf.load(REPO_ROOT / "configs" / f"{config}.yaml")
    for variant, overrides in bench.VARIANTS.items():
        for override in overrides:
            key = override.split("=", 1)[0]
            if key.endswith("+"):
                assert isinstance(OmegaConf.select(base, key[:-1]), ListConfig), override
                continue
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(base, parent) if parent else base
            if parent == "training_module.model":
                assert leaf in node or leaf in model_arguments, (variant, override)
            elif parent.endswith("_network"):
                assert leaf in DEFAULT_NETWORK, (variant, override)
            elif parent == "trainer":
                assert leaf in node or leaf in trainer_arguments, (variant, override)
            else:
                assert node is not None and leaf in node, (variant, override)


def test_table_gives_each_variant_its_ratio_to_the_baseline_of_the_same_seed(bench, tmp_path):
    def row(variant, dataset, seed, mae):
        final = {"forces_mae_meV_per_A": mae}
        return {"variant": variant, "overrides": bench.VARIANTS[variant], "dataset": dataset,
                "seed": seed, "final": final, "steps": 100, "curve": []}  # fmt: skip

    rows = [
        row("baseline", "ethanol", 1, 20.0),
        row("baseline", "ethanol", 2, 30.0),
        row("lr-2e-3", "ethanol", 1, 10.0),
        row("lr-2e-3", "ethanol", 2, 45.0),
        row("lr-2e-3", "ethanol", 3, 1.0),  # no baseline of seed 3: not in the ratio
        row("baseline", "co2_ni100", 1, 40.0),
        row("lr-2e-3", "co2_ni100", 1, 30.0),
    ]
    args = argparse.Namespace(datasets=["ethanol"], variants=["baseline", "lr-2e-3"],
                              seeds=[3], minutes=5, threads=1, jobs=2, curve_seconds=60,
                              json=str(tmp_path / "ablation.json"))  # fmt: skip
    bench.write_results(tmp_path / "ablation.json", rows, args)
    document = json.loads((tmp_path / "ablation.json").read_text())
    command = shlex.join(shlex.split(document["command"]))
    assert "--datasets ethanol co2_ni100 --variants baseline lr-2e-3 --seeds 1 2 3" in command
    table = bench.markdown(document).splitlines()
    assert "| lr-2e-3 | 10.0 / 45.0 / 1.0 | 100 / 100 / 100 | 1.00 |" in table
    assert "| lr-2e-3 | `training_module.optimizer.lr=0.002` | 1.00 | 0.75 |" in table
    assert "| baseline | the recommended config | 1.00 | 1.00 |" in table
