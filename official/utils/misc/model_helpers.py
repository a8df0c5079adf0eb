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


SMALL_INPUT_MAX_SIZE = 32


def resolve_small_input(small_input: bool | None, image_size: int) -> bool:
    """`--small_input` when given, else on for images of 32 px or less (MedMNIST's 28 px).

    Not at 64 px: the stride-1 stem keeps 64x64 maps through the first stage, ~16x the cost
    of the ImageNet stem, and the ImageNet stem already reaches 99.8% on 64 px MedNIST."""
    return image_size <= SMALL_INPUT_MAX_SIZE if small_input is None else bool(small_input)
