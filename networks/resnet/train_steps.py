"""The ResNet's training recipe, plugged into official/core/train_lib.train: its ModelSpec
(small_input and data_format resolved here, once), the TF-official learning-rate schedules,
the run-length batch-norm momentum, and SGD with momentum.

    train_lib.train(config, strategy, ResNetNetwork(resnet_size=18, version=2))

Learning rate (TF official ResNet): peak = base_learning_rate * global_batch / 256, reached by a
linear warm-up (default 5% of the epochs), then multiplied by 0.1, 0.01, 1e-3, 1e-4 at 30%, 60%,
80% and 90% of the run's steps. The official ImageNet boundaries are epochs 30/60/80/90; at the
original default of --train_epochs=100 these fractions give exactly those epochs, and shorter or
longer runs keep the same shape. Momentum 0.9.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from networks import registry
from networks.resnet import conv_layers, resnet_model
from official.core import steps
from official.core.config import DTYPE_POLICIES, OptimizerSpec, ScheduleSpec
from official.utils.misc import model_helpers

LR_DECAY_FRACTIONS = (0.3, 0.6, 0.8, 0.9)
LR_DECAY_MULTIPLIERS = (1.0, 0.1, 0.01, 1e-3, 1e-4)


def _with_warmup(rate, step, peak: float, warmup_steps):
    """`rate`, except a linear ramp to `peak` over the first `warmup_steps` steps (a tensor:
    none when 0, where the ramp's division by 0 is never taken)."""
    return tf.where(step < warmup_steps, peak * (step + 1.0) / warmup_steps, rate)


# Registered so an optimizer's get_config() can be read back (as is
# official/modeling/stretchable.py's Stretchable). Both schedules hold their steps (the
# warm-up, the boundaries, the end) in a variable as well, which the traced step reads:
# `assign` lays a schedule over another run without tracing again (a budgeted run's timed
# copy, built over --train_epochs, over a shorter plan: official/core/budget.py). The values
# are those the constants were (whole steps, exact in float32): the same rates, bit for bit.
@keras.saving.register_keras_serializable(package="resnet")
class WarmupPiecewiseSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then `peak * multipliers[i]` past `boundaries[i - 1]`."""

    def __init__(self, peak: float, warmup_steps: int, boundaries: tuple[int, ...],
                 multipliers: tuple[float, ...], total_steps: int | None = None):
        self.peak = float(peak)
        self.multipliers = tuple(float(m) for m in multipliers)
        self._steps = tf.Variable(tf.zeros(len(boundaries) + 1), trainable=False)
        self._lay(warmup_steps, boundaries, total_steps)

    def _lay(self, warmup_steps: int, boundaries: tuple[int, ...], total_steps: int | None):
        self.warmup_steps = int(warmup_steps)
        self.boundaries = tuple(int(b) for b in boundaries)
        self.total_steps = None if total_steps is None else int(total_steps)
        self._steps.assign([self.warmup_steps, *self.boundaries])

    def assign(self, other: "WarmupPiecewiseSchedule") -> None:
        """`other`'s steps: the same rates laid over another run."""
        if (other.peak, other.multipliers) != (self.peak, self.multipliers):
            raise ValueError("a schedule takes the steps of one with its own rates only")
        self._lay(other.warmup_steps, other.boundaries, other.total_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        index = tf.reduce_sum(tf.cast(step >= self._steps[1:], tf.int32))
        rate = self.peak * tf.gather(tf.constant(self.multipliers, tf.float32), index)
        return _with_warmup(rate, step, self.peak, self._steps[0])

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "boundaries": self.boundaries, "multipliers": self.multipliers,
                "total_steps": self.total_steps}


@keras.saving.register_keras_serializable(package="resnet")
class WarmupCosineSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then half a cosine from `peak` down to 0 at `total_steps`."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int):
        self.peak = float(peak)
        self._steps = tf.Variable([0.0, 0.0], trainable=False)  # warm-up, end
        self._lay(warmup_steps, total_steps)

    def _lay(self, warmup_steps: int, total_steps: int) -> None:
        self.warmup_steps = int(warmup_steps)
        self.total_steps = max(int(total_steps), self.warmup_steps + 1)
        self._steps.assign([self.warmup_steps, self.total_steps])

    def assign(self, other: "WarmupCosineSchedule") -> None:
        """`other`'s steps: the same rates laid over another run."""
        if other.peak != self.peak:
            raise ValueError("a schedule takes the steps of one with its own rates only")
        self._lay(other.warmup_steps, other.total_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup_steps, total_steps = tf.unstack(self._steps)
        progress = tf.clip_by_value((step - warmup_steps) / (total_steps - warmup_steps),
                                    0.0, 1.0)
        rate = self.peak * 0.5 * (1.0 + tf.cos(3.141592653589793 * progress))
        return _with_warmup(rate, step, self.peak, warmup_steps)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps}


def learning_rate_schedule(schedule: ScheduleSpec):
    """The schedule `lr_schedule` names ("piecewise" or "cosine"), over the run's
    `train_steps`; peak base_learning_rate (* batch_size / 256 for "linear" scaling),
    reached by a linear warm-up of `warmup_epochs` (None: 5% of the run)."""
    peak = schedule.base_learning_rate
    if schedule.lr_scaling == "linear":
        peak *= schedule.batch_size / 256
    total = schedule.train_steps
    warmup_steps = int(round(0.05 * total if schedule.warmup_epochs is None
                             else schedule.warmup_epochs * schedule.steps_per_epoch))
    if schedule.lr_schedule == "cosine":
        # A short run spends most of its steps at a useful rate and still ends near 0, where
        # the batch-norm statistics and the weights settle; piecewise drops 10x at 30%.
        return WarmupCosineSchedule(peak, warmup_steps, total)
    boundaries = tuple(int(round(f * total)) for f in LR_DECAY_FRACTIONS)
    return WarmupPiecewiseSchedule(peak, warmup_steps, boundaries, LR_DECAY_MULTIPLIERS, total)


def batch_norm_momentum(configured: float | None, total_steps: int | None) -> float:
    """`configured` (--batch_norm_momentum), else 1 - 20 / total_steps within [0.9, 0.997].

    The moving averages start at mean 0 / variance 1 and forget them as momentum**steps: with
    the official 0.997, a 440-step run (MedNIST, 2 epochs) still weighs its start-up values
    27% and evaluated at 74% accuracy while training at 99.9%. An averaging horizon of 1/20 of
    the run forgets them completely yet still averages over many batches; long runs keep 0.997.
    """
    if configured is not None:
        return configured
    if not total_steps:
        return resnet_model.BATCH_NORM_MOMENTUM
    return min(resnet_model.BATCH_NORM_MOMENTUM, max(0.9, 1.0 - 20.0 / total_steps))


def resolve_data_format(data_format: str | None) -> str:
    """`data_format`, else channels_first on a GPU (cuDNN's faster layout), channels_last."""
    if data_format:
        return data_format
    return "channels_first" if tf.config.list_physical_devices("GPU") else "channels_last"


@dataclasses.dataclass(frozen=True)
class ResNetNetwork:
    """The network plug-in of dicom_main.py (see official/core/train_lib.train)."""
    resnet_size: int = 50
    version: int = 2
    small_input: bool | None = None  # None: on for image_size <= 32
    data_format: str | None = None  # None: channels_first on GPU, channels_last on CPU
    # None: resnet_model's default ConvPlan; others are the benchmarks' peers.
    conv_plan: conv_layers.ConvPlan | None = None

    def __post_init__(self):
        registry.check_resnet(self.resnet_size, self.version)

    def model_spec(self, num_classes: int, *, image_size: int,
                   channels: int) -> registry.ModelSpec:
        return registry.ModelSpec(
            architecture=registry.RESNET, num_classes=num_classes, image_size=image_size,
            channels=channels, resnet_size=self.resnet_size, version=self.version,
            small_input=model_helpers.resolve_small_input(self.small_input, image_size),
            data_format=resolve_data_format(self.data_format))

    def config_entries(self) -> dict:
        return {}

    def learning_rate_schedule(self, schedule: ScheduleSpec):
        return learning_rate_schedule(schedule)

    def build_training_state(self, spec: registry.ModelSpec, optimizer: OptimizerSpec,
                             schedule, strategy: tf.distribute.Strategy, *,
                             resuming: bool = False) -> steps.TrainingState:
        """Model, SGD with momentum, step counter and checkpoint, inside `strategy.scope()`.
        (`resuming` is the plug-in's; a ResNet starts from random weights either way.) The
        batch-norm momentum, laid over the schedule's run, is a variable the traced step reads:
        the state's `lay_over` lays it over another schedule's run."""
        with strategy.scope():
            model = registry.build_model(
                spec, dtype_policy=DTYPE_POLICIES[optimizer.dtype],
                weight_decay=optimizer.weight_decay,
                batch_norm_momentum=batch_norm_momentum(
                    optimizer.batch_norm_momentum, getattr(schedule, "total_steps", None)),
                conv_plan=self.conv_plan)
            state = steps.training_state(
                model, lambda **extra: keras.optimizers.SGD(schedule,
                                                            momentum=optimizer.momentum,
                                                            **extra),
                dtype=optimizer.dtype, loss_scale=optimizer.loss_scale)
            # In the scope: each replica reads its own copy (under MirroredStrategy an
            # XLA-compiled step, --jit_compile, cannot read a variable on another device).
            momentum = resnet_model.MomentumVariable(model)
        state.lay_over = lambda planned: momentum.assign(batch_norm_momentum(
            optimizer.batch_norm_momentum, getattr(planned, "total_steps", None)))
        return state
