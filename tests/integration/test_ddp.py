"""DDP: nequip-train on two CPU processes (gloo) trains as one process with the same global batch.

Under DDP Lightning always draws the training frames through its DistributedSampler (shuffled
with nequip's fixed seed, whatever the loader's ``shuffle``); rank r takes every second frame of
one permutation. The one-process reference therefore runs with ``strategy: ddp, devices: 1``:
the same sampler on one rank, so that its batches of B frames are exactly the unions of the two
ranks' batches of B/2. The two runs then differ only in round-off (sums split over two ranks),
and their errors can be compared much more tightly than runs with different frame orders.
"""

import csv

import pytest
import torch

from ..utils import checkpoint_of, error_log_runs, run_nequip_train, schedule_state

# a deadlocked rank fails the test after this many seconds instead of hanging CI
TIMEOUT = 300.0

# the CH4 tutorial config with a small model, 64 training and 32 validation frames (16 per rank,
# so the sampler repeats none), and a fast EMA so that 8 epochs (64 steps) visibly train
CH4_SMALL = [
    "configs/reann_ch4.yaml",
    "run=[train]",
    "trainer.max_epochs=8",
    "data.split_dataset.train=64",
    "data.split_dataset.val=32",
    "data.split_dataset.test=404",
    "training_module.ema_decay=0.5",
    "training_module.model.num_gaussians=4",
    "training_module.model.energy_network.hidden=[16]",
    "training_module.model.coefficient_network.hidden=[16]",
]
ERRORS = ["val0_epoch/per_atom_energy_rmse_meV", "val0_epoch/forces_rmse_meV_per_A"]

# the tiny REANN-schedule config (50 training, 10 validation frames, float64 model)
SCHEDULE_TINY = ["-cd", "tests/configs", "-cn", "reann_schedule_tiny"]
POISON = "trainer.callbacks.3"  # tests.schedule_fixtures.PoisonWeights


def _processes(run_dir, num_processes: int, *args: str):
    """``nequip-train ARGS`` with Lightning's DDP strategy on ``num_processes`` CPU processes,
    writing to ``run_dir``; asserts that exactly that many ranks joined."""
    result = run_nequip_train(
        *args,
        f"hydra.run.dir={run_dir}",
        f"++trainer.devices={num_processes}",
        "++trainer.strategy=ddp",
        python_path=True,
        timeout=TIMEOUT,
    )
    report = result.stdout + result.stderr
    members = {f"MEMBER: {rank + 1}/{num_processes}" for rank in range(num_processes)}
    assert all(member in report for member in members), report[-3000:]
    assert f"Starting with {num_processes} processes" in report, report[-3000:]
    return result


def _validation_errors(run_dir):
    """Every validation's errors from the run's metrics.csv: ``{name: [epoch 0, epoch 1, …]}``."""
    with open(run_dir / "metrics" / "version_0" / "metrics.csv") as table:
        rows = [row for row in csv.DictReader(table) if row[ERRORS[0]]]
    return {name: [float(row[name]) for row in rows] for name in ERRORS}


@pytest.mark.slow
def test_two_ranks_train_the_ch4_config_as_one_process_with_the_global_batch(tmp_path):
    _processes(tmp_path / "one", 1, *CH4_SMALL, "data.train_dataloader.batch_size=8")
    _processes(tmp_path / "two", 2, *CH4_SMALL, "data.train_dataloader.batch_size=4")
    assert (tmp_path / "two" / "train_ddp_process_1.log").is_file()  # rank 1's own log

    one = _validation_errors(tmp_path / "one")
    two = _validation_errors(tmp_path / "two")
    assert len(one[ERRORS[0]]) == len(two[ERRORS[0]]) == 8
    # the runs trained: the energy error falls several-fold
    assert one[ERRORS[0]][-1] < 0.4 * one[ERRORS[0]][0]
    # the two runs differ by round-off only (float32: ~1e-7 relative); rtol 1e-4 leaves ample
    # room, yet sits far below what a real difference in training gives: a one-process run with
    # nequip's frame order, or two ranks with the whole batch each, end several percent away
    for name in ERRORS:
        torch.testing.assert_close(
            torch.tensor(two[name]), torch.tensor(one[name]), rtol=1e-4, atol=0.0, msg=name
        )


@pytest.mark.slow
def test_reann_schedule_rolls_back_and_logs_once_on_two_ranks(tmp_path):
    """ReannTrainingSchedule and ReannErrorLog under DDP: NaN weights in epoch 2 roll both ranks
    back to the same best weights at half the learning rate, rank 0 alone writes nn.err, and the
    run matches one process. ``tests.schedule_fixtures.AssertRanksAgree`` in the config fails the
    run if the ranks ever differ in learning rate, stop flag or weights after an epoch."""
    poisoned = [f"{POISON}.epoch=2", f"{POISON}.batch=1", "trainer.max_epochs=4"]
    _processes(
        tmp_path / "one", 1, *SCHEDULE_TINY, *poisoned, "data.train_dataloader.batch_size=10"
    )
    _processes(tmp_path / "two", 2, *SCHEDULE_TINY, *poisoned, "data.train_dataloader.batch_size=5")

    (one,) = error_log_runs(tmp_path / "one" / "nn.err")
    (two,) = error_log_runs(tmp_path / "two" / "nn.err")  # one header: rank 1 wrote nothing
    assert two["terminated"] and [epoch for epoch, *_ in two["epochs"]] == [0, 1, 2, 3]
    learning_rates = [lr for _, lr, _, _ in two["epochs"]]
    assert learning_rates == pytest.approx([1.0e-3, 1.0e-3, 1.0e-3, 5.0e-4])
    # nn.err prints 5 decimals; NaN (the poisoned epoch) compares equal to NaN
    torch.testing.assert_close(
        torch.tensor([train + val for _, _, train, val in two["epochs"]]),
        torch.tensor([train + val for _, _, train, val in one["epochs"]]),
        rtol=0.0,
        atol=1.0e-5,
        equal_nan=True,
    )

    # the final weights and schedule state agree to round-off of the float64 model (~1e-14
    # relative, best loss bitwise equal). One parameter only agrees to ~1e-10: the energy network's
    # output bias, which cancels in E_i = NN(ρ_i) − NN(0): its gradient is round-off only, different
    # on one and two ranks, and Adam's steps on it drift apart by ~1e-11 without changing any
    # prediction. Hence atol 1e-9
    final = {name: checkpoint_of(tmp_path / name / "last.ckpt") for name in ("one", "two")}
    schedules = {name: schedule_state(checkpoint) for name, checkpoint in final.items()}
    assert schedules["two"]["num_rollbacks"] == schedules["one"]["num_rollbacks"] == 1
    assert schedules["two"]["best_loss"] == pytest.approx(schedules["one"]["best_loss"], rel=1e-9)
    differing = [
        f"{key}: {(final['two']['state_dict'][key] - weight).abs().max():.2e}"
        for key, weight in final["one"]["state_dict"].items()
        if isinstance(weight, torch.Tensor)
        and weight.is_floating_point()
        and not torch.allclose(final["two"]["state_dict"][key], weight, rtol=1e-9, atol=1e-9)
    ]
    assert not differing, differing
