"""configs/reann_co2_ni100.yaml: REANN's CO2/Ni(100) example on REANN's own data file."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_method, instantiate
from nequip.data import AtomicDataDict
from nequip.utils.global_state import set_global_state
from omegaconf import OmegaConf

from ..utils import REPO_ROOT, error_log_runs, run_nequip_train


@pytest.fixture(scope="module")
def config():
    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base=None):
        return compose("reann_co2_ni100")


def _dataset(config, split):
    """The configured dataset of one split, its paths taken from the repository root."""
    dataset = OmegaConf.to_container(config.data[f"{split}_dataset"], resolve=True)
    dataset["file_path"] = str(REPO_ROOT / dataset["file_path"])
    return instantiate(dataset)


def test_config_has_reanns_example_hyperparameters(config):
    model = config.training_module.model
    assert (model.r_max, model.num_gaussians, model.l_max, model.num_recursions) == (5.0, 8, 2, 3)
    assert list(model.energy_network.hidden) == list(model.coefficient_network.hidden) == [64, 64]
    assert model.model_dtype == "float32" and list(model.type_names) == ["O", "C", "Ni"]
    schedule = config.trainer.callbacks[1]
    assert schedule._target_ == "reann_nequip.train.ReannTrainingSchedule"
    assert (schedule.end_lr, schedule.energy_coeff, schedule.initial_force_coeff) == (
        1.0e-5,
        0.1,
        50.0,
    )
    assert config.training_module.optimizer._target_ == "torch.optim.AdamW"
    assert "lr_scheduler" not in config.training_module  # the schedule callback owns it


def test_config_trains_on_first_800_frames_and_tests_on_last_191(config, co2_ni100):
    sizes = {split: len(_dataset(config, split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 720, "val": 80, "test": 191}


def test_config_builds_a_model_that_evaluates_a_co2_ni100_frame(config, co2_ni100):
    set_global_state()
    config = config.copy()
    # stands in for the training-set statistic
    OmegaConf.update(config, "training_module.model.per_type_energy_shifts", -5.3)
    model_config = OmegaConf.to_container(config.training_module.model, resolve=True)
    builder = get_method(model_config.pop("_target_"))
    model = builder(**model_config)
    frame = _dataset(config, "test")[0]
    output = model(AtomicDataDict.with_batch_(frame))
    assert output[AtomicDataDict.FORCE_KEY].shape == (39, 3)
    # REANN starts with zero output layers: every atom has the shift, and no force
    torch.testing.assert_close(
        output[AtomicDataDict.TOTAL_ENERGY_KEY].double().reshape(()),
        torch.tensor(39 * -5.3, dtype=torch.float64),
    )


@pytest.mark.slow
def test_config_trains_two_epochs_on_a_few_frames(tmp_path, co2_ni100):
    run_nequip_train(
        "configs/reann_co2_ni100.yaml",
        f"hydra.run.dir={tmp_path}",
        "trainer.max_epochs=2",
        'data.train_dataset.frames=":24"',
        'data.val_dataset.frames="720:736"',
        'data.test_dataset.frames="800:816"',
        "data.train_dataloader.batch_size=12",
    )
    (run,) = error_log_runs(tmp_path / "nn.err")
    assert run["terminated"] and [epoch for epoch, *_ in run["epochs"]] == [0, 1]
    assert (tmp_path / "best.ckpt").is_file()
