"""Messy inputs real users have: class names typed on another system (Unicode normal forms,
invisible characters), 16-bit PNGs holding 12-bit data, split sizes that are not numbers,
images in per-patient sub-folders."""

from __future__ import annotations

import pytest

from dataset import splits


# --- split sizes ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_a_split_size_that_is_not_a_number_is_a_value_error_naming_the_flag(value):
    with pytest.raises(ValueError, match=r"^--test_size must be a fraction < 1 or a count"):
        splits.split_fractions("tt_split", 0.1, value, 100)
