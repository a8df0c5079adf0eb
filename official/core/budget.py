"""A time budget for training (--train_budget_seconds): as many whole epochs as fit.

The same recipe takes 1,400 s on a 2-core CPU with matrix units and about 3,000 s on one
without (benchmarks/RESULTS.md section 14), so "8 epochs" is not a budget. With a budget, the
trainer first times a few steps of the real model on the real input, then fixes the run's
length at the whole epochs that fit in what is left (at most --train_epochs). The length is
fixed before the first real step because the learning-rate schedule and the batch-norm
averaging horizon are laid out over it (a schedule cut short ends at a high learning rate).

Whole epochs, not steps: --train_epochs stays what the run records and resumes by. The choice
is written to config.json ("train_epochs", and "budget" with what it was made from) and a
resumed run keeps it: a second measurement, on a machine busier or idler than the first, would
re-lay the schedule mid-run.

What is counted: from the start of training (reading the manifest) to the last step; the
calibration itself and the start-up it measured (tracing, kernel set-up, the shuffle buffer
filling) are paid again by the real run and counted. Validation passes and the export come on
top (the recipes validate once, at the end).
"""

from __future__ import annotations

import dataclasses
import math
import time

import tensorflow as tf
from absl import logging

from official.utils.misc import distribution_utils

CALIBRATION_STEPS = 20  # timed steps (after a short warm-up call); more only cost budget
WARMUP_STEPS = 3  # first call: tracing, oneDNN kernel creation, the shuffle buffer filling


@dataclasses.dataclass(frozen=True)
class Calibration:
    step_seconds: float  # one training step, warm
    startup_seconds: float  # what a fresh train function costs beyond its steps
    timed_steps: int


@dataclasses.dataclass(frozen=True)
class Plan:
    train_epochs: int
    epochs_that_fit: float  # before rounding down and capping
    estimated_seconds: float  # elapsed + start-up + train_epochs of steps

    def to_dict(self, budget_seconds: float, calibration: Calibration, cap: int) -> dict:
        return {"seconds": budget_seconds, "step_seconds": round(calibration.step_seconds, 5),
                "startup_seconds": round(calibration.startup_seconds, 2),
                "timed_steps": calibration.timed_steps, "max_train_epochs": cap,
                "epochs_that_fit": round(self.epochs_that_fit, 3),
                "estimated_seconds": round(self.estimated_seconds, 1)}


def plan(budget_seconds: float, elapsed_seconds: float, calibration: Calibration,
         steps_per_epoch: int, max_epochs: int) -> Plan:
    """The whole epochs (1 to max_epochs) that fit in what is left of the budget after
    `elapsed_seconds` and the real run's start-up."""
    epoch_seconds = calibration.step_seconds * steps_per_epoch
    left = budget_seconds - elapsed_seconds - calibration.startup_seconds
    fit = max(left, 0.0) / epoch_seconds if epoch_seconds > 0 else float(max_epochs)
    epochs = max(1, min(max_epochs, math.floor(fit)))
    return Plan(epochs, fit, elapsed_seconds + calibration.startup_seconds
                + epochs * epoch_seconds)


def calibrate(train_fn, iterator, steps_per_loop: int) -> Calibration:
    """Time `train_fn` (a throwaway copy of the run's step: model, precision, EMA, input):
    a short warm-up call, then calls of `steps_per_loop` steps until CALIBRATION_STEPS steps
    are timed. Multi-worker: every worker calls it (the steps are collective)."""

    def timed(num_steps: int) -> float:
        started = time.perf_counter()
        totals = train_fn(iterator, tf.constant(num_steps))
        float(totals["loss"])  # wait for the steps to finish
        return time.perf_counter() - started

    warmup = min(WARMUP_STEPS, steps_per_loop)
    first = timed(warmup)
    calls = math.ceil(CALIBRATION_STEPS / steps_per_loop)
    seconds = sum(timed(steps_per_loop) for _ in range(calls))
    step_seconds = seconds / (calls * steps_per_loop)
    return Calibration(step_seconds=step_seconds,
                       startup_seconds=max(0.0, first - warmup * step_seconds),
                       timed_steps=calls * steps_per_loop)


def chief_value(strategy: tf.distribute.Strategy, value: int) -> int:
    """Multi-worker: the chief's `value` on every worker (each worker timed its own steps,
    and only the chief need see model_dir); all train the chief's choice."""
    if distribution_utils.num_workers(strategy) <= 1:
        return value
    with strategy.scope():
        shared = tf.Variable(float(value), trainable=False)
    distribution_utils.broadcast_from_chief(strategy, [shared])
    return int(round(float(shared.numpy())))


def log_plan(budget_seconds: float, calibration: Calibration, result: Plan,
             max_epochs: int) -> None:
    logging.info("train_budget_seconds=%g: a step takes %.3f s (%d steps timed), start-up "
                 "%.1f s; %.2f epochs fit, training %d of at most %d (about %.0f s)",
                 budget_seconds, calibration.step_seconds, calibration.timed_steps,
                 calibration.startup_seconds, result.epochs_that_fit, result.train_epochs,
                 max_epochs, result.estimated_seconds)
    if result.epochs_that_fit < 1:
        logging.warning("train_budget_seconds=%g is less than one epoch (about %.0f s of "
                        "steps) on this machine: training one epoch anyway", budget_seconds,
                        result.estimated_seconds)
