"""``reann-nequip convert``: REANN's para files (read as data, never executed) → a nequip config
that builds the equivalent model and reads the REANN data."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from hydra.utils import instantiate
from lightning.pytorch.strategies import SingleDeviceStrategy
from omegaconf import OmegaConf

from reann_nequip.cli import main as cli_main
from reann_nequip.data import write_configuration
from reann_nequip.data.configuration import iter_configuration, write_frames
from reann_nequip.integrations.reann_params import ReannParameterError, read_reann_parameters

from ..utils import checkpoint_of, error_log_runs, run_nequip_train, schedule_state

# REANN's example for CO2 on Ni(100), written as a REANN user would
INPUT_NN = """\
# required parameters
  start_table = 1                # fit with force(1)
  table_coor = 1                 # 1 for direct (fractional) coordinates
  nl = [64,64]          # neural network architecture
  nblock =  1
  dropout_p=[0.0,0.0,0.0,0.0]
  table_init = 0             # 1 used for load parameters from pth
  nkpoint=1
  Epoch=20000
  patience_epoch = 200
  decay_factor = 0.5
  start_lr = 0.001
  end_lr =1e-5
  re_ceff = 0
  ratio = 0.9
  batchsize_train = 128
  batchsize_val = 256
  e_ceff=0.1
  init_f=50
  final_f=0.5
  queue_size=10
  print_epoch=5
  table_norm=True
  DDP_backend='nccl'
  activate = 'Relu_like'
  dtype="float32"
     oc_nl = [64,64]
     oc_nblock = 1
     oc_dropout_p=[0,0,0,0]
     oc_activate = 'Relu_like'
     oc_table_norm=True
     oc_loop=3
  folder="../data/co2+ni100/"
"""
INPUT_DENSITY = """\
  neigh_atoms=60
  cutoff=5e0
  nipsin=2
  atomtype=['O', 'C', 'Ni']
  nwave=8
"""


def write_reann_run(root, input_nn=INPUT_NN, input_density=INPUT_DENSITY):
    para = root / "para"
    para.mkdir(parents=True)
    (para / "input_nn").write_text(input_nn)
    (para / "input_density").write_text(input_density)
    return para


def write_reann_data(data_dir, num_frames, seed=0):
    """CO2 over a 4-atom Ni layer: train/configuration (fractional) and an empty val/."""
    rng = np.random.default_rng(seed)
    cell = np.diag([5.0, 5.0, 12.0])
    images = []
    for _ in range(num_frames):
        atoms = Atoms("OOCNi4", cell=cell, pbc=True)
        atoms.set_scaled_positions(rng.uniform(0.0, 1.0, (7, 3)))
        atoms.calc = SinglePointCalculator(
            atoms, energy=rng.normal(-30.0, 1.0), forces=rng.normal(size=(7, 3))
        )
        images.append(atoms)
    (data_dir / "train").mkdir(parents=True)
    (data_dir / "val").mkdir()
    write_configuration(data_dir / "train" / "configuration", images, coordinates="fractional")
    (data_dir / "val" / "configuration").write_text("")


def test_co2_ni100_config_builds_the_equivalent_model(tmp_path, capsys):
    para = write_reann_run(tmp_path / "run")
    write_reann_data(tmp_path / "data", num_frames=10)
    out = tmp_path / "co2.yaml"
    assert cli_main(["convert", str(para), "--data", str(tmp_path / "data"), "-o", str(out)]) == 0
    warnings = capsys.readouterr().err

    config = yaml.safe_load(out.read_text())
    model = config["training_module"]["model"]
    assert model["_target_"] == "reann_nequip.model.ReannModel"
    assert config["cutoff_radius"] == 5.0 and config["model_type_names"] == ["O", "C", "Ni"]
    assert (model["l_max"], model["num_gaussians"], model["num_recursions"]) == (2, 8, 3)
    assert model["model_dtype"] == "float32"
    assert model["energy_network"]["hidden"] == [64, 64]
    assert model["coefficient_network"]["hidden"] == [64, 64]
    assert model["avg_num_neighbors"] == 60.0  # REANN's 1/neigh_atoms initial coefficients
    train = config["data"]["train_dataset"]
    assert train["coordinates"] == "fractional"
    # empty val/configuration: REANN trains on the first int(0.9 N) frames, validates on the rest
    assert (train["frames"], config["data"]["val_dataset"]["frames"]) == (":9", "9:")
    assert config["data"]["train_dataloader"]["batch_size"] == 128
    module = config["training_module"]
    # REANN's loss on total energies; the schedule sets the weights every batch
    assert module["loss"] == {
        "_target_": "nequip.train.EnergyForceLoss",
        "per_atom_energy": False,
        "coeffs": {"total_energy": 0.1, "forces": 50.0},
    }
    # the same loss validates, so `weighted_sum` is REANN's validation loss
    assert {k: v for k, v in module["val_metrics"].items() if k != "extra_metrics"} == (
        module["loss"]
    )
    assert module["optimizer"] == {
        "_target_": "torch.optim.AdamW",
        "lr": 0.001,
        "weight_decay": 0.0,
    }
    assert "lr_scheduler" not in module  # ReannTrainingSchedule owns the plateau scheduler
    assert module["_target_"] == "nequip.train.EMALightningModule"
    assert module["ema_decay"] == 0.999
    callbacks = {c["_target_"].rsplit(".", 1)[1]: c for c in config["trainer"]["callbacks"]}
    assert callbacks["ReannTrainingSchedule"] == {
        "_target_": "reann_nequip.train.ReannTrainingSchedule",
        "end_lr": 1e-5,
        "decay_factor": 0.5,
        # patience_epoch 200 with print_epoch 5: 40 validations of 5 epochs in REANN, 200
        # validations of one epoch here
        "patience": 200,
        "energy_coeff": 0.1,
        "initial_force_coeff": 50.0,
        "final_force_coeff": 0.5,
    }
    assert callbacks["ReannErrorLog"]["file_path"] == "${hydra:runtime.output_dir}/nn.err"
    assert callbacks["TrainingGuard"] == {"_target_": "reann_nequip.train.TrainingGuard"}
    assert config["trainer"]["max_epochs"] == 20000

    # parameters with no equivalent are warned about, those now carried over are not
    for name in ("queue_size", "DDP_backend", "nkpoint", "print_epoch"):
        assert f"`{name}`" in warnings, name
    for name in ("final_f", "end_lr", "decay_factor", "patience_epoch", "e_ceff", "init_f"):
        assert f"`{name}`" not in warnings, name
    assert "`table_init`" not in warnings  # 0 is a fresh run, as nequip's
    assert "input_nn, line 21:" in warnings  # queue_size's line

    # the schedule, the error log and the loss build, and the schedule accepts them
    schedule = instantiate(callbacks["ReannTrainingSchedule"])
    loss, val_metrics = instantiate(module["loss"]), instantiate(module["val_metrics"])
    trainer = SimpleNamespace(
        optimizers=[torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.001)],
        lr_scheduler_configs=[],
        strategy=SingleDeviceStrategy(device=torch.device("cpu")),
    )
    schedule.on_train_start(trainer, SimpleNamespace(loss=loss, val_metrics=[val_metrics]))
    assert schedule.force_coeff(1e-3) == pytest.approx(50.0)  # init_f at start_lr
    assert schedule.force_coeff(1e-5) == pytest.approx(0.5, abs=1e-3)  # final_f at end_lr
    # the validation loss the schedule and the checkpoint follow
    assert schedule.monitor == callbacks["ModelCheckpoint"]["monitor"]

    # the config builds the model and reads the data
    OmegaConf.register_new_resolver("training_data_stats", lambda name: -1.5, replace=True)
    omega = OmegaConf.create(config)
    graph_model = instantiate(OmegaConf.to_container(omega.training_module.model, resolve=True))
    density = graph_model.model.func.density
    assert len(density.updates) == 3
    assert tuple(density.mixing.shape) == (1, 3, 8, 8 * 9 // 2 * 3)  # shared W[L], M = 108
    assert tuple(graph_model.model.func.radial_basis.centers.shape) == (3, 8)
    energy_net = graph_model.model.func.atomic_energy.network
    assert tuple(energy_net.input_linear.weight.shape) == (3, 108, 64)
    assert [tuple(layer.linear.weight.shape) for layer in energy_net.blocks[0].layers] == [
        (3, 64, 64),
        (3, 64, 64),
    ]
    assert density.initial_coefficients.detach().numpy() == pytest.approx(1 / 60)
    assert graph_model.model.func.atomic_energy.network.input_linear.weight.dtype.itemsize == 4
    train_set = instantiate(OmegaConf.to_container(omega.data.train_dataset, resolve=True))
    val_set = instantiate(OmegaConf.to_container(omega.data.val_dataset, resolve=True))
    assert (len(train_set), len(val_set)) == (9, 1)
    assert train_set[0]["atom_types"].tolist() == [0, 0, 1, 2, 2, 2, 2]


def test_energy_only_fit_gets_the_schedule_without_force_weights(tmp_path):
    """REANN's start_table 0: energy loss only; plateau, rollback and end_lr stop still apply."""
    para = write_reann_run(
        tmp_path / "run", input_nn=INPUT_NN.replace("start_table = 1", "start_table = 0")
    )
    out = tmp_path / "energy.yaml"
    assert cli_main(["convert", str(para), "-o", str(out)]) == 0
    config = yaml.safe_load(out.read_text())
    module = config["training_module"]
    assert module["loss"] == {"_target_": "nequip.train.EnergyOnlyLoss", "per_atom_energy": False}
    (schedule_config,) = [
        c for c in config["trainer"]["callbacks"] if c["_target_"].endswith("TrainingSchedule")
    ]
    assert schedule_config["force_metric"] is None
    assert "initial_force_coeff" not in schedule_config

    schedule = instantiate(schedule_config)
    loss, val_metrics = instantiate(module["loss"]), instantiate(module["val_metrics"])
    trainer = SimpleNamespace(
        optimizers=[torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.001)],
        lr_scheduler_configs=[],
        strategy=SingleDeviceStrategy(device=torch.device("cpu")),
    )
    module_stub = SimpleNamespace(loss=loss, val_metrics=[val_metrics])
    schedule.on_train_start(trainer, module_stub)
    batch = {"pos": torch.zeros(7, 3), "num_atoms": torch.tensor([3, 4])}
    schedule.on_train_batch_start(trainer, module_stub, batch, 0)
    assert set(loss.entries) == {"total_energy_mse"}
    assert loss.entries["total_energy_mse"].coeff == pytest.approx(1.0)  # normalised e_ceff


@pytest.mark.slow
def test_converted_config_trains_with_reanns_schedule(tmp_path, co2_ni100):
    """REANN's CO2/Ni(100) para files → config → two epochs of nequip-train on 6 frames."""
    para = write_reann_run(tmp_path / "run")
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "val").mkdir()
    frames = iter_configuration(co2_ni100, "fractional")
    write_frames(data / "train" / "configuration", [next(frames) for _ in range(4)], "fractional")
    write_frames(data / "val" / "configuration", [next(frames) for _ in range(2)], "fractional")
    config = tmp_path / "co2.yaml"
    assert cli_main(["convert", str(para), "--data", str(data), "-o", str(config)]) == 0

    run_dir = tmp_path / "out"
    run_nequip_train(
        "-cd",
        str(tmp_path),
        "-cn",
        "co2",
        f"hydra.run.dir={run_dir}",
        "trainer.max_epochs=2",
        "++trainer.enable_progress_bar=false",
        "data.train_dataloader.batch_size=4",
        # a smaller model of the same structure keeps the test short
        "training_module.model.energy_network.hidden=[16,16]",
        "training_module.model.coefficient_network.hidden=[16,16]",
    )
    (run,) = error_log_runs(run_dir / "nn.err")
    assert run["terminated"] and [epoch for epoch, *_ in run["epochs"]] == [0, 1]
    for _, lr, train, val in run["epochs"]:
        assert lr == pytest.approx(1e-3)  # start_lr, no decay within patience
        assert len(train) == len(val) == 2  # total energy and forces
        assert all(np.isfinite(train + val))
    state = schedule_state(checkpoint_of(run_dir / "last.ckpt"))
    assert state["start_lr"] == pytest.approx(1e-3) and np.isfinite(state["best_loss"])
    assert state["plateau"]["patience"] == 200


@pytest.mark.parametrize(
    "line, message",
    [
        ("nl = [64] * 2", "must be a Python literal"),
        ("learning_rate = 0.1", "unknown REANN parameter `learning_rate`"),
        ("import os", "expected `name = value`"),
        ("nl = [64, -1]", "`nl` must be a non-empty list of positive integer widths"),
        ("activate = 'Swish'", "`activate` must be one of"),
        ("start_table = 4", "start_table 4"),
    ],
)
def test_bad_parameter_lines_name_file_and_line(tmp_path, capsys, line, message):
    para = write_reann_run(tmp_path, input_nn=INPUT_NN + line + "\n")
    line_number = len(INPUT_NN.splitlines()) + 1
    assert cli_main(["convert", str(para), "-o", str(tmp_path / "x.yaml")]) == 2
    error = capsys.readouterr().err
    assert message in error
    assert f"input_nn, line {line_number}" in error
    assert not (tmp_path / "x.yaml").exists()


def test_required_parameters_and_files(tmp_path, capsys):
    para = write_reann_run(tmp_path, input_density="cutoff = 4.0\nneigh_atoms = 50\n")
    assert cli_main(["convert", str(para), "-o", str(tmp_path / "x.yaml")]) == 2
    assert "`atomtype` is required" in capsys.readouterr().err
    (para / "input_density").unlink()
    with pytest.raises(ReannParameterError, match="input_density not found"):
        read_reann_parameters(str(para))
