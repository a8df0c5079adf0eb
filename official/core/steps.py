"""The training state (model, optimizer, step, checkpoint) and the distributed train/eval steps.

Steps are pure TensorFlow: a batch in, a dict of summed metrics out, nothing written. Which
model and optimizer is the network plug-in's choice (official/core/train_lib.py); the loss,
its averaging over the global batch and the loss scaling are the same for every network.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable

import keras
import tensorflow as tf

from official.modeling import ema
from official.modeling.stretchable import Stretchable

if TYPE_CHECKING:
    from official.core.config import TrainConfig


@dataclasses.dataclass
class TrainingState:
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    step: tf.Variable  # train steps taken, including fp16 steps skipped on overflow
    checkpoint: tf.train.Checkpoint
    # What the network lays over the run's length besides the schedule (the ResNet's
    # batch-norm momentum), laid over the run of the schedule given: variables the traced step
    # reads (`lay_over` below). None: nothing.
    lay_over: Callable[[object], None] | None = None


def training_state(model: keras.Model, make_optimizer: Callable[..., keras.optimizers.Optimizer],
                   *, dtype: str, loss_scale: float | None) -> TrainingState:
    """Optimizer (loss-scaled for fp16), step counter and checkpoint for `model`.

    Call inside `strategy.scope()`. `make_optimizer(**extra)` builds the network's optimizer;
    `extra` is `loss_scale_factor=...` for a fixed fp16 loss scale, else empty.
    """
    if dtype == "fp16" and loss_scale is not None:
        # A fixed scale: Keras multiplies the loss and divides the gradients by it; no skip.
        optimizer = make_optimizer(loss_scale_factor=loss_scale)
    else:
        optimizer = make_optimizer()
        if dtype == "fp16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    # Built now (not lazily at the first step) so a checkpoint restores the slots and the
    # loss scale immediately.
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
    return TrainingState(model, optimizer, step, checkpoint)


# What the train function sums over a call's steps.
TOTALS = ("loss", "cross_entropy", "correct", "examples", "nonfinite_steps")


class LastCall:
    """The train function's latest call, kept in variables: its sums, its number of steps and
    the global step it ended at. A Ctrl-C or SIGTERM is raised as the call returns (Python
    raises it between TensorFlow calls) and loses the call's return value, not these: the loop
    draws that call's point from them (official/core/train_log.py). Not checkpointed."""

    def __init__(self):
        self.totals = {key: tf.Variable(0.0, trainable=False) for key in TOTALS}
        self.num_steps = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.end_step = tf.Variable(-1, dtype=tf.int64, trainable=False)

    def record(self, totals, num_steps, end_step) -> None:
        """Inside the train function, after its steps."""
        for key in TOTALS:
            self.totals[key].assign(totals[key])
        self.num_steps.assign(tf.cast(num_steps, tf.int64))
        self.end_step.assign(end_step)

    def read(self) -> tuple[int, int, dict[str, float]]:
        """(the global step the latest call ended at (-1: none yet), its steps, its sums)."""
        return (int(self.end_step.numpy()), int(self.num_steps.numpy()),
                {key: float(value.numpy()) for key, value in self.totals.items()})


@dataclasses.dataclass
class Training:
    """What `training` builds: one run's, or the copy --train_budget_seconds times."""
    schedule: object  # a Keras learning-rate schedule
    state: TrainingState
    weight_average: ema.WeightAverage | None
    train_fn: Callable
    last_call: LastCall


def state_variables(state: TrainingState, weight_average=None) -> list:
    """Everything a run's state holds, in a fixed order: model, optimizer, step, the weight
    average's (official.modeling.ema.WeightAverage, when the run keeps one)."""
    return [*state.model.variables, *state.optimizer.variables, state.step,
            *(weight_average.variables if weight_average else ())]


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
                        jit_compile: bool = False, weight_average=None,
                        last_call: LastCall | None = None):
    """`train(iterator, num_steps)`: runs `num_steps` distributed steps in one tf.function call.

    Returns sums over those steps (TOTALS): "loss" (each step's global-batch mean loss,
    regularisation included), "cross_entropy" (the same without the weight decay: what the
    evaluation's loss measures), "correct", "examples", and "nonfinite_steps" (steps whose loss
    was NaN/Inf). `last_call`: also kept there, with the step the call ended at.
    """
    model, optimizer = state.model, state.optimizer
    num_replicas = strategy.num_replicas_in_sync

    def forward_backward(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            per_example = _cross_entropy(labels, logits, num_classes, label_smoothing)
            # Mean over the GLOBAL batch: summing the replicas' gradients then gives the
            # gradient of the global mean, whatever the number of replicas.
            cross_entropy = tf.nn.compute_average_loss(per_example,
                                                       global_batch_size=global_batch_size)
            loss = cross_entropy
            if model.losses:
                # Each replica adds 1/num_replicas of the weight decay, so the sum counts it once.
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled_loss = optimizer.scale_loss(loss)  # identity unless fp16
        grads = tape.gradient(scaled_loss, model.trainable_variables)
        correct = tf.reduce_sum(tf.cast(
            tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), _class_ids(labels)),
            tf.float32))
        return loss, cross_entropy, grads, correct

    if jit_compile:
        # XLA compiles the forward and backward pass only; the optimizer update (with its
        # cross-replica all-reduce) stays outside, where every strategy supports it.
        forward_backward = tf.function(forward_backward, jit_compile=True)

    def replica_step(images, labels):
        loss, cross_entropy, grads, correct = forward_backward(images, labels)
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
        return {"loss": loss, "cross_entropy": cross_entropy, "correct": correct,
                "examples": tf.cast(tf.shape(labels)[0], tf.float32)}

    def reduce_sum(per_replica):
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                for k, v in per_replica.items()}

    @tf.function
    def train(iterator, num_steps):
        totals = {k: tf.constant(0.0) for k in TOTALS}
        for _ in tf.range(num_steps):
            metrics = reduce_sum(strategy.run(replica_step, args=next(iterator)))
            state.step.assign_add(1)
            totals = {
                "loss": totals["loss"] + metrics["loss"],
                "cross_entropy": totals["cross_entropy"] + metrics["cross_entropy"],
                "correct": totals["correct"] + metrics["correct"],
                "examples": totals["examples"] + metrics["examples"],
                "nonfinite_steps": totals["nonfinite_steps"] + tf.cast(
                    tf.logical_not(tf.math.is_finite(metrics["loss"])), tf.float32),
            }
        if last_call is not None:
            last_call.record(totals, num_steps, state.step)
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


def evaluate(evaluate_step, strategy: tf.distribute.Strategy,
             dataset: tf.data.Dataset) -> dict[str, float]:
    """Accuracy, mean loss and example count of ``make_eval_step``'s step over ``dataset``."""
    totals = {"loss": 0.0, "correct": 0.0, "examples": 0.0}
    for batch in strategy.experimental_distribute_dataset(dataset):
        for key, value in evaluate_step(batch).items():
            totals[key] += float(value)
    examples = max(totals["examples"], 1.0)
    return {"accuracy": totals["correct"] / examples, "loss": totals["loss"] / examples,
            "examples": int(totals["examples"])}


def training(config: TrainConfig, strategy: tf.distribute.Strategy, network, spec,
             num_classes: int, steps_per_epoch: int, train_steps: int, *, resuming: bool,
             stretchable: bool = False) -> Training:
    """Schedule, state, weight average (or None), train function and its LastCall of one run
    of `network` (official/core/train_lib.py's plug-in): the real one, and the copy
    --train_budget_seconds times. `stretchable`: a schedule laid over the run's length (it has
    total_steps) can be stretched when the budget lengthens the run."""
    schedule = network.learning_rate_schedule(config.schedule_spec(steps_per_epoch,
                                                                   train_steps))
    if stretchable and getattr(schedule, "total_steps", None):
        schedule = Stretchable(schedule)
    state = network.build_training_state(spec, config.optimizer_spec(), schedule, strategy,
                                         resuming=resuming)
    weight_average = None
    if config.ema_decay:
        with strategy.scope():
            weight_average = ema.WeightAverage(state.model, config.ema_decay)
        state.checkpoint.ema = weight_average.variables  # saved and restored with the rest
    last_call = LastCall()
    train_fn = make_train_function(
        state, strategy, global_batch_size=config.batch_size, num_classes=num_classes,
        label_smoothing=config.label_smoothing, jit_compile=config.jit_compile,
        weight_average=weight_average, last_call=last_call)
    return Training(schedule, state, weight_average, train_fn, last_call)


def lay_over(training: Training, config: TrainConfig, network, steps_per_epoch: int,
             train_steps: int) -> None:
    """Lay `training`, built over another run (the budget's timed copy, over --train_epochs),
    over a run of `train_steps`, before any stretch: its learning-rate schedule and what its
    network lays over the run's length (`TrainingState.lay_over`) become those `training`
    builds over `train_steps`. Both are variables its traced step reads: the train function
    goes on without tracing again."""
    planned = network.learning_rate_schedule(config.schedule_spec(steps_per_epoch, train_steps))
    if getattr(planned, "total_steps", None):  # laid over the run (Slim's are not)
        training.schedule.assign(planned)
    if training.state.lay_over is not None:
        training.state.lay_over(planned)
