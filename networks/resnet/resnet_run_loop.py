"""The ResNet training loop: a custom tf.distribute loop with the Estimator's behaviour.

Sections, top to bottom: config -> data -> model/optimizer state -> restore -> loop -> export.
(Config lives in train_config.py, input in train_input.py, model/steps in train_steps.py.)

What the Estimator did and this loop keeps: train in cycles of `epochs_between_evals`, evaluate on
the validation split after each, stop at `train_epochs`, `max_train_steps` or `stop_threshold`,
resume from the latest checkpoint in `model_dir` when restarted, export a SavedModel at the end.
A resumed run restarts the input pipeline (a fresh shuffle), not the exact batch order.

Learning rate (TF official ResNet): peak = base_learning_rate * global_batch / 256, reached by a
linear warm-up (default 5% of the epochs), then multiplied by 0.1, 0.01, 1e-3, 1e-4 at 30%, 60%,
80% and 90% of the run's steps. The official ImageNet boundaries are epochs 30/60/80/90; at the
original default of --train_epochs=100 these fractions give exactly those epochs, and shorter or
longer runs keep the same shape. The schedule counts `train_epochs` even when `max_train_steps`
stops earlier (as the Estimator did). Momentum 0.9.

Batch norm under MirroredStrategy normalises with each replica's own batch statistics (as the
Estimator's replicated model did: "ghost batch norm"), so N replicas of batch B/N match one device
with batch B only up to those statistics. Loss and gradients are otherwise aggregated exactly: the
loss is averaged over the global batch and the replicas' gradients are summed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import shutil
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.framework import summary_pb2

from networks.resnet import export as export_lib
from networks.resnet import train_input, train_steps
from networks.resnet.train_config import (  # noqa: F401 - re-exported for callers
    CONFIG_FILE, TrainConfig, TrainResult, check_resume_config, read_config, write_config)
from official.modeling import ema
from official.utils.logs import hooks as hooks_lib
from official.utils.logs import logger as logger_lib
from official.utils.misc import distribution_utils, model_helpers


def _scalar(name: str, value: float, step: int) -> None:
    """A TensorBoard scalar without the tensorboard package (not a TF 2.21 dependency):
    tf.summary.write with the metadata TensorBoard's scalar plugin reads."""
    tf.summary.write(name, tf.constant(value, tf.float32), step=step,
                     metadata=_SCALAR_METADATA)


_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")).SerializeToString()


def resolved_config(config: TrainConfig, data: train_input.DataSpec) -> dict:
    """Everything config.json records: the flags plus what the data and device resolved."""
    return {**dataclasses.asdict(config), "hooks": list(config.hooks),
            "num_classes": data.num_classes, "class_names": list(data.class_names),
            "small_input": model_helpers.resolve_small_input(config.small_input,
                                                             config.image_size),
            "data_format": train_steps.resolve_data_format(config.data_format),
            "architecture": "resnet"}


def run_name(resolved: dict) -> str:
    """What the benchmark logger calls the model: "resnet50_v1", or the Slim network's name."""
    architecture = resolved.get("architecture", "resnet")
    if architecture != "resnet":
        return architecture
    return f"resnet{resolved['resnet_size']}_v{resolved['version']}"


def summary_line(name: str, result: TrainResult, config: TrainConfig, replicas: int,
                 dir_flag: str = "model_dir") -> str:
    """The one line the training CLIs print at the end (`dir_flag`: what their flag for
    the run's folder is called)."""
    line = (f"{name}: step {result.step} (resumed from {result.resumed_from_step}, stopped by "
            f"{result.stopped_by}), {config.eval_split} accuracy {result.eval_accuracy:.4f} "
            f"loss {result.eval_loss:.4f} on {result.eval_examples} examples, {replicas} "
            f"replica(s); {dir_flag} {config.model_dir}")
    if result.examples_per_second:
        line += f"; {result.examples_per_second:.1f} examples/s"
    if result.export_path:
        line += f"; exported {result.export_path}"
    return line


def averaged(weight_average: ema.WeightAverage | None):
    """The weight average swapped into the model (--ema_decay), or the weights as they are."""
    return weight_average.swapped_in() if weight_average else contextlib.nullcontext()


def evaluate(evaluate_step, strategy, dataset) -> dict[str, float]:
    totals = {"loss": 0.0, "correct": 0.0, "examples": 0.0}
    for batch in strategy.experimental_distribute_dataset(dataset):
        for key, value in evaluate_step(batch).items():
            totals[key] += float(value)
    examples = max(totals["examples"], 1.0)
    return {"accuracy": totals["correct"] / examples, "loss": totals["loss"] / examples,
            "examples": int(totals["examples"])}


# What a dead, unreachable or stuck peer raises in the survivors' collectives.
_CLUSTER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError,
                   tf.errors.DeadlineExceededError, tf.errors.CancelledError,
                   tf.errors.InternalError)


def _cluster_failure(error: tf.errors.OpError, workers: int, model_dir: str) -> str:
    """One line for a collective that failed: which peer (when TF says) and the cause."""
    text = getattr(error, "message", "") or str(error)
    peer = re.search(r"/job:(\w+)/replica:\d+/task:(\d+)", text)
    causes = [line.strip() for line in text.splitlines()
              if re.search(r"(?i)unavailable|connect|deadline|timed? ?out|heartbeat|abort|"
                           r"cancel|unhealthy|shut ?down", line)
              and "Graph execution error" not in line]
    cause = (causes or [line for line in text.splitlines() if line.strip()] or [""])[0]
    who = f"{peer.group(1)} {peer.group(2)}" if peer else "another worker"
    return (f"multi-worker training stopped: {who} of the {workers} died, is unreachable or is "
            f"stuck ({type(error).__name__}: {cause[:240]}); restart every worker with the same "
            f"flags to resume from the last checkpoint in {model_dir}")


def train(config: TrainConfig, strategy: tf.distribute.Strategy,
          network=None) -> TrainResult:
    """Train (or resume) in `config.model_dir`; evaluate each cycle; export when asked.

    `network` swaps the ResNet of `config` for another model (networks/slim/slim_train.py
    SlimNetwork): an object with config_entries() -> dict (merged into config.json; its
    "architecture" key tells export which model to rebuild), learning_rate_schedule(config,
    steps_per_epoch) and build_training_state(config, num_classes, schedule, strategy).

    Multi-worker (MultiWorkerMirroredStrategy): only the chief writes into model_dir and
    export_dir; the others write their (collective) checkpoints and summaries to a private
    temporary folder, deleted when they finish or fail. On resume the chief restores from
    model_dir and sends the state to the others, so model_dir need not be a shared filesystem.

    Raises:
      ValueError: bad configuration or data, or a model_dir trained with other settings.
      FloatingPointError: the loss became NaN or Inf (the message names the step).
      ConnectionError: multi-worker: another worker died, became unreachable or got stuck.
    """
    chief = distribution_utils.is_chief(strategy)
    workers = distribution_utils.num_workers(strategy)
    write_dir = config.model_dir if chief else tempfile.mkdtemp(prefix="resnet_worker_")
    try:
        return _train(config, strategy, chief, workers, write_dir, network)
    except _CLUSTER_ERRORS as error:
        if workers <= 1:
            raise
        raise ConnectionError(_cluster_failure(error, workers, config.model_dir)) from None
    finally:
        if not chief:
            shutil.rmtree(write_dir, ignore_errors=True)


def _train(config: TrainConfig, strategy: tf.distribute.Strategy, chief: bool, workers: int,
           write_dir: str, network=None) -> TrainResult:
    # --- config ---
    data = train_input.resolve_data(config)
    num_replicas = strategy.num_replicas_in_sync
    distribution_utils.per_replica_batch_size(config.batch_size, num_replicas)
    resolved = resolved_config(config, data)
    if network is not None:
        resolved.update(network.config_entries())
    check_resume_config(config.model_dir, resolved)
    if workers > 1 and config.seed is None:
        # Splitting the input by data needs the same shuffle on every worker: a variable's
        # initial value is the chief's on every worker, so this is the chief's random seed.
        with strategy.scope():
            shared = tf.Variable(np.random.randint(2**31 - 1), dtype=tf.int64, trainable=False)
        input_config = dataclasses.replace(config, seed=int(shared.numpy()))
    else:
        input_config = config
    if chief:
        write_config(config.model_dir, resolved)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    if config.seed is not None or config.deterministic:
        import keras
        keras.utils.set_random_seed(config.seed or 0)

    benchmark_logger = None
    if chief and (config.benchmark_log_dir or config.gcp_project):
        benchmark_logger = logger_lib.BenchmarkLogger(
            config.benchmark_log_dir, gcp_project=config.gcp_project,
            bigquery_data_set=config.bigquery_data_set,
            bigquery_run_table=config.bigquery_run_table,
            bigquery_metric_table=config.bigquery_metric_table)
        benchmark_logger.log_run_info(run_name(resolved), resolved)
    hooks = hooks_lib.get_train_hooks(config.hooks, every_n_steps=config.log_every_steps,
                                      benchmark_logger=benchmark_logger) if chief else []

    # --- data ---
    steps_per_epoch = model_helpers.steps_per_epoch(data.train_examples, config.batch_size)
    total_steps = config.train_epochs * steps_per_epoch
    steps_per_cycle = config.epochs_between_evals * steps_per_epoch
    last_step = min(total_steps, config.max_train_steps or total_steps)
    train_iterator = iter(strategy.experimental_distribute_dataset(
        train_input.train_dataset(input_config, data, num_workers=workers)))
    eval_data = train_input.eval_dataset(config, data)

    # --- model, optimizer, checkpoint ---
    builder = network or train_steps  # the same two functions for the ResNet
    schedule = builder.learning_rate_schedule(config, steps_per_epoch)
    state = builder.build_training_state(config, data.num_classes, schedule, strategy)
    weight_average = None
    if config.ema_decay:
        with strategy.scope():
            weight_average = ema.WeightAverage(state.model, config.ema_decay)
        state.checkpoint.ema = weight_average.variables  # saved and restored with the rest
    manager = tf.train.CheckpointManager(state.checkpoint, write_dir,
                                         max_to_keep=config.keep_checkpoints)
    # --- restore ---
    if manager.latest_checkpoint:
        state.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        logging.info("resumed from %s (step %d)", manager.latest_checkpoint,
                     int(state.step.numpy()))
    # The other workers' write_dir is empty: they take the chief's (restored) state.
    distribution_utils.broadcast_from_chief(
        strategy, [*state.model.variables, *state.optimizer.variables, state.step,
                   *(weight_average.variables if weight_average else ())])
    resumed_from = int(state.step.numpy())
    train_fn = train_steps.make_train_function(
        state, strategy, global_batch_size=config.batch_size, num_classes=data.num_classes,
        label_smoothing=config.label_smoothing, jit_compile=config.jit_compile,
        weight_average=weight_average)
    evaluate_step = train_steps.make_eval_step(state.model, strategy, data.num_classes)

    summary_dir = config.model_dir if chief else write_dir
    train_writer = tf.summary.create_file_writer(os.path.join(summary_dir, "train"))
    eval_writer = tf.summary.create_file_writer(os.path.join(summary_dir, "eval"))
    for hook in hooks:
        hook.begin(config.model_dir)

    # --- loop ---
    step = resumed_from
    eval_metrics, stopped_by, examples_per_second = None, "train_epochs", None
    throughput = []
    while step < last_step:
        cycle_end = min((step // steps_per_cycle + 1) * steps_per_cycle, last_step)
        while step < cycle_end:
            num_steps = min(config.steps_per_loop, cycle_end - step)
            started = time.perf_counter()
            totals = {k: float(v) for k, v in train_fn(train_iterator,
                                                       tf.constant(num_steps)).items()}
            elapsed = time.perf_counter() - started
            previous, step = step, int(state.step.numpy())
            if totals["nonfinite_steps"] > 0 or not math.isfinite(totals["loss"]):
                where = (f"step {step}" if num_steps == 1
                         else f"one of steps {previous + 1}-{step}")
                raise FloatingPointError(
                    f"training loss became NaN/Inf at {where}; stopped without saving (last "
                    f"checkpoint: {manager.latest_checkpoint})")
            examples_per_second = totals["examples"] / max(elapsed, 1e-9)
            throughput.append(examples_per_second)
            metrics = {"loss": totals["loss"] / num_steps,
                       "accuracy": totals["correct"] / max(totals["examples"], 1.0),
                       "learning_rate": float(schedule(state.optimizer.iterations)),
                       "loss_scale": train_steps.loss_scale_of(state.optimizer),
                       "examples": totals["examples"],
                       "examples_per_second": examples_per_second}
            with train_writer.as_default():
                for name, value in metrics.items():
                    if value is not None and name != "examples":
                        _scalar(name, value, step)
            for hook in hooks:
                hook.after_step(step, metrics)
            every = config.checkpoint_every_steps
            if every and step // every > previous // every and step < cycle_end:
                manager.save(checkpoint_number=step)

        # Batch-norm moving statistics are updated from each worker's own part of the batch;
        # every worker takes the chief's (what it saves and exports) before evaluating.
        distribution_utils.broadcast_from_chief(strategy, state.model.non_trainable_variables)
        with averaged(weight_average):
            eval_metrics = evaluate(evaluate_step, strategy, eval_data)
        logging.info("step %d: %s accuracy = %.4f, loss = %.4f (%d examples)", step,
                     config.eval_split, eval_metrics["accuracy"], eval_metrics["loss"],
                     eval_metrics["examples"])
        with eval_writer.as_default():
            _scalar("accuracy", eval_metrics["accuracy"], step)
            _scalar("loss", eval_metrics["loss"], step)
        if benchmark_logger:
            benchmark_logger.log_metric("accuracy", eval_metrics["accuracy"], global_step=step)
            benchmark_logger.log_metric("loss", eval_metrics["loss"], global_step=step)
        manager.save(checkpoint_number=step)
        if model_helpers.past_stop_threshold(config.stop_threshold, eval_metrics["accuracy"]):
            stopped_by = "stop_threshold"
            break
    else:
        if config.max_train_steps and last_step < total_steps:
            stopped_by = "max_train_steps"

    if eval_metrics is None:  # resumed a finished run: report its final accuracy again
        with averaged(weight_average):
            eval_metrics = evaluate(evaluate_step, strategy, eval_data)
    for hook in hooks:
        hook.end(step)
    train_writer.flush()
    eval_writer.flush()

    # --- export ---
    export_path = None
    if config.export_dir and chief:
        with averaged(weight_average):
            export_path = export_lib.export_saved_model(state.model, resolved,
                                                        config.export_dir,
                                                        tta_views=config.export_tta)
        logging.info("exported SavedModel to %s", export_path)
    return TrainResult(step=step, resumed_from_step=resumed_from, stopped_by=stopped_by,
                       eval_accuracy=eval_metrics["accuracy"], eval_loss=eval_metrics["loss"],
                       eval_examples=eval_metrics["examples"],
                       examples_per_second=float(np.median(throughput[1:] or throughput))
                       if throughput else None,
                       export_path=export_path)
