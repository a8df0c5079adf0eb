"""--train_budget_seconds: whole epochs that fit, fixed at the start, kept on resume."""

from __future__ import annotations

import json

import pytest
import tensorflow as tf

from networks.resnet import train_steps
from official.core import budget, train_lib
from official.core.config import TrainConfig
from tests.trainer_fixtures import tiny_dataset

ONE_DEVICE = tf.distribute.OneDeviceStrategy("/cpu:0")


def _config(data_dir, model_dir, **overrides) -> TrainConfig:
    # 16 training examples / batch 8 = 2 steps per epoch.
    settings = dict(data_dir=str(data_dir), model_dir=str(model_dir), image_size=32,
                    batch_size=8, train_epochs=6, epochs_between_evals=6, hooks=(),
                    num_parallel_calls=2, seed=1, checkpoint_every_steps=0)
    settings.update(overrides)
    return TrainConfig(**settings)


def _train(config: TrainConfig):
    return train_lib.train(config, ONE_DEVICE,
                           train_steps.ResNetNetwork(resnet_size=18, small_input=False))


def test_plan_takes_the_whole_epochs_left_after_start_up():
    calibration = budget.Calibration(step_seconds=0.5, startup_seconds=4.0, timed_steps=20)
    # 10 steps per epoch = 5 s an epoch; 60 s - 10 s elapsed - 4 s start-up = 46 s: 9.2 epochs.
    plan = budget.plan(60.0, 10.0, calibration, steps_per_epoch=10, max_epochs=100)
    assert plan.train_epochs == 9
    assert plan.epochs_that_fit == pytest.approx(9.2)
    assert plan.estimated_seconds == pytest.approx(10 + 4 + 45)
    assert budget.plan(60.0, 10.0, calibration, 10, max_epochs=3).train_epochs == 3
    # Less than one epoch left (or none at all): one epoch, and the plan says how little fit.
    short = budget.plan(12.0, 10.0, calibration, 10, max_epochs=100)
    assert (short.train_epochs, short.epochs_that_fit) == (1, 0.0)


def test_budget_sets_the_run_length_and_a_resumed_run_keeps_it(tmp_path, monkeypatch):
    data = tiny_dataset(tmp_path / "data")
    measured = []

    def fake_calibrate(train_fn, iterator, steps_per_loop):
        measured.append(steps_per_loop)
        # 100 s a step, 2 steps an epoch: 200 s an epoch, so 450 s of budget (less the
        # seconds this test has taken) fit 2 epochs.
        return budget.Calibration(step_seconds=100.0, startup_seconds=0.0, timed_steps=20)

    monkeypatch.setattr(budget, "calibrate", fake_calibrate)
    result = _train(_config(data, tmp_path / "model", train_budget_seconds=450.0))
    assert measured == [1]  # --steps_per_loop=1
    assert (result.step, result.stopped_by, result.budget_epochs) == (4, "train_epochs", 2)
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["train_epochs"] == 2 and saved["train_budget_seconds"] == 450.0
    assert saved["budget"]["max_train_epochs"] == 6
    assert 2 < saved["budget"]["epochs_that_fit"] <= 2.25  # 450 s less the elapsed
    line = train_lib.summary_line(result, eval_split="validation", model_dir="m", replicas=1)
    assert line.endswith("2 epoch(s) in the --train_budget_seconds budget")

    # Resumed with a far bigger budget: the run keeps its length (no second measurement).
    again = _train(_config(data, tmp_path / "model", train_budget_seconds=1e6))
    assert measured == [1]
    assert (again.step, again.resumed_from_step, again.budget_epochs) == (4, 4, 2)


def test_real_calibration_times_the_step_and_counts_its_steps(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    # A budget this small fits less than an epoch: one epoch is trained anyway.
    result = _train(_config(data, tmp_path / "model", train_budget_seconds=1.0,
                            steps_per_loop=3, ema_decay=0.9))
    assert (result.step, result.budget_epochs) == (2, 1)
    entry = json.loads((tmp_path / "model" / "config.json").read_text())["budget"]
    assert entry["timed_steps"] == 21  # 7 calls of --steps_per_loop=3: at least 20 steps
    assert 0 < entry["step_seconds"] < 60 and entry["startup_seconds"] >= 0
    assert entry["epochs_that_fit"] == 0.0


def test_budget_cannot_be_added_to_a_run_started_without_one(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    _train(_config(data, tmp_path / "model", train_epochs=1, epochs_between_evals=1))
    with pytest.raises(ValueError, match=r"was started without --train_budget_seconds"):
        _train(_config(data, tmp_path / "model", train_budget_seconds=100.0))
    with pytest.raises(ValueError, match=r"--train_budget_seconds=0: must be positive"):
        _config(data, tmp_path / "other", train_budget_seconds=0)
