"""Saving the training's checkpoints: after each cycle, every --checkpoint_every_steps, and at
the step reached when a Ctrl-C or SIGTERM stops the run (official/core/train_lib.py).

A checkpoint the file system refuses (a full disk, a read-only folder) is one OSError naming
the folder and the last checkpoint saved, and leaves no partial ``ckpt-N_temp`` folder behind
(it kept the disk full, and TensorFlow's own error was an 80-line traceback).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable

import tensorflow as tf
from absl import logging

from official.core import restore
from official.core.model_paths import checkpoint_step
from official.utils import files


# A non-chief worker's checkpoints and summaries go to a temporary folder of this name, its pid
# and its host (only the chief writes to model_dir); it is removed when the run ends.
WORKER_DIR_PREFIX = "trainer_worker_"


def worker_folder() -> str:
    """A new private folder for a non-chief worker, after removing those of workers killed on
    this machine (a SIGKILL or the out-of-memory killer: each holds a whole checkpoint). A
    folder of another host (a temporary folder shared between machines) is left: a pid says
    nothing of a process elsewhere."""
    parent, host = tempfile.gettempdir(), socket.gethostname()
    with contextlib.suppress(OSError):
        for name in os.listdir(parent):
            pid, at, rest = name[len(WORKER_DIR_PREFIX):].partition("@")
            if (name.startswith(WORKER_DIR_PREFIX) and at and pid.isdigit()
                    and rest.startswith(f"{host}_") and files.process_gone(int(pid))):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{WORKER_DIR_PREFIX}{os.getpid()}@{host}_")


def save(manager: tf.train.CheckpointManager, step: int) -> None:
    """A checkpoint of ``step`` in the manager's folder."""
    try:
        manager.save(checkpoint_number=step)
    except tf.errors.OpError as error:
        failure = files.storage_error(error, manager.directory)
        if failure is None:
            raise
        shutil.rmtree(os.path.join(manager.directory, f"ckpt-{step}_temp"), ignore_errors=True)
        refused = OSError(f"{manager.directory}: cannot save the checkpoint of step {step}: "
                          f"{failure.strerror} (the last one saved: "
                          f"{manager.latest_checkpoint or 'none'})")
        refused.errno = failure.errno  # a storage error to the programs (cli.expected)
        raise refused from None


def restore_latest(manager: tf.train.CheckpointManager, checkpoint: tf.train.Checkpoint) -> None:
    """Restores the manager's latest checkpoint, if any, into ``checkpoint`` (a training
    state's, with its ``step``).

    Raises:
      ValueError: the checkpoint is damaged (named, with how to resume from the one before).
    """
    latest = manager.latest_checkpoint
    if not latest:
        return
    try:
        checkpoint.restore(latest).assert_existing_objects_matched()
    except (tf.errors.DataLossError, IndexError) as error:  # IndexError: a file cut short
        raise ValueError(f"{latest}: damaged checkpoint ({restore.first_line(error)}); remove "
                         f"it (and its entry in {manager.directory}/checkpoint) to resume from "
                         f"the one before") from None
    logging.info("resumed from %s (step %d)", latest, int(checkpoint.step.numpy()))


def remove_leftovers(model_dir: str) -> list[str]:
    """Removes what a killed run left in ``model_dir`` (returned, by name): a checkpoint's
    temporary folder (TensorFlow writes ``ckpt-N_temp`` and merges it into ``ckpt-N``; a
    ResNet-50's weights and momentum alone are ~200 MB) and a file written in place
    (``files.written_atomically``) whose process is gone. Call it only while holding the
    folder (``files.held``): then no other training is saving into it."""
    removed = []
    for name in sorted(os.listdir(model_dir)):
        path = os.path.join(model_dir, name)
        if re.fullmatch(r"ckpt-\d+_temp", name) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif files.killed_runs_temporary(name):
            with contextlib.suppress(OSError):
                os.remove(path)
        else:
            continue
        removed.append(name)
    return removed


@contextlib.contextmanager
def saved_when_interrupted(manager: tf.train.CheckpointManager, step: tf.Variable, *,
                           enabled: bool,
                           unsaveable: Callable[[], str | None] = lambda: None):
    """On Ctrl-C or SIGTERM (cli.Terminated, a KeyboardInterrupt) inside the block, saves a
    checkpoint at the step reached unless the latest one is of that step, then re-raises.

    Python raises the interrupt between TensorFlow calls, so the weights, optimizer and step
    are those of one finished step, but not always weights to keep: ``unsaveable()`` says why
    not (e.g. the weight average half swapped in for a validation, or a step that diverged,
    raised before the loop's own check of the loss), and then nothing is saved. Not with
    several workers (``enabled``): a save is collective there, and the others are not
    stopping.
    """
    try:
        yield
    except KeyboardInterrupt:
        reached = int(step.numpy())
        latest = manager.latest_checkpoint
        if not (enabled and reached) or (latest and checkpoint_step(latest) == reached):
            raise
        if reason := unsaveable():
            logging.warning("interrupted %s: no checkpoint saved at step %d (the last one: %s)",
                            reason, reached, latest or "none")
        else:
            save(manager, reached)
            logging.warning("interrupted: saved a checkpoint at step %d", reached)
        raise


def why_unsaveable(model, weight_average=None) -> str | None:
    """Why ``model``'s weights are not the training's to keep, or None: the weight average
    (official/modeling/ema.py) swapped in or half swapped, or weights a diverged step left
    NaN or Inf."""
    if weight_average is not None and weight_average.swapped:
        return "while the weight average was swapped into the model"
    if not all(bool(tf.reduce_all(tf.math.is_finite(weight.value)))
               for weight in model.weights if weight.dtype.startswith("float")):
        return "after the loss diverged (weights not finite)"
    return None
