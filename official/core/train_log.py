"""What the training loop (official/core/train_lib.py) records as it trains: each call of the
train function as one TensorBoard point in model_dir/train and one `after_step` of the hooks
(official/utils/logs/hooks.py), each validation as a point in model_dir/eval and in the
benchmark log.

Python I/O (event files, log lines), kept apart from the loop, which decides what to train, and
from the steps (official/core/steps.py), which write nothing.
"""

from __future__ import annotations

import contextlib
import os

import tensorflow as tf
from absl import logging

from official.core import steps
from official.core.config import TrainConfig
from official.core.model_paths import checkpoint_step
from official.utils.logs import hooks as hooks_lib
from official.utils.logs import logger as logger_lib
from official.utils.logs import summaries

# Hook metrics that are not TensorBoard points: the speed's parts, drawn as examples_per_second.
_NOT_DRAWN = ("examples", "seconds")


def run_loggers(config: TrainConfig, *, chief: bool, model_name: str,
                resolved: dict) -> tuple[logger_lib.BenchmarkLogger | None, list]:
    """(benchmark logger or None, train hooks) of a run; only the chief logs."""
    benchmark_logger = None
    if chief and (config.benchmark_log_dir or config.gcp_project):
        benchmark_logger = logger_lib.BenchmarkLogger(
            config.benchmark_log_dir, gcp_project=config.gcp_project,
            bigquery_data_set=config.bigquery_data_set,
            bigquery_run_table=config.bigquery_run_table,
            bigquery_metric_table=config.bigquery_metric_table)
        benchmark_logger.log_run_info(model_name, resolved)
    hooks = hooks_lib.get_train_hooks(config.hooks, every_n_steps=config.log_every_steps,
                                      benchmark_logger=benchmark_logger) if chief else []
    return benchmark_logger, hooks


def call_metrics(totals: dict[str, float], num_steps: int, seconds: float | None, schedule,
                 optimizer) -> dict[str, float | None]:
    """The metrics of one train-function call (steps.make_train_function's sums over
    `num_steps` steps that took `seconds`, None: not known), as the hooks and the TensorBoard
    point take them (None: not drawn)."""
    # "loss" is what the step minimised (weight decay included); the evaluation's is the
    # cross-entropy alone, which both write as "cross_entropy" to compare.
    return {"loss": totals["loss"] / num_steps,
            "cross_entropy": totals["cross_entropy"] / num_steps,
            "accuracy": totals["correct"] / max(totals["examples"], 1.0),
            # the rate the last step used: the optimizer reads schedule(iterations) before it
            # adds one
            "learning_rate": float(schedule(max(int(optimizer.iterations.numpy()) - 1, 0))),
            "loss_scale": steps.loss_scale_of(optimizer),
            "examples": totals["examples"],
            "examples_per_second": (None if seconds is None
                                    else totals["examples"] / max(seconds, 1e-9)),
            "seconds": seconds}


class TrainingLog:
    """The run's event files (summary_dir/train and summary_dir/eval), its hooks and its
    benchmark logger, from the run's start (`resumed_from`) to `end`."""

    def __init__(self, summary_dir: str, *, resumed_from: int, hooks, benchmark_logger,
                 model_dir: str):
        self.train_writer = tf.summary.create_file_writer(os.path.join(summary_dir, "train"))
        self.eval_writer = tf.summary.create_file_writer(os.path.join(summary_dir, "eval"))
        for writer in (self.train_writer, self.eval_writer):
            summaries.mark_start(writer, resumed_from)
        self.hooks = hooks
        self.benchmark_logger = benchmark_logger
        self._drawn_at: dict[str, int] = {}  # each train scalar's latest step in this run
        for hook in hooks:
            hook.begin(model_dir)

    def train_point(self, step: int, metrics: dict[str, float | None]) -> None:
        """One train call's point at `step` (the last step of the call) and its hooks."""
        self._draw(step, metrics)
        for hook in self.hooks:
            hook.after_step(step, metrics)

    def _draw(self, step: int, metrics: dict[str, float | None]) -> None:
        # Leaving as_default flushes the writer: the point is on disk when the program ends
        # without the interpreter's teardown (official/utils/cli.py exit_skipping_teardown).
        with self.train_writer.as_default():
            for name, value in metrics.items():
                if (value is not None and name not in _NOT_DRAWN
                        and self._drawn_at.get(name, -1) < step):
                    tf.summary.scalar(name, value, step)
                    self._drawn_at[name] = step

    @contextlib.contextmanager
    def drawn_when_interrupted(self, manager: tf.train.CheckpointManager,
                               last_call: steps.LastCall, schedule, optimizer):
        """On Ctrl-C or SIGTERM (a KeyboardInterrupt) inside the block: the point of the train
        call the interrupt cut off (raised as the call returned, it lost the call's sums and
        its point), drawn from `last_call` when the manager's latest checkpoint is of the step
        the call ended at, then the interrupt re-raised. A resumed run starts after that step,
        so its curve goes on with neither a gap nor a second point there; when no checkpoint
        holds the step (a diverged step, several workers), the resumed run trains it again
        and draws it itself. Put it outside checkpointing.saved_when_interrupted, which saves
        that checkpoint. The point has no examples_per_second (the interrupt cut off the
        call's timing too), and the hooks are not called."""
        try:
            yield
        except KeyboardInterrupt:
            end_step, num_steps, totals = last_call.read()
            latest = manager.latest_checkpoint
            if num_steps > 0 and latest and checkpoint_step(latest) == end_step:
                metrics = call_metrics(totals, num_steps, None, schedule, optimizer)
                if any(self._drawn_at.get(name, -1) < end_step for name, value in metrics.items()
                       if value is not None and name not in _NOT_DRAWN):
                    self._draw(end_step, metrics)
                    logging.info("interrupted: drew the TensorBoard point of step %d", end_step)
            raise

    def eval_point(self, step: int, eval_metrics: dict) -> None:
        """One validation's point (steps.evaluate's metrics) at `step`."""
        with self.eval_writer.as_default():
            tf.summary.scalar("accuracy", eval_metrics["accuracy"], step)
            tf.summary.scalar("loss", eval_metrics["loss"], step)
            tf.summary.scalar("cross_entropy", eval_metrics["loss"], step)
        if self.benchmark_logger:
            self.benchmark_logger.log_metric("accuracy", eval_metrics["accuracy"],
                                             global_step=step)
            self.benchmark_logger.log_metric("loss", eval_metrics["loss"], global_step=step)

    def end(self, step: int) -> None:
        for hook in self.hooks:
            hook.end(step)
        self.train_writer.flush()
        self.eval_writer.flush()
