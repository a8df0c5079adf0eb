"""A time budget for training (--train_budget_seconds): as many steps as fit.

The same recipe takes 1,400 s on a 2-core CPU with matrix units and about 3,000 s on one
without (benchmarks/RESULTS.md section 14), so "8 epochs" is not a budget. With a budget, the
trainer first times a few steps of the real model on the real input, then fixes the run's
length at the steps that fit in what is left (at least one epoch, at most --train_epochs). The
length is fixed before the first real step because the learning-rate schedule and the
batch-norm averaging horizon are laid out over it (a schedule cut short ends at a high learning
rate).

The timed steps are not wasted when they can be kept: the timing runs on a copy of the real
training (model, optimizer, weight average, input), and when the copy's learning rates for
those steps are the planned run's (they are inside the warm-up, which does not depend on the
run's length), the run continues from the copy's state and input instead of starting over.
The copy is built as the run is, over --train_epochs, and a run that keeps its steps is the
copy: its train function, traced once for the timing, trains on (building the run anew traced
the same step a second time: 2-4 s). A shorter plan lays the copy's schedule and batch-norm horizon over its steps
(steps.lay_over): variables of the traced step, the plan's exactly from then on. The kept
steps' batch-norm averages were made at the copy's horizon (a momentum of 1 - 20/steps:
0.970 over MedNIST's 3 epochs, 0.960 over 2.3), as when the run was built anew and took over
the copy's state.

Steps, not whole epochs: rounding down to an epoch threw away up to a whole epoch of the
budget (a third of a 3-epoch run); the schedule does not care where an epoch ends. The choice
is written to config.json ("budget": "train_steps" and what it was made from; "train_epochs"
stays the cap) and a resumed run keeps it: a second measurement, on a machine busier or idler
than the first, would re-lay the schedule mid-run.

How good the estimate is depends on the machine staying as fast as it was while timed: on a
shared 2-core VM, loops of 30 steps vary by 5-7% (SD) over a run, and whole runs by 10-18%. So
the budget is also a deadline (`Deadline`): before each loop of steps the trainer checks that
it ends within the budget, at the speed of the loops so far, and trains only the steps that
do; when none do, the run stops there ("budget_deadline"), short of its planned steps but on
time. The schedule is not re-laid: a run that loses its last 10% to a slower machine stops at
2% of its peak learning rate (cosine), close to where it would have ended. It never stops
before one epoch, the plan's own minimum.

The timing is more often pessimistic than not: it times the first steps, while --cache is
still decoding every image and the machine is warming up (on a 2-core VM the quickstart's steps
ran 6-21% faster later, leaving up to a sixth of its budget unused; RESULTS.md section 18). So
a run that planned its budget itself is lengthened once, halfway through its planned steps (not
before its first epoch ends, when the cache is full, nor before its latest loops make
LOOPS_TIMED loops and LENGTHEN_TIMED_STEPS steps after its first loop): if their speed fits
more steps into what is left of the budget, the run takes them (at most --train_epochs),
and the rest of a learning-rate schedule laid over the run's length is stretched to end at
the new last step (`Stretchable`, official/modeling/stretchable.py: continuous where it is
stretched; Slim's per-epoch decays need no stretch). A run lengthened too far is what the
deadline catches, at the cosine's tail, where the rate is near 0. The batch-norm horizon stays
the plan's. config.json's "budget" records it ("planned_steps", "lengthened_at_step"); a
resumed run rebuilds the stretched schedule and is never lengthened again (its clock
restarted).

What is counted: from the start of training (reading the manifest) to the last step; the
calibration itself and the start-up it measured (tracing, kernel set-up, the shuffle buffer
filling) are paid again by the real run and counted (not when the run keeps the copy's
steps: it goes on in the copy's traced step). Validation passes and the export come on
top (the recipes validate once, at the end).
"""

from __future__ import annotations

import dataclasses
import math
import time

import tensorflow as tf
from absl import logging

from official.core.config import TrainConfig, has_checkpoint
from official.modeling.stretchable import Stretchable
from official.utils.misc import distribution_utils

now = time.monotonic  # the budget's clock (tests replace it)

CALIBRATION_STEPS = 20  # timed steps (after a short warm-up call); more only cost budget
WARMUP_STEPS = 3  # first call: tracing, oneDNN kernel creation, the shuffle buffer filling
# A lengthening is decided on the speed of the latest loops: at least LOOPS_TIMED of them and
# LENGTHEN_TIMED_STEPS steps (a 30-step loop varies by 5-7%), never the process's first loop
# (it traces the train function).
LOOPS_TIMED = 3
LENGTHEN_TIMED_STEPS = 20


@dataclasses.dataclass(frozen=True)
class Calibration:
    step_seconds: float  # one training step, warm
    startup_seconds: float  # what a fresh train function costs beyond its steps
    timed_steps: int
    steps_taken: int = 0  # by the timed copy in all: the warm-up call's and the timed ones


@dataclasses.dataclass(frozen=True)
class Plan:
    train_steps: int
    epochs_that_fit: float  # before rounding down and capping
    estimated_seconds: float  # elapsed + start-up + steps_seconds: the run's end from its start
    steps_per_epoch: int
    elapsed_seconds: float  # spent before the plan (set-up, timing)
    seconds_left: float  # for steps, after the elapsed and the real run's start-up
    steps_seconds: float  # the steps still to train (those the run does not keep)

    @property
    def epochs(self) -> float:
        return self.train_steps / self.steps_per_epoch

    def to_dict(self, budget_seconds: float, calibration: Calibration, cap: int,
                kept_steps: int = 0) -> dict:
        return {"seconds": budget_seconds, "train_steps": self.train_steps,
                "kept_steps": kept_steps,
                "epochs": round(self.epochs, 3),
                "step_seconds": round(calibration.step_seconds, 5),
                "startup_seconds": round(calibration.startup_seconds, 2),
                "timed_steps": calibration.timed_steps, "max_train_epochs": cap,
                "epochs_that_fit": round(self.epochs_that_fit, 3),
                "estimated_seconds": round(self.estimated_seconds, 1)}


def plan(budget_seconds: float, elapsed_seconds: float, calibration: Calibration,
         steps_per_epoch: int, max_epochs: int, steps_done: int = 0) -> Plan:
    """The steps (one epoch to max_epochs of them) that fit in what is left of the budget
    after `elapsed_seconds` and the real run's start-up, counting `steps_done` already
    trained (the timed copy's, when the run keeps them: it goes on in the copy's traced
    step, so it has no start-up to pay)."""
    startup = 0.0 if steps_done else calibration.startup_seconds
    left = max(budget_seconds - elapsed_seconds - startup, 0.0)
    cap = max_epochs * steps_per_epoch
    fit = (steps_done + left / calibration.step_seconds if calibration.step_seconds > 0
           else float(cap))
    train_steps = max(steps_per_epoch, min(cap, math.floor(fit)))
    steps_seconds = max(train_steps - steps_done, 0) * calibration.step_seconds
    return Plan(train_steps, fit / steps_per_epoch, elapsed_seconds + startup + steps_seconds,
                steps_per_epoch, elapsed_seconds, left, steps_seconds)


def calibrate(train_fn, iterator, steps_per_loop: int) -> Calibration:
    """Time `train_fn` (a copy of the run's step: model, precision, EMA, input):
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
                       timed_steps=calls * steps_per_loop,
                       steps_taken=warmup + calls * steps_per_loop)


def budgeted(config: TrainConfig, saved: dict | None, strategy: tf.distribute.Strategy,
             timed_copy, *, steps_per_epoch: int, started: float,
             can_keep=lambda steps_taken, train_steps: False) -> tuple[int, dict]:
    """The steps config.train_budget_seconds allows, and config.json's "budget" entry. A
    resumed run keeps the steps chosen at its start (or lengthened to since).

    Args:
      saved: model_dir's config.json, None for a new run.
      timed_copy: () -> (train function, iterator): a copy of the run's training state and
        input (train_lib builds it as it builds the real ones), timed here.
      started: budget.now() when the run started; the budget counts from there.
      can_keep: (steps the copy took, planned train_steps) -> whether the run can continue
        from the copy's state: then the plan counts those steps as trained, and the entry's
        "kept_steps" says how many (0: the copy is thrown away).

    Raises:
      ValueError: the model_dir has checkpoints from a run started without a budget.
    """
    kept = 0  # the chief's decision: > 0 resume with these steps, -1 refuse, 0 measure
    if saved is not None and has_checkpoint(config.model_dir):
        kept = _saved_steps(saved, steps_per_epoch) if saved.get("train_budget_seconds") else -1
    kept = chief_value(strategy, kept)
    if kept < 0:
        raise ValueError(f"--model_dir={config.model_dir} was started without "
                         "--train_budget_seconds: a budget sets the run's length when it "
                         "starts; resume without it, or use a new --model_dir")
    if kept:
        logging.info("train_budget_seconds: resuming with the %d steps chosen when the run "
                     "started (or lengthened to since)", kept)
        entry = {**((saved or {}).get("budget") or {"seconds": config.train_budget_seconds}),
                 "train_steps": kept}
        # A lengthened run's schedule is rebuilt from these: the chief's, since the other
        # workers may not see model_dir (and so no config.json).
        for key in ("planned_steps", "lengthened_at_step"):
            value = chief_value(strategy, int(entry.get(key, 0)))
            if value:
                entry[key] = value
        return kept, entry
    train_fn, iterator = timed_copy()
    calibration = calibrate(train_fn, iterator, config.steps_per_loop)
    del train_fn, iterator
    elapsed = now() - started
    kept = calibration.steps_taken
    result = plan(config.train_budget_seconds, elapsed, calibration, steps_per_epoch,
                  config.train_epochs, steps_done=kept)
    train_steps = chief_value(strategy, result.train_steps)
    if not (kept and can_keep(kept, train_steps)):  # the same answer on every worker
        kept = 0
        result = plan(config.train_budget_seconds, elapsed, calibration, steps_per_epoch,
                      config.train_epochs)
        train_steps = chief_value(strategy, result.train_steps)
    log_plan(config.train_budget_seconds, calibration, result, config.train_epochs, kept)
    entry = result.to_dict(config.train_budget_seconds, calibration, config.train_epochs,
                           kept_steps=kept)
    return train_steps, {**entry, "train_steps": train_steps}


def _saved_steps(saved: dict, steps_per_epoch: int) -> int:
    """The steps a budgeted run chose (runs before 2026-12-03 recorded whole epochs as
    train_epochs)."""
    steps = (saved.get("budget") or {}).get("train_steps")
    return int(steps) if steps else int(saved["train_epochs"]) * steps_per_epoch


def same_rates(schedule, other, num_steps: int) -> bool:
    """Whether two learning-rate schedules give steps 0 .. num_steps-1 the same rates."""
    return all(math.isclose(float(schedule(tf.constant(step, tf.int64))),
                            float(other(tf.constant(step, tf.int64))),
                            rel_tol=1e-6, abs_tol=1e-12) for step in range(num_steps))


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
             max_epochs: int, kept_steps: int = 0) -> None:
    """Each figure is said with what it counts: the run's end is reckoned from its start,
    so it includes the timing already spent, which a step count times the step time does
    not (a reader once found '37 steps x 0.811 s' and 'about 52 s' contradictory)."""
    logging.info("train_budget_seconds=%g: a step takes %.3f s (%d steps timed), start-up "
                 "%.1f s, %.1f s of the budget spent on timing and set-up; %.2f epochs fit, "
                 "training %d steps = %.2f of at most %d epochs (%.0f s of steps; the run "
                 "ends about %.0f s after its start)%s", budget_seconds,
                 calibration.step_seconds, calibration.timed_steps,
                 calibration.startup_seconds, result.elapsed_seconds, result.epochs_that_fit,
                 result.train_steps, result.epochs, max_epochs, result.steps_seconds,
                 result.estimated_seconds,
                 f"; the {kept_steps} timed steps are kept as the run's first (no start-up "
                 "again)" if kept_steps
                 else "")
    if result.epochs_that_fit < 1:
        # A run that keeps the timed steps has no start-up to pay again (plan).
        logging.warning("train_budget_seconds=%g leaves %.0f s for steps after %s, less than "
                        "one epoch's %.0f s on this machine: training one epoch anyway (the "
                        "run ends about %.0f s after its start)",
                        budget_seconds, result.seconds_left,
                        "timing" if kept_steps else "timing and start-up",
                        result.steps_per_epoch * calibration.step_seconds,
                        result.estimated_seconds)


class Deadline:
    """The budget as a deadline: how many of a loop's steps end before it, and once whether
    the run can be longer than planned (see the module docstring). Multi-worker: every worker
    asks, and all take the chief's answer, so that the workers run the same collective steps
    and stop together."""

    def __init__(self, budget_seconds: float, started: float, *, step_seconds: float,
                 min_steps: int, strategy: tf.distribute.Strategy,
                 lengthen_at: int | None = None, max_steps: int = 0,
                 steps_per_epoch: int = 1):
        self.budget_seconds = budget_seconds
        self.started = started
        self.step_seconds = step_seconds  # the calibration's, until a loop has been timed
        self.min_steps = min_steps
        self.lengthen_at = lengthen_at  # None: never (resumed, at --train_epochs, max_train_steps)
        self.max_steps = max_steps  # what a lengthened run may reach (--train_epochs of steps)
        self.steps_per_epoch = steps_per_epoch
        self.reached = False
        self.excluded = 0.0  # seconds of validation passes: not part of the budget
        self._loops: list[tuple[int, float]] | None = None  # (steps, seconds), latest last;
        # None until the first loop (not timed for a lengthening) is over
        self._strategy = strategy
        self._shared = None
        if distribution_utils.num_workers(strategy) > 1:
            with strategy.scope():
                self._shared = tf.Variable(0.0, trainable=False)

    @classmethod
    def for_run(cls, config: TrainConfig, entry: dict, started: float, *,
                strategy: tf.distribute.Strategy, steps_per_epoch: int, train_steps: int,
                resumed: bool) -> "Deadline":
        """The deadline of a run budgeted as `entry` says. It may lengthen the run (once,
        halfway and past the first epoch) when this run made the plan (not `resumed`), the plan
        is short of --train_epochs and no --max_train_steps is set."""
        max_steps = config.train_epochs * steps_per_epoch
        can_lengthen = not resumed and train_steps < max_steps and not config.max_train_steps
        return cls(config.train_budget_seconds, started,
                   step_seconds=entry.get("step_seconds", 0.0),
                   min_steps=min(steps_per_epoch, train_steps), strategy=strategy,
                   lengthen_at=max(steps_per_epoch, train_steps // 2) if can_lengthen else None,
                   max_steps=max_steps, steps_per_epoch=steps_per_epoch)

    def _chiefs(self, value: int) -> int:
        if self._shared is None:
            return value
        self._shared.assign(float(value))
        distribution_utils.broadcast_from_chief(self._strategy, [self._shared])
        return int(round(float(self._shared.numpy())))

    def steps_that_fit(self, step: int, wanted: int) -> int:
        """Of the `wanted` steps after global step `step`, those that end by the deadline (all
        of them up to min_steps); 0 = stop here."""
        left = self.budget_seconds - self.used_seconds()
        fit = math.floor(left / self.step_seconds) if self.step_seconds > 0 else wanted
        steps = self._chiefs(min(wanted, max(fit, self.min_steps - step, 0)))
        self.reached = steps < wanted
        return steps

    def _recent_speed(self) -> tuple[float, int] | None:
        """(seconds a step, loops) over the fewest latest loops that make LOOPS_TIMED loops
        and LENGTHEN_TIMED_STEPS steps; None while there are not that many."""
        steps = seconds = loops = 0
        for loop_steps, loop_seconds in reversed(self._loops or []):
            steps, seconds, loops = steps + loop_steps, seconds + loop_seconds, loops + 1
            if loops >= LOOPS_TIMED and steps >= LENGTHEN_TIMED_STEPS:
                return seconds / steps, loops
        return None

    def lengthened(self, step: int, train_steps: int) -> int:
        """Once, at the first call from step `lengthen_at` on with enough loops timed: the
        steps (at most `max_steps`) that end within the budget at the latest loops' speed,
        when more than `train_steps`; else `train_steps`. (Every worker has timed the same
        loops, so all decide at the same call.)"""
        if self.lengthen_at is None or step < self.lengthen_at or step >= train_steps:
            return train_steps
        speed = self._recent_speed()
        if speed is None:
            return train_steps  # asked again after the next loop
        self.lengthen_at = None
        step_seconds, loops = speed
        left = self.budget_seconds - self.used_seconds()
        fit = step + math.floor(left / step_seconds) if step_seconds > 0 else train_steps
        longer = self._chiefs(max(train_steps, min(self.max_steps, fit)))
        if longer > train_steps:
            logging.info("train_budget_seconds=%g: %.3f s a step over the last %d loops, "
                         "faster than timed: lengthened from %d to %d steps at step %d, the "
                         "rest of the learning-rate schedule stretched to end there",
                         self.budget_seconds, step_seconds, loops, train_steps, longer, step)
        return longer

    def lengthen(self, step: int, train_steps: int, schedule, entry: dict) -> int:
        """`lengthened`, and when longer: `schedule`'s rest stretched (a Stretchable; other
        schedules are not laid over the run) and config.json's budget `entry` updated."""
        longer = self.lengthened(step, train_steps)
        if longer > train_steps:
            if isinstance(schedule, Stretchable):
                schedule.stretch(step, longer)
            entry.update(train_steps=longer, planned_steps=train_steps, lengthened_at_step=step,
                         epochs=round(longer / self.steps_per_epoch, 3))
        return longer

    def used_seconds(self) -> float:
        """Seconds of the budget spent so far (validation passes excluded)."""
        return now() - self.started - self.excluded

    def observe(self, steps: int, seconds: float) -> None:
        """A loop of `steps` steps took `seconds`, its logging included: the speed the next
        loop is judged by (the latest, not an average: a machine that slowed down stays slow
        often enough that an average would overrun)."""
        if steps > 0:
            self.step_seconds = seconds / steps
            if self._loops is None:
                self._loops = []
            else:
                self._loops = [*self._loops[-LENGTHEN_TIMED_STEPS:], (steps, seconds)]
