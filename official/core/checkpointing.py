"""Saving the training's checkpoints: after each cycle, every --checkpoint_every_steps, and at
the step reached when a Ctrl-C or SIGTERM stops the run (official/core/train_lib.py).

A checkpoint the file system refuses (a full disk, a read-only folder) is one OSError naming
the folder and the last checkpoint saved, and leaves no partial ``ckpt-N_temp`` folder behind
(it kept the disk full, and TensorFlow's own error was an 80-line traceback).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable

import tensorflow as tf
from absl import logging

from official.core import export as export_lib


def save(manager: tf.train.CheckpointManager, step: int) -> None:
    """A checkpoint of ``step`` in the manager's folder."""
    try:
        manager.save(checkpoint_number=step)
    except tf.errors.OpError as error:
        failure = export_lib.storage_error(error, manager.directory)
        if failure is None:
            raise
        shutil.rmtree(os.path.join(manager.directory, f"ckpt-{step}_temp"), ignore_errors=True)
        raise OSError(f"{manager.directory}: cannot save the checkpoint of step {step}: "
                      f"{failure.strerror} (the last one saved: "
                      f"{manager.latest_checkpoint or 'none'})") from None


@contextlib.contextmanager
def saved_when_interrupted(manager: tf.train.CheckpointManager, step: tf.Variable, *,
                           enabled: bool, consistent: Callable[[], bool] = lambda: True):
    """On Ctrl-C or SIGTERM (cli.Terminated, a KeyboardInterrupt) inside the block, saves a
    checkpoint at the step reached unless the latest one is of that step, then re-raises.

    Python raises the interrupt between TensorFlow calls, so the weights, optimizer and step
    are those of one finished step, unless the model's weights were being swapped at that
    moment (the weight average in for a validation and back): ``consistent()`` says whether
    they are the training's own, and if not nothing is saved. Not with several workers
    (``enabled``): a save is collective there, and the others are not stopping.
    """
    try:
        yield
    except KeyboardInterrupt:
        reached = int(step.numpy())
        latest = manager.latest_checkpoint
        if not (enabled and reached) or (latest and int(latest.rsplit("-", 1)[1]) == reached):
            raise
        if consistent():
            save(manager, reached)
            logging.warning("interrupted: saved a checkpoint at step %d", reached)
        else:
            logging.warning("interrupted while the weight average was swapped into the model: "
                            "no checkpoint saved at step %d (the last one: %s)", reached,
                            latest or "none")
        raise
