"""Train hooks: small callbacks the training loop calls after each train call.

The Estimator's SessionRunHooks no longer exist; these keep the original names and jobs. The
loop (official/core/train_log.py TrainingLog) calls `begin(model_dir)` once,
`after_step(step, metrics)` after every tf.function call (`metrics` holds Python floats: loss,
cross_entropy, accuracy, learning_rate, loss_scale (None without fp16), examples,
examples_per_second, and seconds: the time the call's steps took, which leaves out the
validations, checkpoints and summaries between calls), and `end(step)` once. Not after a call
a Ctrl-C or SIGTERM cut off: its time is lost; only its TensorBoard point is drawn.
"""

from __future__ import annotations

import os

import tensorflow as tf
from absl import logging

from official.utils.flags.core import parse_hooks


class Hook:
    def begin(self, model_dir: str) -> None:
        pass

    def after_step(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def end(self, step: int) -> None:
        pass


class LoggingTensorHook(Hook):
    """Logs loss, accuracy and learning rate every `every_n_steps` steps."""

    def __init__(self, every_n_steps: int = 100):
        self.every_n_steps = every_n_steps
        self._last = None

    def after_step(self, step, metrics):
        if self._last is None or step - self._last >= self.every_n_steps:
            self._last = step
            logging.info("step %d: loss = %.4f, train accuracy = %.4f, learning rate = %.5g",
                         step, metrics["loss"], metrics["accuracy"], metrics["learning_rate"])


class ExamplesPerSecondHook(Hook):
    """Logs training throughput every `every_n_steps`, ignoring the first `warm_steps`
    (tracing and compilation). The time is the train calls' own ("seconds"), as the
    examples_per_second scalar's: a wall clock between calls also counted each validation
    and checkpoint, and logged a fraction of the speed after every one."""

    def __init__(self, every_n_steps: int = 100, warm_steps: int = 2):
        self.every_n_steps = every_n_steps
        self.warm_steps = warm_steps
        self._seen = 0
        self._seconds = 0.0
        self._examples = 0.0
        self._last_step = None
        self.examples_per_second: float | None = None

    def after_step(self, step, metrics):
        self._seen += 1
        if self._seen <= self.warm_steps:
            self._seconds, self._examples, self._last_step = 0.0, 0.0, step
            return
        self._examples += metrics["examples"]
        self._seconds += metrics["seconds"]
        if step - self._last_step >= self.every_n_steps:
            self.examples_per_second = self._examples / max(self._seconds, 1e-9)
            logging.info("step %d: %.1f examples/s", step, self.examples_per_second)
            self._seconds, self._examples, self._last_step = 0.0, 0.0, step


class ProfilerHook(Hook):
    """Records a TensorFlow profiler trace of `num_steps` steps (after a warm-up) into
    `<model_dir>/profile`, readable by TensorBoard's profile plugin."""

    def __init__(self, start_after: int = 1, num_steps: int = 5):
        self.start_after = start_after
        self.num_steps = num_steps
        self._seen = 0
        self._active = False
        self._logdir = None

    def begin(self, model_dir):
        self._logdir = os.path.join(model_dir, "profile")

    def after_step(self, step, metrics):
        self._seen += 1
        if self._seen == self.start_after:
            tf.profiler.experimental.start(self._logdir)
            self._active = True
        elif self._active and self._seen >= self.start_after + self.num_steps:
            self._stop()

    def end(self, step):
        self._stop()

    def _stop(self):
        if self._active:
            tf.profiler.experimental.stop()
            self._active = False


class LoggingMetricHook(Hook):
    """Sends loss, accuracy and learning rate to the benchmark logger every `every_n_steps`."""

    def __init__(self, benchmark_logger, every_n_steps: int = 100):
        self.benchmark_logger = benchmark_logger
        self.every_n_steps = every_n_steps
        self._last = None

    def after_step(self, step, metrics):
        if self._last is None or step - self._last >= self.every_n_steps:
            self._last = step
            for name in ("loss", "accuracy", "learning_rate"):
                self.benchmark_logger.log_metric(f"train_{name}", metrics[name],
                                                 global_step=step)


def get_train_hooks(names, *, every_n_steps: int, benchmark_logger=None) -> list[Hook]:
    """Hooks by name (case-insensitive); ValueError listing the valid names."""
    hooks = []
    for name in parse_hooks(list(names)):
        if name == "LoggingTensorHook":
            hooks.append(LoggingTensorHook(every_n_steps))
        elif name == "ExamplesPerSecondHook":
            hooks.append(ExamplesPerSecondHook(every_n_steps))
        elif name == "ProfilerHook":
            hooks.append(ProfilerHook())
        elif name == "LoggingMetricHook":
            if benchmark_logger is None:
                raise ValueError("--hooks=LoggingMetricHook needs a benchmark logger "
                                 "(set --benchmark_log_dir or --gcp_project)")
            hooks.append(LoggingMetricHook(benchmark_logger, every_n_steps))
    return hooks
