"""What a training run writes for the user to read afterwards (hooks' log lines, TensorBoard
events) and what reads it back (official/utils/logs/summaries.py)."""

from __future__ import annotations

import time

import pytest
import tensorflow as tf

from networks.resnet import train_steps
from official.core import steps, train_lib
from official.core.config import TrainConfig
from official.utils.logs import hooks as hooks_lib
from tests.trainer_fixtures import tiny_dataset

ONE_DEVICE = tf.distribute.OneDeviceStrategy("/cpu:0")


class Recorder(hooks_lib.Hook):
    def __init__(self):
        self.metrics = []

    def after_step(self, step, metrics):
        self.metrics.append((step, dict(metrics)))


def test_examples_per_second_hook_counts_the_train_calls_time_not_the_validations(
        tmp_path, monkeypatch):
    """2 steps an epoch, validated after each; every validation takes 100 s more on the
    clock. The hook logged examples over the wall clock since its last line, validations
    included: 0.16 examples/s where the steps ran at hundreds (the examples_per_second scalar
    and the final line said so)."""
    offset = [0.0]
    clock = time.perf_counter
    monkeypatch.setattr(time, "perf_counter", lambda: clock() + offset[0])
    evaluate = steps.evaluate

    def slow_evaluate(*args):
        offset[0] += 100.0
        return evaluate(*args)

    monkeypatch.setattr(steps, "evaluate", slow_evaluate)
    speed, recorder = hooks_lib.ExamplesPerSecondHook(every_n_steps=2), Recorder()
    monkeypatch.setattr(hooks_lib, "get_train_hooks", lambda *args, **kwargs: [speed, recorder])
    config = TrainConfig(model_dir=str(tmp_path / "model"),
                         data_dir=str(tiny_dataset(tmp_path / "data")), image_size=32,
                         batch_size=8, train_epochs=3, num_parallel_calls=2, seed=1,
                         checkpoint_every_steps=0)
    train_lib.train(config, ONE_DEVICE,
                    train_steps.ResNetNetwork(resnet_size=18, small_input=False))
    # The last line covers steps 5 and 6 (after the warm-up calls and step 4's validation).
    window = [metrics for step, metrics in recorder.metrics if step in (5, 6)]
    assert speed.examples_per_second == pytest.approx(
        sum(m["examples"] for m in window) / sum(m["seconds"] for m in window))
    for _, metrics in recorder.metrics:  # the seconds are those of the scalar's
        assert metrics["examples"] / metrics["seconds"] == pytest.approx(
            metrics["examples_per_second"])
    assert speed.examples_per_second > 1.0
