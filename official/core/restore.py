"""A trained model rebuilt from a training model_dir: its config.json and a checkpoint.

Evaluation, prediction and export (official/core/inference.py, export.py) start here; the
trainer restores its own state (official/core/train_lib.py).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os

import keras
import tensorflow as tf

from networks import registry
from official.core.config import CONFIG_FILE, read_config
from official.modeling import ema


def build_inference_model(config: dict) -> keras.Model:
    """The trained architecture from a resolved config (config.json, old or new), in float32
    (fastest and exact on CPU; mixed-precision variables are float32 anyway, so the weights
    load unchanged)."""
    return registry.build_model(registry.spec_from_config(config))


def load_model_from_dir(model_dir: str, checkpoint: str | None = None
                        ) -> tuple[keras.Model, dict]:
    """Rebuild the model of a training model_dir from its config.json and a checkpoint.

    Args:
      model_dir: a trainer --model_dir (holds config.json and checkpoints).
      checkpoint: a checkpoint prefix (".../ckpt-400", or "ckpt-400" inside model_dir; see
        resolve_checkpoint); None for the latest.

    Returns:
      (float32 keras.Model with the trained weights, the resolved config dict).

    Raises:
      FileNotFoundError: no config.json or no checkpoint.
    """
    config = read_config(model_dir)
    checkpoint = resolve_checkpoint(model_dir, checkpoint)
    _check_checkpoint_is_of(checkpoint, model_dir, config)
    model = build_inference_model(config)
    # Only the model is needed: the optimizer slots and step in the file are left unread.
    failure, damaged = None, False
    # A restore that fails half way leaves a restore in progress, never told to expect a
    # partial one: deleted (with the exception), it logged a warning per unread value, 112
    # lines after the one error line. Deleted here, quietly.
    with tensorflow_logs_at_least(logging.ERROR):
        try:
            status = tf.train.Checkpoint(model=model).restore(checkpoint).expect_partial()
            status.assert_existing_objects_matched()
        except (tf.errors.DataLossError, IndexError) as error:
            # Corrupt bytes, or a file cut short ("Read less bytes than requested", an
            # IndexError): the file's fault, not the network's.
            failure, damaged = first_line(error), True
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            failure = first_line(error)
        if failure is not None:
            del model  # it holds the restore in progress
            gc.collect()
    if damaged:
        raise ValueError(f"{checkpoint}: damaged checkpoint ({failure})")
    if failure is not None:
        raise ValueError(f"{checkpoint}: does not fit the network in {model_dir}'s "
                         f"{CONFIG_FILE} ({failure})")
    if config.get("ema_decay"):
        ema.restore_average(model, checkpoint)  # what the run evaluated and exported
    return model, config


def resolve_checkpoint(model_dir: str, checkpoint: str | None = None) -> str:
    """The checkpoint prefix to restore: ``checkpoint`` as given (a path), else the same name
    inside ``model_dir`` (``--checkpoint=ckpt-400`` next to ``--model=runs/a``), else, when
    None, model_dir's latest.

    Raises:
      FileNotFoundError: model_dir holds no checkpoint, or ``checkpoint`` is in neither place
        (both named).
    """
    if not checkpoint:
        latest = tf.train.latest_checkpoint(model_dir)
        if not latest:
            raise FileNotFoundError(f"{model_dir}: no checkpoint found")
        return latest
    candidates = [checkpoint]
    inside = os.path.join(model_dir, checkpoint)  # an absolute checkpoint stays itself
    if os.path.normpath(inside) != os.path.normpath(checkpoint):
        candidates.append(inside)
    for candidate in candidates:
        if tf.io.gfile.exists(candidate + ".index"):
            return candidate
    looked = " and ".join(f"{candidate}.index" for candidate in candidates)
    # The trainer keeps only the last --keep_checkpoints: say which an evaluation can still use.
    state = tf.train.get_checkpoint_state(model_dir)
    kept = [os.path.basename(path) for path in state.all_model_checkpoint_paths] if state else []
    kept_note = f"; {model_dir} keeps {', '.join(kept)}" if kept else ""
    raise FileNotFoundError(f"{checkpoint}: no such checkpoint (looked for {looked}){kept_note}")


def first_line(error: Exception) -> str:
    """The first line of a TensorFlow or Keras error (theirs run to dozens), or its type."""
    text = str(getattr(error, "message", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _check_checkpoint_is_of(checkpoint: str, model_dir: str, config: dict) -> None:
    """A checkpoint from another training folder is served under model_dir's class names: it
    must come from a run of the same network and classes, or its outputs get the wrong names."""
    folder = os.path.dirname(os.path.abspath(checkpoint))
    if folder == os.path.abspath(model_dir) or not os.path.isfile(
            os.path.join(folder, CONFIG_FILE)):  # (config.json is read locally everywhere)
        return
    other = read_config(folder)
    # What shapes the weights: the same network at another image_size or data_format fits.
    shape = lambda spec: {key: value for key, value in spec.to_dict().items()  # noqa: E731
                          if key not in ("image_size", "data_format")}
    for what, mine, theirs in (
            ("class names", config.get("class_names"), other.get("class_names")),
            ("network", shape(registry.spec_from_config(config)),
             shape(registry.spec_from_config(other)))):
        if mine != theirs:
            raise ValueError(f"{checkpoint}: trained in {folder} with other {what} ({theirs}) "
                             f"than {model_dir} ({mine}); use {folder} itself as the model")



@contextlib.contextmanager
def tensorflow_logs_at_least(level: int):
    """TensorFlow's Python loggers (absl's and "tensorflow") show only `level` and above."""
    loggers = [logging.getLogger(name) for name in ("absl", "tensorflow")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), level))
    try:
        yield
    finally:
        for logger, level_before in zip(loggers, levels):
            logger.setLevel(level_before)
