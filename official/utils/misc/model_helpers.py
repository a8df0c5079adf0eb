"""Small helpers for the training loop."""

from __future__ import annotations

import math


def past_stop_threshold(stop_threshold: float | None, eval_metric: float) -> bool:
    """True when `eval_metric` has reached `stop_threshold` (never when the threshold is None).

    Raises:
      ValueError: a threshold or metric that is not a number.
    """
    if stop_threshold is None:
        return False
    if not isinstance(stop_threshold, (int, float)) or math.isnan(stop_threshold):
        raise ValueError(f"stop_threshold must be a number, got {stop_threshold!r}")
    if not isinstance(eval_metric, (int, float)):
        raise ValueError(f"eval_metric must be a number, got {eval_metric!r}")
    return eval_metric >= stop_threshold


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Full batches per epoch (at least one, so tiny datasets still train)."""
    return max(1, num_examples // global_batch_size)


def resolve_small_input(small_input: bool | None, image_size: int) -> bool:
    """`--small_input` when given, else on for images of 64 px or less (MedNIST, MedMNIST)."""
    return image_size <= 64 if small_input is None else bool(small_input)
