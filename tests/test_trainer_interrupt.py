"""Ctrl-C or SIGTERM inside a training cycle keeps the steps trained since the last checkpoint.

Checkpoints are otherwise saved only after a cycle's validation (and every
--checkpoint_every_steps): an interrupt in the middle of a cycle, or during its validation,
lost every step of it. Python raises the interrupt between TensorFlow calls; these tests raise
it at those points (right after a train-function call returns, inside the validation)."""

from __future__ import annotations

import pytest
import tensorflow as tf

from official.core import steps, train_lib
from official.core.config import TrainConfig
from networks.resnet import train_steps
from tests.trainer_fixtures import tiny_dataset

ONE_DEVICE = tf.distribute.OneDeviceStrategy("/cpu:0")


def _run(tmp_path, **overrides):
    data = tiny_dataset(tmp_path / "data")  # 16 training examples, batch 8: 2 steps an epoch
    settings = dict(data_dir=str(data), model_dir=str(tmp_path / "model"), image_size=32,
                    batch_size=8, train_epochs=3, epochs_between_evals=3, hooks=(),
                    num_parallel_calls=2, seed=1, checkpoint_every_steps=0)
    settings.update(overrides)
    return train_lib.train(TrainConfig(**settings), ONE_DEVICE,
                           train_steps.ResNetNetwork(resnet_size=18, small_input=False))


def _checkpoint_steps(model_dir) -> list[int]:
    state = tf.train.get_checkpoint_state(str(model_dir))
    return [] if state is None else sorted(
        int(path.rsplit("-", 1)[1]) for path in state.all_model_checkpoint_paths)


def test_an_interrupt_during_the_validation_keeps_the_cycle(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(steps, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path)  # one cycle of 6 steps, then its validation
    assert _checkpoint_steps(tmp_path / "model") == [6]


def test_an_interrupt_between_steps_keeps_them_and_the_rerun_resumes(tmp_path, monkeypatch):
    real = steps.make_train_function

    def stopping_after_four_calls(*args, **kwargs):
        train_fn = real(*args, **kwargs)
        calls = []

        def run(iterator, num_steps):
            totals = train_fn(iterator, num_steps)
            calls.append(1)
            if len(calls) == 4:
                raise KeyboardInterrupt  # as a Ctrl-C arrives once the call has returned
            return totals
        return run

    monkeypatch.setattr(steps, "make_train_function", stopping_after_four_calls)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path)
    assert _checkpoint_steps(tmp_path / "model") == [4]
    monkeypatch.setattr(steps, "make_train_function", real)
    result = _run(tmp_path)
    assert (result.resumed_from_step, result.step) == (4, 6)

