"""--train_budget_seconds when the steps run faster than timed: the deadline lengthens the run
once, at the loop's latest speed, and the rest of the schedule is stretched to its new end
(a Slim schedule's per-epoch decays are not); a resumed run keeps the stretch."""

from __future__ import annotations

import json

import pytest
import tensorflow as tf

from networks.resnet import train_steps
from networks.slim import nets, slim_train
from official.core import budget, train_lib
from official.modeling.stretchable import Stretchable
from official.utils.logs import hooks as hooks_lib
from tests.test_budget import ONE_DEVICE, FakeClock, StepsTake, _config, _scalars, _train
from tests.trainer_fixtures import tiny_dataset


def test_deadline_lengthens_once_at_the_latest_loops_speed(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(budget, "now", clock)
    deadline = budget.Deadline(1000.0, clock(), step_seconds=10.0, min_steps=10,
                               strategy=ONE_DEVICE, lengthen_at=50, max_steps=180)
    for seconds in (100.0, 60.0, 50.0):  # 10-step loops, faster and faster
        clock.seconds += seconds
        deadline.observe(10, seconds)
    assert deadline.lengthened(40, 90) == 90  # before lengthen_at: the plan
    # Two loops timed: the first loop (tracing) is never counted, and 3 are needed.
    assert deadline.lengthened(50, 90) == 90 and deadline.lengthen_at == 50
    clock.seconds += 40.0
    deadline.observe(10, 40.0)
    # 250 s used, 750 s left at the last 3 loops' 5 s a step: 150 more steps, but at most
    # max_steps, 180.
    assert deadline.lengthened(50, 90) == 180
    deadline.max_steps = 1000
    assert deadline.lengthened(60, 90) == 90  # once only
    deadline.lengthen_at = 50
    for _ in range(3):  # slower than planned: never shorter (the deadline cuts)
        clock.seconds += 200.0
        deadline.observe(10, 200.0)
    assert deadline.lengthened(80, 90) == 90  # 150 s left fit 7 steps at 20 s
    resumed = budget.Deadline(1000.0, clock(), step_seconds=1.0, min_steps=10,
                              strategy=ONE_DEVICE, max_steps=1000)
    resumed.observe(10, 1.0)
    assert resumed.lengthened(60, 90) == 90  # lengthen_at None: never


def _timed_at_100_seconds_stepping_at_60(monkeypatch, stop_at: int | None = None) -> StepsTake:
    """The budget's timing says 100 s a step, the steps then take 60 s on the fake clock; 3
    steps timed are enough to lengthen a run. Returns the hook that moves the clock."""
    monkeypatch.setattr(budget, "LENGTHEN_TIMED_STEPS", 3)
    clock = FakeClock()
    monkeypatch.setattr(budget, "now", clock)
    monkeypatch.setattr(budget, "calibrate",
                        lambda *args: budget.Calibration(100.0, 0.0, 20))
    hook = StepsTake(clock, 60.0, stop_at=stop_at)
    monkeypatch.setattr(hooks_lib, "get_train_hooks", lambda *args, **kwargs: [hook])
    return hook


def test_a_run_faster_than_timed_is_lengthened_halfway_and_resumes_stretched(
        tmp_path, monkeypatch):
    """Timed at 100 s a step, 550 s fit 5 steps; the steps then take 60 s. Past halfway
    (step 2, one epoch) with 3 loops of 1 step timed after the first (step 4; 3 steps are
    enough here), 310 s are left: 5 more steps, 9 in all, the cosine's rest stretched over
    them. Killed after step 6, the run resumes with the stretched schedule and ends at 9."""
    data = tiny_dataset(tmp_path / "data")
    hook = _timed_at_100_seconds_stepping_at_60(monkeypatch, stop_at=6)
    model_dir = tmp_path / "model"
    config = _config(data, model_dir, train_budget_seconds=550.0, lr_schedule="cosine",
                     checkpoint_every_steps=1)
    with pytest.raises(KeyboardInterrupt):
        _train(config)
    entry = json.loads((model_dir / "config.json").read_text())["budget"]
    assert (entry["planned_steps"], entry["lengthened_at_step"], entry["train_steps"],
            entry["epochs"]) == (5, 4, 9, 4.5)
    # The interrupt after step 6 saves it (checkpointing.saved_when_interrupted).
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-6")

    hook.stop_at = None
    result = _train(config)
    assert (result.resumed_from_step, result.step, result.stopped_by, result.budget_epochs) == (
        6, 9, "train_budget_seconds", 4.5)
    assert json.loads((model_dir / "config.json").read_text())["budget"] == entry
    expected = Stretchable(
        train_steps.learning_rate_schedule(config.schedule_spec(2, train_steps=5)))
    expected.stretch(4, 9)
    events = _scalars(model_dir / "train", "learning_rate")
    assert sorted(events) == list(range(1, 10))
    for step, value in events.items():
        assert value == pytest.approx(float(expected(step - 1)), rel=1e-5, abs=1e-9)
    planned = train_steps.learning_rate_schedule(config.schedule_spec(2, train_steps=5))
    assert events[5] == pytest.approx(float(planned(4)), rel=1e-5)  # before the stretch
    assert events[6] > float(planned(5))
    assert float(expected(9)) == pytest.approx(0.0, abs=1e-7) and events[9] > 1e-6


def test_a_slim_schedule_is_not_stretched_when_the_run_is_lengthened(tmp_path, monkeypatch):
    """Slim's decays count epochs, not the run: lengthened as above (5 -> 9 steps), its
    learning rates stay the schedule's own, step for step."""
    data = tiny_dataset(tmp_path / "data")
    _timed_at_100_seconds_stepping_at_60(monkeypatch)
    model_dir = tmp_path / "model"
    network = slim_train.SlimNetwork(slim_train.SlimConfig(
        model_name="mobilenet_v3_small", learning_rate=0.1, num_epochs_per_decay=1.0,
        learning_rate_decay_factor=0.5))
    config = _config(data, model_dir, train_budget_seconds=550.0,
                     image_size=nets.NETWORKS["mobilenet_v3_small"].min_image_size)
    result = train_lib.train(config, ONE_DEVICE, network)
    entry = json.loads((model_dir / "config.json").read_text())["budget"]
    assert (entry["planned_steps"], entry["lengthened_at_step"], entry["train_steps"]) == (
        5, 4, 9)
    assert (result.step, result.stopped_by) == (9, "train_budget_seconds")
    events = _scalars(model_dir / "train", "learning_rate")
    assert sorted(events) == list(range(1, 10))
    for step, value in events.items():  # halved every epoch (2 steps), as planned
        assert value == pytest.approx(0.1 * 0.5 ** ((step - 1) // 2), rel=1e-5)
