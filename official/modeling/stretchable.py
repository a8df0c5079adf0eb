"""A learning-rate schedule whose rest can be stretched over a longer run (pure TensorFlow):
the time budget (official/core/budget.py) lengthens a run that went faster than timed, and the
schedule laid over the planned steps must then end at the new last step."""

from __future__ import annotations

import keras
import tensorflow as tf


# Registered under "budget", where it was defined first: optimizer configs saved by earlier
# runs name it "budget>Stretchable".
@keras.saving.register_keras_serializable(package="budget")
class Stretchable(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule`, laid over the planned run (its `total_steps`), whose rest can be stretched
    over a longer run once the run has started: from step `at` on, the new run's steps map
    linearly onto the plan's remaining ones, so the rate is continuous at `at` and reaches the
    plan's last rate at the new last step. Variables, so that the traced step reads the change."""

    def __init__(self, schedule):
        self.schedule = schedule
        self.total_steps = schedule.total_steps  # the plan's (the batch-norm horizon reads it)
        self.stretched_at = tf.Variable(0.0, trainable=False, dtype=tf.float32)
        self.ratio = tf.Variable(1.0, trainable=False, dtype=tf.float32)  # identity until then

    def assign(self, planned) -> None:
        """The plan is now `planned` (a Stretchable or not: the same schedule laid over
        another run, before any stretch), through the inner schedule's own `assign`: it holds
        its steps in variables too (a schedule laid over the run's length must, so that the
        budget's timed copy can be laid over a shorter plan)."""
        planned = planned.schedule if isinstance(planned, Stretchable) else planned
        self.schedule.assign(planned)
        self.total_steps = planned.total_steps

    def stretch(self, at: int, train_steps: int) -> None:
        """The run now ends at `train_steps` (> at); its steps from `at` follow the plan's."""
        self.stretched_at.assign(float(at))
        self.ratio.assign((self.total_steps - at) / (train_steps - at))

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        return self.schedule(tf.where(step < self.stretched_at, step,
                                      self.stretched_at
                                      + (step - self.stretched_at) * self.ratio))

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule),
                "stretched_at": float(self.stretched_at.numpy()),
                "ratio": float(self.ratio.numpy())}

    @classmethod
    def from_config(cls, config):
        stretchable = cls(keras.saving.deserialize_keras_object(config["schedule"]))
        stretchable.stretched_at.assign(config["stretched_at"])
        stretchable.ratio.assign(config["ratio"])
        return stretchable
