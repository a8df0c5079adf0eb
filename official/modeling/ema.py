"""Exponential moving average of a model's weights (Polyak averaging), for evaluation and export.

The average is a shadow copy of every weight: `update` runs inside the distributed train step
after the optimizer; `swapped_in` puts the average into the model for evaluation or export and
puts the training weights back afterwards. The shadow copy is saved with the checkpoint, so a
resumed run continues the same average.

Why the whole state and not only the trainable weights: batch-norm moving statistics that
belong to the raw weights do not fit the averaged ones; averaging them too (as timm's ModelEma
does) keeps the pair consistent.
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf


def decay_at(decay: float, step: tf.Tensor) -> tf.Tensor:
    """min(decay, (1 + step) / (10 + step)): tf.train.ExponentialMovingAverage's num_updates
    rule, so a short run is not dominated by the random initial weights."""
    step = tf.cast(step, tf.float32)
    return tf.minimum(tf.constant(decay, tf.float32), (1.0 + step) / (10.0 + step))


class WeightAverage:
    """Shadow copies of `model.weights`, created in the current distribution strategy scope.

    Args:
      model: the trained model (its weights are float32 under every precision policy).
      decay: per-step decay in (0, 1), e.g. 0.999 (an average over ~1,000 steps).
    """

    def __init__(self, model: keras.Model, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"--ema_decay={decay}: must be in (0, 1), or 0 for no average")
        self.decay = float(decay)
        self.swapped = False  # see swapped_in
        self._weights = [weight for weight in model.weights if weight.dtype.startswith("float")]
        # Every replica computes the same update from the same (synchronised) weights; the
        # first replica's value is the one kept.
        self.variables = [
            tf.Variable(weight.value.read_value(), trainable=False,
                        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                        name="ema/" + weight.path.replace(":", "_"))
            for weight in self._weights]

    def update(self, step: tf.Tensor) -> None:
        """One averaging step (call in replica context, after the optimizer's update)."""
        decay = decay_at(self.decay, step)
        for average, weight in zip(self.variables, self._weights):
            value = tf.cast(weight.value, average.dtype)
            average.assign(average * decay + value * (1.0 - decay))

    def reset(self) -> None:
        """Start the average at the current weights."""
        for average, weight in zip(self.variables, self._weights):
            average.assign(weight.value)

    @contextlib.contextmanager
    def swapped_in(self):
        """The averaged weights in the model for the duration of the block. ``swapped`` is
        True from the first weight replaced until the last is back: a Ctrl-C in between
        leaves a model that is neither, which must not be saved as the training's
        (official/core/checkpointing.py)."""
        backup = [tf.identity(weight.value) for weight in self._weights]
        self.swapped = True
        try:
            for average, weight in zip(self.variables, self._weights):
                weight.assign(average)
            yield
        finally:
            for saved, weight in zip(backup, self._weights):
                weight.assign(saved)
            self.swapped = False


def averaged(weight_average: WeightAverage | None):
    """The weight average swapped into the model (--ema_decay), or the weights as they are."""
    return weight_average.swapped_in() if weight_average else contextlib.nullcontext()


def restore_average(model: keras.Model, checkpoint_path: str) -> None:
    """Load the averaged weights a training checkpoint holds (under "ema") into `model`.

    `model` must be the trained architecture (any precision): its float weights are matched
    with the checkpoint's average in order.

    Raises:
      ValueError: the checkpoint has no average of this model.
    """
    weights = [weight for weight in model.weights if weight.dtype.startswith("float")]
    averages = [tf.Variable(tf.zeros(weight.shape, "float32"), trainable=False)
                for weight in weights]
    status = tf.train.Checkpoint(ema=averages).restore(checkpoint_path).expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError as error:
        raise ValueError(f"{checkpoint_path}: holds no weight average of this model "
                         f"({str(error).splitlines()[0][:200]})") from None
    for average, weight in zip(averages, weights):
        weight.assign(average)
