"""Model, optimizer and learning-rate schedule, and the distributed train/eval steps.

Steps are pure TensorFlow: a batch in, a dict of summed metrics out, nothing written.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from networks.resnet import resnet_model
from networks.resnet.train_config import (DTYPE_POLICIES, LR_DECAY_FRACTIONS,
                                          LR_DECAY_MULTIPLIERS, TrainConfig)
from official.utils.misc import model_helpers


def _with_warmup(rate, step, peak: float, warmup_steps: int):
    """`rate`, except a linear ramp to `peak` over the first `warmup_steps` steps."""
    if warmup_steps <= 0:
        return rate
    return tf.where(step < warmup_steps, peak * (step + 1.0) / float(warmup_steps), rate)


class WarmupPiecewiseSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then `peak * multipliers[i]` past `boundaries[i - 1]`."""

    def __init__(self, peak: float, warmup_steps: int, boundaries: tuple[int, ...],
                 multipliers: tuple[float, ...], total_steps: int | None = None):
        self.peak = float(peak)
        self.total_steps = None if total_steps is None else int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.boundaries = tuple(int(b) for b in boundaries)
        self.multipliers = tuple(float(m) for m in multipliers)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        index = tf.reduce_sum(tf.cast(step >= tf.constant(self.boundaries, tf.float32), tf.int32))
        rate = self.peak * tf.gather(tf.constant(self.multipliers, tf.float32), index)
        return _with_warmup(rate, step, self.peak, self.warmup_steps)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "boundaries": self.boundaries, "multipliers": self.multipliers,
                "total_steps": self.total_steps}


class WarmupCosineSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then half a cosine from `peak` down to 0 at `total_steps`."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int):
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = max(int(total_steps), self.warmup_steps + 1)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        progress = tf.clip_by_value((step - self.warmup_steps)
                                    / float(self.total_steps - self.warmup_steps), 0.0, 1.0)
        rate = self.peak * 0.5 * (1.0 + tf.cos(3.141592653589793 * progress))
        return _with_warmup(rate, step, self.peak, self.warmup_steps)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps}


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int):
    """The schedule `config.lr_schedule` names, over `train_epochs * steps_per_epoch` steps."""
    peak = config.base_learning_rate
    if config.lr_scaling == "linear":
        peak *= config.batch_size / 256
    total = config.train_epochs * steps_per_epoch
    warmup_epochs = (0.05 * config.train_epochs if config.warmup_epochs is None
                     else config.warmup_epochs)
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    if config.lr_schedule == "cosine":
        # A short run spends most of its steps at a useful rate and still ends near 0, where
        # the batch-norm statistics and the weights settle; piecewise drops 10x at 30%.
        return WarmupCosineSchedule(peak, warmup_steps, total)
    boundaries = tuple(int(round(f * total)) for f in LR_DECAY_FRACTIONS)
    return WarmupPiecewiseSchedule(peak, warmup_steps, boundaries, LR_DECAY_MULTIPLIERS, total)


def batch_norm_momentum(config: TrainConfig, total_steps: int | None) -> float:
    """`config.batch_norm_momentum`, else 1 - 20 / total_steps within [0.9, 0.997].

    The moving averages start at mean 0 / variance 1 and forget them as momentum**steps: with
    the official 0.997, a 440-step run (MedNIST, 2 epochs) still weighs its start-up values
    27% and evaluated at 74% accuracy while training at 99.9%. An averaging horizon of 1/20 of
    the run forgets them completely yet still averages over many batches; long runs keep 0.997.
    """
    if config.batch_norm_momentum is not None:
        return config.batch_norm_momentum
    if not total_steps:
        return resnet_model.BATCH_NORM_MOMENTUM
    return min(resnet_model.BATCH_NORM_MOMENTUM, max(0.9, 1.0 - 20.0 / total_steps))


@dataclasses.dataclass
class TrainingState:
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    step: tf.Variable  # train steps taken, including fp16 steps skipped on overflow
    checkpoint: tf.train.Checkpoint


def resolve_data_format(data_format: str | None) -> str:
    if data_format:
        return data_format
    return "channels_first" if tf.config.list_physical_devices("GPU") else "channels_last"


def build_training_state(config: TrainConfig, num_classes: int, schedule,
                         strategy: tf.distribute.Strategy) -> TrainingState:
    """Model, optimizer, step counter and checkpoint, created inside `strategy.scope()`."""
    with strategy.scope():
        model = resnet_model.build_resnet(
            config.resnet_size, config.version, num_classes,
            input_shape=(config.image_size, config.image_size, config.channels),
            dtype_policy=DTYPE_POLICIES[config.dtype], weight_decay=config.weight_decay,
            small_input=model_helpers.resolve_small_input(config.small_input, config.image_size),
            data_format=resolve_data_format(config.data_format))
        momentum = batch_norm_momentum(config, getattr(schedule, "total_steps", None))
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = momentum  # read when the step is traced
        if config.dtype == "fp16" and config.loss_scale is not None:
            # A fixed scale: Keras multiplies the loss and divides the gradients by it; no skip.
            optimizer = keras.optimizers.SGD(schedule, momentum=config.momentum,
                                             loss_scale_factor=config.loss_scale)
        else:
            optimizer = keras.optimizers.SGD(schedule, momentum=config.momentum)
            if config.dtype == "fp16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        # Built now (not lazily at the first step) so a checkpoint restores the slots and the
        # loss scale immediately.
        optimizer.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
    return TrainingState(model, optimizer, step, checkpoint)


def loss_scale_of(optimizer) -> float | None:
    scale = getattr(optimizer, "dynamic_scale", None)
    if scale is not None:
        return float(scale.numpy())
    factor = getattr(optimizer, "loss_scale_factor", None)
    return float(factor) if factor else None



def _cross_entropy(labels, logits, num_classes: int, label_smoothing: float):
    """Per-example cross-entropy in float32 (logits are float32 under every policy).

    `labels`: class ids [N], or probabilities [N, num_classes] (mixup/cutmix batches).
    """
    if labels.shape.rank == 1 and label_smoothing <= 0:
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    targets = tf.one_hot(labels, num_classes) if labels.shape.rank == 1 else labels
    if label_smoothing > 0:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)


def _class_ids(labels):
    # Mixed labels count as their larger part when scoring training accuracy.
    return labels if labels.shape.rank == 1 else tf.argmax(labels, -1, output_type=tf.int32)


def make_train_function(state: TrainingState, strategy: tf.distribute.Strategy, *,
                        global_batch_size: int, num_classes: int, label_smoothing: float = 0.0,
                        jit_compile: bool = False, weight_average=None):
    """`train(iterator, num_steps)`: runs `num_steps` distributed steps in one tf.function call.

    Returns sums over those steps: "loss" (each step's global-batch mean loss, regularisation
    included), "correct", "examples", and "nonfinite_steps" (steps whose loss was NaN/Inf).
    """
    model, optimizer = state.model, state.optimizer
    num_replicas = strategy.num_replicas_in_sync

    def forward_backward(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            per_example = _cross_entropy(labels, logits, num_classes, label_smoothing)
            # Mean over the GLOBAL batch: summing the replicas' gradients then gives the
            # gradient of the global mean, whatever the number of replicas.
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
            if model.losses:
                # Each replica adds 1/num_replicas of the weight decay, so the sum counts it once.
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled_loss = optimizer.scale_loss(loss)  # identity unless fp16
        grads = tape.gradient(scaled_loss, model.trainable_variables)
        correct = tf.reduce_sum(tf.cast(
            tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), _class_ids(labels)),
            tf.float32))
        return loss, grads, correct

    if jit_compile:
        # XLA compiles the forward and backward pass only; the optimizer update (with its
        # cross-replica all-reduce) stays outside, where every strategy supports it.
        forward_backward = tf.function(forward_backward, jit_compile=True)

    def replica_step(images, labels):
        loss, grads, correct = forward_backward(images, labels)
        if num_replicas > 1 and isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            # Keras decides "skip this step" from the first replica's gradients before the
            # all-reduce; make every replica's gradients non-finite if any replica overflowed,
            # so all replicas agree and the update is skipped everywhere.
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g))
                                    for g in grads if g is not None])
            any_bad = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))
            poison = tf.where(any_bad > 0, float("nan"), 1.0)
            grads = [None if g is None else g * tf.cast(poison, g.dtype) for g in grads]
        optimizer.apply(grads, model.trainable_variables)
        if weight_average is not None:  # official/modeling/ema.py WeightAverage
            weight_average.update(state.step)
        return {"loss": loss, "correct": correct,
                "examples": tf.cast(tf.shape(labels)[0], tf.float32)}

    def reduce_sum(per_replica):
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                for k, v in per_replica.items()}

    @tf.function
    def train(iterator, num_steps):
        totals = {k: tf.constant(0.0) for k in ("loss", "correct", "examples",
                                                 "nonfinite_steps")}
        for _ in tf.range(num_steps):
            metrics = reduce_sum(strategy.run(replica_step, args=next(iterator)))
            state.step.assign_add(1)
            totals = {
                "loss": totals["loss"] + metrics["loss"],
                "correct": totals["correct"] + metrics["correct"],
                "examples": totals["examples"] + metrics["examples"],
                "nonfinite_steps": totals["nonfinite_steps"] + tf.cast(
                    tf.logical_not(tf.math.is_finite(metrics["loss"])), tf.float32),
            }
        return totals

    return train


def make_eval_step(model: keras.Model, strategy: tf.distribute.Strategy, num_classes: int):
    """`evaluate(batch)`: summed "loss", "correct" and "examples" over one distributed batch;
    examples with a negative label (padding) are left out."""

    def replica_step(images, labels):
        logits = model(images, training=False)
        real = labels >= 0
        weights = tf.cast(real, tf.float32)
        per_example = _cross_entropy(tf.where(real, labels, 0), logits, num_classes, 0.0)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels),
                          tf.float32)
        return {"loss": tf.reduce_sum(per_example * weights),
                "correct": tf.reduce_sum(correct * weights),
                "examples": tf.reduce_sum(weights)}

    @tf.function(reduce_retracing=True)
    def evaluate(batch):
        per_replica = strategy.run(replica_step, args=batch)
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                for k, v in per_replica.items()}

    return evaluate
