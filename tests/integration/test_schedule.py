"""REANN's training schedule: force weight, summed-loss balance, divergence guard, nn.err, restart."""

import math
import re
import signal
import time
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from nequip.data import AtomicDataDict
from nequip.train import EnergyForceLoss

from reann_nequip.train import ReannTrainingSchedule, reann_force_coeff

from ..utils import (
    checkpoint_of,
    error_log_runs,
    run_nequip_train,
    schedule_state,
    start_nequip_train,
)

CONFIG = ["-cd", "tests/configs", "-cn", "reann_schedule_tiny"]
START_LR = 1.0e-3  # the config's optimizer lr
SCHEDULE = "trainer.callbacks.1"  # the ReannTrainingSchedule entry in the config
POISON = "trainer.callbacks.3"  # tests.schedule_fixtures.PoisonWeights
PAUSE = "trainer.callbacks.4"  # tests.schedule_fixtures.PauseMidEpoch


# === the force weight ===
def test_force_coeff_is_linear_in_lr_from_init_f_to_final_f():
    def f(lr):
        return reann_force_coeff(lr, 1.0e-3, 1.0e-5, 50.0, 0.5)

    assert f(1.0e-3) == pytest.approx(50.0, rel=1e-12)
    assert f(1.0e-5) == pytest.approx(0.5, abs=1e-3)
    # linear: equal lr steps give equal weight steps
    assert f(7.0e-4) - f(8.0e-4) == pytest.approx(f(2.0e-4) - f(3.0e-4), rel=1e-9)
    # the first halving already moves it ~50.5 % of the way: f is linear in lr, not in log lr
    assert (50.0 - f(5.0e-4)) / (50.0 - 0.5) == pytest.approx(0.505, abs=1e-3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"end_lr": 0.0}, "`end_lr` must be > 0, found 0.0"),
        ({"end_lr": 1e-5, "decay_factor": 1.5}, "`decay_factor` must lie in (0, 1), found 1.5"),
        ({"end_lr": 1e-5, "patience": -1}, "`patience` must be >= 0, found -1"),
        ({"end_lr": 1e-5, "divergence_factor": 0.5}, "`divergence_factor` must be > 1"),
        ({"end_lr": 1e-5, "initial_force_coeff": -1.0}, "`initial_force_coeff` must be >= 0"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ReannTrainingSchedule(**kwargs)


class _OtherRank:
    """A DDP strategy as the callback sees it, for a rank whose partner process holds
    ``other_atoms`` atoms in ``other_frames`` frames: ``reduce`` adds the partner's counts."""

    root_device = torch.device("cpu")

    def __init__(self, other_atoms, other_frames):
        self.other = torch.tensor([other_atoms, other_frames])

    def reduce(self, tensor, reduce_op):
        assert reduce_op == "sum"
        return tensor + self.other


def _fake_training(lr, loss, val_metrics, lr_scheduler_configs=(), strategy=None):
    """The trainer and module attributes the callback reads in training; one process unless
    ``strategy`` stands in for a DDP rank."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)
    trainer = SimpleNamespace(
        optimizers=[optimizer],
        lr_scheduler_configs=list(lr_scheduler_configs),
        strategy=SingleDeviceStrategy(device=torch.device("cpu")) if strategy is None else strategy,
        sanity_checking=False,
    )
    module = SimpleNamespace(loss=loss, val_metrics=[val_metrics])
    return trainer, module


def _frames(num_atoms_per_frame, seed):
    """A batch of frames of the given sizes with random energies and forces."""
    generator = torch.Generator().manual_seed(seed)
    num_atoms = torch.tensor(num_atoms_per_frame)
    total = int(num_atoms.sum())
    return {
        AtomicDataDict.POSITIONS_KEY: torch.zeros(total, 3, dtype=torch.float64),
        AtomicDataDict.NUM_NODES_KEY: num_atoms,
        AtomicDataDict.TOTAL_ENERGY_KEY: torch.randn(
            len(num_atoms), 1, generator=generator, dtype=torch.float64
        ),
        AtomicDataDict.FORCE_KEY: torch.randn(total, 3, generator=generator, dtype=torch.float64),
    }


def test_batch_loss_is_reanns_summed_loss_up_to_one_factor_per_batch():
    """REANN: e·Σ_frames ΔE² + f·Σ_components ΔF². With the callback's coefficients nequip's
    weighted mean equals it divided by frames·(e + f·3·atoms/frames), for any errors."""
    schedule = ReannTrainingSchedule(
        end_lr=1.0e-5, energy_coeff=0.1, initial_force_coeff=50.0, final_force_coeff=0.5
    )
    loss = EnergyForceLoss(per_atom_energy=False, coeffs={"total_energy": 1.0, "forces": 1.0})
    val_metrics = EnergyForceLoss(per_atom_energy=False)
    trainer, module = _fake_training(START_LR, loss, val_metrics)
    schedule.on_train_start(trainer, module)
    lr = 2.5e-4  # two decays later
    trainer.optimizers[0].param_groups[0]["lr"] = lr

    sizes = [3, 5, 9]  # frames of different sizes in one batch
    reference = _frames(sizes, seed=0)
    f = reann_force_coeff(lr, START_LR, 1.0e-5, 50.0, 0.5)
    frames, atoms = len(sizes), sum(sizes)
    for seed in (1, 2, 3):
        prediction = _frames(sizes, seed=seed)
        schedule.on_train_batch_start(trainer, module, prediction, 0)
        weighted_mean = loss(prediction, reference)["weighted_sum"]
        loss.reset()
        energy_sse = ((prediction["total_energy"] - reference["total_energy"]) ** 2).sum()
        force_sse = ((prediction["forces"] - reference["forces"]) ** 2).sum()
        reann_loss = 0.1 * energy_sse + f * force_sse
        assert float(weighted_mean) == pytest.approx(
            float(reann_loss) / (frames * (0.1 + f * 3 * atoms / frames)), rel=1e-10
        )


def test_ddp_ranks_weight_their_share_of_a_batch_as_one_process_weights_the_whole():
    """Two ranks holding frames of 3 + 5 and of 9 atoms set the coefficients one process sets
    for the batch of all three frames, for training batches and for the validation loss."""
    sizes, ranks = [3, 5, 9], ([3, 5], [9])

    def coeffs(sizes_here, strategy):
        schedule = ReannTrainingSchedule(
            end_lr=1.0e-5, energy_coeff=0.1, initial_force_coeff=50.0, final_force_coeff=0.5
        )
        loss = EnergyForceLoss(per_atom_energy=False)
        val_metrics = EnergyForceLoss(per_atom_energy=False)
        trainer, module = _fake_training(START_LR, loss, val_metrics, strategy=strategy)
        schedule.on_train_start(trainer, module)
        batch = _frames(sizes_here, seed=0)
        schedule.on_train_batch_start(trainer, module, batch, 0)
        schedule.on_validation_epoch_start(trainer, module)
        schedule.on_validation_batch_start(trainer, module, batch, 0)
        schedule.on_validation_epoch_end(trainer, module)
        return [
            {name: entry.coeff for name, entry in manager.entries.items()}
            for manager in (loss, val_metrics)
        ]

    one_process = coeffs(sizes, strategy=None)
    for here, there in (ranks, ranks[::-1]):
        rank = coeffs(here, strategy=_OtherRank(sum(there), len(there)))
        assert rank == one_process
    # the weights do depend on the frame sizes: a rank that ignored its partner would differ
    assert coeffs(ranks[0], strategy=None) != one_process


def test_configured_lr_scheduler_or_missing_loss_entry_is_an_error():
    schedule = ReannTrainingSchedule(end_lr=1.0e-5)
    loss = EnergyForceLoss(per_atom_energy=False)
    plateau = SimpleNamespace(scheduler=SimpleNamespace())
    trainer, module = _fake_training(START_LR, loss, loss, lr_scheduler_configs=[plateau])
    with pytest.raises(ValueError, match="remove `training_module.lr_scheduler`"):
        schedule.on_train_start(trainer, module)

    per_atom = EnergyForceLoss(per_atom_energy=True)
    trainer, module = _fake_training(START_LR, per_atom, per_atom)
    with pytest.raises(ValueError, match="`total_energy_mse` but `training_module.loss`"):
        schedule.on_train_start(trainer, module)

    trainer, module = _fake_training(1.0e-5, loss, loss)
    with pytest.raises(ValueError, match=r"`end_lr` \(1e-05\) must be below"):
        schedule.on_train_start(trainer, module)


# === nequip-train runs ===
def _ema_weights(checkpoint):
    state = checkpoint["state_dict"]
    return [
        state[f"ema.ema_weight_{i}"]
        for i in range(sum(k.startswith("ema.ema_weight_") for k in state))
    ]


def _model_holds(checkpoint, weights):
    """Whether the model's parameters equal ``weights`` (in ``parameters()`` order). The state
    dict interleaves parameters with buffers in the same order, so ``weights`` must appear in it
    as an ordered subsequence."""
    remaining = iter(weights)
    expected = next(remaining, None)
    for key, tensor in checkpoint["state_dict"].items():
        if expected is None:
            break
        if (
            key.startswith("model.")
            and tensor.shape == expected.shape
            and torch.equal(tensor, expected)
        ):
            expected = next(remaining, None)
    return expected is None


@pytest.mark.slow
def test_nan_in_the_weights_rolls_back_to_the_best_weights_and_halves_lr(tmp_path):
    poisoned_epoch = 3
    run_nequip_train(
        *CONFIG,
        f"hydra.run.dir={tmp_path}",
        "trainer.max_epochs=6",
        f"{POISON}.epoch={poisoned_epoch}",
        f"{POISON}.batch=2",
        python_path=True,
    )
    (run,) = error_log_runs(tmp_path / "nn.err")
    assert run["terminated"]
    epochs = {epoch: (lr, train, val) for epoch, lr, train, val in run["epochs"]}
    assert sorted(epochs) == list(range(6))
    # the poisoned epoch validates NaN; the next epochs train at half the rate and recover
    assert all(math.isnan(v) for v in epochs[poisoned_epoch][2])
    assert epochs[poisoned_epoch][0] == pytest.approx(START_LR)
    for epoch in (4, 5):
        assert epochs[epoch][0] == pytest.approx(START_LR / 2)
        assert all(math.isfinite(v) for v in epochs[epoch][1] + epochs[epoch][2])
    # recovered: the validation errors are those of the best weights, not worse
    assert epochs[4][2][1] <= epochs[poisoned_epoch - 1][2][1] * 1.1

    before = checkpoint_of(tmp_path / f"epoch={poisoned_epoch - 1}.ckpt")
    after = checkpoint_of(tmp_path / f"epoch={poisoned_epoch}.ckpt")
    assert schedule_state(before)["num_rollbacks"] == 0
    assert schedule_state(after)["num_rollbacks"] == 1
    best = schedule_state(before)["best_weights"]
    # the best weights are those validated (the EMA weights) at the best epoch before the NaN
    for kept, previous in zip(schedule_state(after)["best_weights"], best):
        torch.testing.assert_close(kept, previous, rtol=0, atol=0)
    # both the EMA and the raw weights were reset to them
    for ema_weight, best_weight in zip(_ema_weights(after), best, strict=True):
        torch.testing.assert_close(ema_weight, best_weight, rtol=0, atol=0)
    assert _model_holds(after, best)
    assert not _model_holds(before, best)  # the raw weights differ from the EMA in training
    assert after["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(START_LR / 2)


def _wait_for(path, process, log_path, timeout):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{path} not written within {timeout} s"
        time.sleep(0.2)


@pytest.mark.slow
def test_sigkilled_training_resumes_from_last_checkpoint_with_its_schedule(tmp_path):
    """Patience 0 and threshold 0.99 make the learning rate halve every epoch after the first,
    1e-3 · 0.5^(epoch − 1) down to end_lr = 1e-5, where training stops: the learning rates,
    epochs and schedule state show whether the restart continued or started over."""
    schedule = [
        f"{SCHEDULE}.patience=0",
        f"{SCHEDULE}.threshold=0.99",
        f"{SCHEDULE}.end_lr=1.0e-5",
        "trainer.max_epochs=50",
    ]
    first = start_nequip_train(
        *CONFIG,
        f"hydra.run.dir={tmp_path}",
        *schedule,
        f"{PAUSE}.epoch=3",
        f"{PAUSE}.batch=2",
        log_path=tmp_path / "first.log",
        python_path=True,
    )
    try:
        # the run waits before the third batch of epoch 3: killed mid-epoch
        _wait_for(tmp_path / "paused", first, tmp_path / "first.log", timeout=600)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    killed_at = checkpoint_of(tmp_path / "last.ckpt")
    resumed_from = killed_at["epoch"]
    assert resumed_from == 2
    assert schedule_state(killed_at)["start_lr"] == pytest.approx(START_LR)

    run_nequip_train(
        *CONFIG,
        f"hydra.run.dir={tmp_path}",
        *schedule,
        f"++ckpt_path={tmp_path / 'last.ckpt'}",
        python_path=True,
    )
    first_run, second_run = error_log_runs(tmp_path / "nn.err")
    assert not first_run["terminated"] and second_run["terminated"]
    resumed_epochs = [epoch for epoch, *_ in second_run["epochs"]]
    assert resumed_epochs[0] == resumed_from + 1, (resumed_from, resumed_epochs)
    assert resumed_epochs == list(range(resumed_epochs[0], resumed_epochs[-1] + 1))

    # one learning-rate sequence across the kill, ending when it reaches end_lr
    for epoch, lr, _, _ in first_run["epochs"] + second_run["epochs"]:
        assert lr == pytest.approx(START_LR * 0.5 ** max(epoch - 1, 0), rel=1e-9), epoch
    final = checkpoint_of(tmp_path / "last.ckpt")
    assert final["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1.0e-5)
    assert resumed_epochs[-1] == 7  # 1e-3 · 0.5^7 < 1e-5 · 2: clipped to end_lr after epoch 7
    state = schedule_state(final)
    # the start learning rate came from the checkpoint, not from the (reduced) restored optimizer
    assert state["start_lr"] == pytest.approx(START_LR)
    assert state["best_loss"] <= schedule_state(killed_at)["best_loss"]
