"""Ctrl-C or SIGTERM inside a training cycle keeps the steps trained since the last checkpoint;
a Ctrl-C and a SIGKILL of the real program (dicom_main.py) leave checkpoints it resumes from.

Checkpoints are otherwise saved only after a cycle's validation (and every
--checkpoint_every_steps): an interrupt in the middle of a cycle, or during its validation,
lost every step of it. Python raises the interrupt between TensorFlow calls; these tests raise
it at those points (right after a train-function call returns, inside the validation)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from official.core import steps, train_lib
from official.core.config import TrainConfig
from networks.resnet import train_steps
from tests.trainer_fixtures import (DICOM_MAIN, FAST_FLAGS, REPO_ROOT, run_trainer, tiny_dataset,
                                    trainer_env)

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



def _event_steps(folder) -> dict[str, list[int]]:
    """{tag: the steps of its points, in the order written} over every event file in folder:
    what the files hold, before TensorBoard drops any point."""
    points = {}
    for path in sorted(folder.glob("events.out.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                points.setdefault(value.tag, []).append(event.step)
    return points


def _event_values(folder, step: int) -> dict[str, float]:
    values = {}
    for path in folder.glob("events.out.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            if event.step == step:
                for value in event.summary.value:
                    values[value.tag] = float(tf.make_ndarray(value.tensor))
    return values


def test_the_interrupted_calls_point_is_drawn_at_its_checkpoint_and_the_rerun_goes_on(
        tmp_path, monkeypatch):
    """The interrupt comes as a train call returns: the call's checkpoint was saved, but not
    its TensorBoard point (the loop drew a point from what the call returned), so the curve
    had a gap at the step the resumed run starts after. It is drawn from the call's sums
    (steps.LastCall) at that step; the resumed run's points follow, none twice."""
    real = steps.make_train_function
    returned = []

    def stopping_after_two_calls(*args, **kwargs):
        train_fn = real(*args, **kwargs)

        def run(iterator, num_steps):
            totals = train_fn(iterator, num_steps)
            returned.append({key: float(value) for key, value in totals.items()})
            if len(returned) == 2:
                raise KeyboardInterrupt  # as a Ctrl-C arrives once the call has returned
            return totals
        return run

    monkeypatch.setattr(steps, "make_train_function", stopping_after_two_calls)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, steps_per_loop=2)  # calls of 2 steps: points at 2, 4 and 6
    train = tmp_path / "model" / "train"
    assert _checkpoint_steps(tmp_path / "model") == [4]
    drawn = _event_steps(train)
    assert drawn["loss"] == drawn["accuracy"] == drawn["learning_rate"] == [2, 4]
    assert drawn["examples_per_second"] == [2]  # the interrupted call's time is not known
    at_4 = _event_values(train, 4)
    assert at_4["loss"] == pytest.approx(returned[1]["loss"] / 2)
    assert at_4["cross_entropy"] == pytest.approx(returned[1]["cross_entropy"] / 2)
    assert at_4["accuracy"] == pytest.approx(returned[1]["correct"] / returned[1]["examples"])
    schedule = train_steps.learning_rate_schedule(
        TrainConfig(model_dir="unused", batch_size=8, train_epochs=3).schedule_spec(2))
    assert at_4["learning_rate"] == pytest.approx(float(schedule(3)))  # step 4's rate

    monkeypatch.setattr(steps, "make_train_function", real)
    result = _run(tmp_path, steps_per_loop=2)
    assert (result.resumed_from_step, result.step) == (4, 6)
    assert _event_steps(train)["loss"] == [2, 4, 6]
    assert _tensorboard_steps(train, "loss") == [2, 4, 6]


def test_an_interrupt_during_a_validation_of_the_weight_average_saves_the_trained_weights(
        tmp_path, monkeypatch):
    # The validation runs with the average swapped into the model; the checkpoint saved on the
    # interrupt must hold the training's own weights, swapped back first.
    states, seen = [], {}
    real_state = steps.training_state
    monkeypatch.setattr(steps, "training_state",
                        lambda *a, **k: states.append(real_state(*a, **k)) or states[-1])

    def interrupted(*args, **kwargs):
        seen["validated"] = [w.numpy().copy() for w in states[-1].model.weights]
        raise KeyboardInterrupt

    monkeypatch.setattr(steps, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, ema_decay=0.5)
    model = states[-1].model
    trained = [w.numpy().copy() for w in model.weights]
    assert any((a != b).any() for a, b in zip(seen["validated"], trained))  # the average
    tf.train.Checkpoint(model=model).restore(
        tf.train.latest_checkpoint(str(tmp_path / "model"))).expect_partial()
    assert all((w.numpy() == t).all() for w, t in zip(model.weights, trained))


def test_no_checkpoint_when_the_model_holds_neither_weights(tmp_path, caplog):
    from official.core import checkpointing

    step = tf.Variable(3, dtype=tf.int64)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(step=step), str(tmp_path), 3)
    with pytest.raises(KeyboardInterrupt), caplog.at_level("WARNING"):
        with checkpointing.saved_when_interrupted(manager, step, enabled=True,
                                                  unsaveable=lambda: "for a reason"):
            raise KeyboardInterrupt
    assert manager.latest_checkpoint is None
    assert "interrupted for a reason: no checkpoint saved at step 3 (the last one: none)" in (
        caplog.text)
    with pytest.raises(KeyboardInterrupt):
        with checkpointing.saved_when_interrupted(manager, step, enabled=True):
            raise KeyboardInterrupt
    assert manager.latest_checkpoint.endswith("ckpt-3")


def test_an_interrupt_after_a_diverged_step_saves_nothing(tmp_path, monkeypatch, caplog):
    # The interrupt is raised as the train call returns, before the loop checks its loss: the
    # NaN weights of that call must not become the newest checkpoint.
    real = steps.make_train_function

    def diverging_on_the_third_call(state, *args, **kwargs):
        train_fn = real(state, *args, **kwargs)
        calls = []

        def run(iterator, num_steps):
            totals = train_fn(iterator, num_steps)
            calls.append(1)
            if len(calls) == 3:
                state.model.weights[0].assign(tf.fill(state.model.weights[0].shape, float("nan")))
                raise KeyboardInterrupt
            return totals
        return run

    monkeypatch.setattr(steps, "make_train_function", diverging_on_the_third_call)
    with pytest.raises(KeyboardInterrupt), caplog.at_level("WARNING"):
        _run(tmp_path, checkpoint_every_steps=2)
    assert _checkpoint_steps(tmp_path / "model") == [2]
    # No point at step 3 either: no checkpoint holds it, the resumed run trains it again.
    assert _event_steps(tmp_path / "model" / "train")["loss"] == [1, 2]
    assert "interrupted after the loss diverged (weights not finite): no checkpoint saved at " \
           "step 3" in caplog.text


def test_a_killed_runs_leftovers_are_removed_by_the_next_training(tmp_path):
    """A SIGKILL (the out-of-memory killer, a scheduler's hard stop) during a checkpoint save
    leaves TensorFlow's ckpt-N_temp folder, and during a write in place a .tmp-PID file:
    never read, but kept for ever. The next training, holding the folder, removes them."""
    import subprocess
    import sys

    model_dir = tmp_path / "model"
    (model_dir / "ckpt-3_temp").mkdir(parents=True)
    (model_dir / "ckpt-3_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = f"config.json.tmp-{int(gone.stdout)}"
    (model_dir / dead).write_text("{")
    alive = f"metrics.json.tmp-{os.getpid()}"  # a live process's write: kept
    (model_dir / alive).write_text("{")
    _run(tmp_path, train_epochs=1, epochs_between_evals=1)
    names = sorted(path.name for path in model_dir.iterdir())
    assert "ckpt-3_temp" not in names and dead not in names, names
    assert alive in names and "ckpt-2.index" in names, names


def _tensorboard_points(folder, tag: str) -> list[tuple[int, float]]:
    """(step, wall time) of the points TensorBoard draws for ``tag`` in ``folder``: its Python
    loader (``tensorboard --load_fast=false``), which drops the points a restart orphans."""
    from tensorboard.backend.event_processing import plugin_event_accumulator as loader

    accumulator = loader.EventAccumulator(str(folder), size_guidance={loader.TENSORS: 0},
                                          purge_orphaned_data=True)
    return [(event.step, event.wall_time) for event in accumulator.Reload().Tensors(tag)]


def _tensorboard_steps(folder, tag: str) -> list[int]:
    return [step for step, _ in _tensorboard_points(folder, tag)]


def test_steps_trained_again_after_a_kill_are_drawn_once_in_tensorboard(tmp_path):
    """A kill -9 leaves the points written since the last checkpoint, and the resumed run
    trains those steps again: TensorBoard drew both runs' points at each of them."""
    settings = dict(train_epochs=2, epochs_between_evals=2, checkpoint_every_steps=2)
    _run(tmp_path, **settings)  # 4 steps: checkpoints at 2 and 4, validation at 4
    model_dir = tmp_path / "model"
    # As a kill after step 4's points and before its checkpoint leaves the folder:
    for path in model_dir.glob("ckpt-4.*"):
        path.unlink()
    (model_dir / "checkpoint").write_text('model_checkpoint_path: "ckpt-2"\n'
                                          'all_model_checkpoint_paths: "ckpt-2"\n')
    assert _tensorboard_steps(model_dir / "train", "loss") == [1, 2, 3, 4]

    resumed_at = time.time()
    result = _run(tmp_path, **settings)
    assert (result.resumed_from_step, result.step) == (2, 4)
    # Steps 1 and 2 drawn from the killed run, 3 and 4 from the resumed one.
    points = _tensorboard_points(model_dir / "train", "loss")
    assert [(step, wall_time > resumed_at) for step, wall_time in points] == [
        (1, False), (2, False), (3, True), (4, True)]
    assert [(step, wall_time > resumed_at) for step, wall_time in
            _tensorboard_points(model_dir / "eval", "accuracy")] == [(4, True)]


def test_a_max_train_steps_below_the_checkpoint_says_nothing_is_trained(tmp_path, caplog):
    _run(tmp_path, train_epochs=2, epochs_between_evals=2)  # to step 4
    with caplog.at_level("WARNING"):
        result = _run(tmp_path, train_epochs=2, epochs_between_evals=2, max_train_steps=2)
    assert (result.resumed_from_step, result.step) == (4, 4)
    assert "--max_train_steps=2 is below step 4, where" in caplog.text
    assert "nothing to train" in caplog.text


def _stop_at_checkpoint(args, model_dir, at_least: int, sig: int, stderr_path):
    """Runs the trainer until a checkpoint of step >= at_least exists, then sends `sig`."""
    with open(stderr_path, "w") as stderr:
        # A terminal's Ctrl-C reaches a process whose SIGINT is not ignored; a test runner's
        # worker may ignore it, and a child inherits that.
        process = subprocess.Popen(
            [sys.executable, *args], env=trainer_env(), cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL, stderr=stderr,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and not any(s >= at_least for s in
                                                          _checkpoint_steps(model_dir)):
                assert process.poll() is None, "trainer exited before it could be stopped"
                time.sleep(0.2)
            process.send_signal(sig)
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    return process.returncode, open(stderr_path).read()


def test_ctrl_c_and_sigkill_mid_run_resume_from_the_last_checkpoint(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    model_dir = tmp_path / "model"
    # 15 epochs x 2 steps, a checkpoint every 2 steps, evaluation only at the end.
    args = [str(DICOM_MAIN), f"--data_dir={data}", f"--model_dir={model_dir}", "-te=15",
            "-ebe=15", "-bs=8", "--checkpoint_every_steps=2", *FAST_FLAGS]
    # Ctrl-C: one line saying what is left, exit 130 (128 + SIGINT), no traceback.
    returncode, stderr = _stop_at_checkpoint(args, model_dir, 4, signal.SIGINT,
                                             tmp_path / "stderr1")
    assert returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == (
        f"dicom_main.py: error: interrupted; {model_dir} keeps the checkpoints saved so far; "
        "the same command resumes from the last one")
    interrupted_at = max(_checkpoint_steps(model_dir))
    assert 4 <= interrupted_at < 30
    # The program ends without the interpreter's teardown: every point drawn so far is on
    # disk all the same, the interrupted step's own too (the interrupt came as its call
    # returned, or later: drawn at the step the checkpoint holds).
    drawn = _tensorboard_steps(model_dir / "train", "loss")
    assert drawn == list(range(1, interrupted_at + 1)), (interrupted_at, drawn)

    # SIGKILL: nothing runs on the way out; the checkpoints are whole all the same.
    returncode, _ = _stop_at_checkpoint(args, model_dir, interrupted_at + 2, signal.SIGKILL,
                                        tmp_path / "stderr2")
    assert returncode == -signal.SIGKILL
    killed_at = max(_checkpoint_steps(model_dir))
    assert interrupted_at + 2 <= killed_at < 30

    result = run_trainer(*args[1:])
    assert result.returncode == 0, result.stderr[-2000:]
    match = re.search(r"step (\d+) \(resumed from (\d+), stopped by (\w+)\)", result.stdout)
    assert match, result.stdout
    assert (int(match[1]), int(match[2]), match[3]) == (30, killed_at, "train_epochs")
    assert max(_checkpoint_steps(model_dir)) == 30
