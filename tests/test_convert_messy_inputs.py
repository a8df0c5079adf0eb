"""Messy inputs real users have: class names typed on another system (Unicode normal forms,
invisible characters), 16-bit PNGs holding 12-bit data, split sizes that are not numbers,
images in per-patient sub-folders."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
from PIL import Image

from dataset import splits
from tests.test_convert import convert


# --- class names --------------------------------------------------------------------


@pytest.mark.parametrize("spelling", [
    unicodedata.normalize("NFD", "Pelvis Å"),  # macOS file names and some editors
    "Pelvis Å\u200b",  # a zero-width space pasted from a web page
])
def test_a_class_name_that_only_looks_different_is_the_same_class(
        tmp_path, make_images_labels_dataset, spelling):
    root = make_images_labels_dataset({"Pelvis Å": 3, "Hand": 3}, size=16)
    (root / "labels" / "000003.txt").write_text(spelling + "\n", encoding="utf-8")
    manifest = convert(root, tmp_path / "out", output_name="all")
    assert manifest["classes"] == ["Hand", unicodedata.normalize("NFC", "Pelvis Å")]
    assert manifest["splits"]["all"]["class_counts"] == {"Hand": 3, "Pelvis Å": 3}


def test_class_folder_names_in_another_normal_form_are_one_class(tmp_path):
    root = tmp_path / "ds"
    for index, folder in enumerate([unicodedata.normalize("NFC", "Schädel"),
                                    unicodedata.normalize("NFD", "Schädel"), "Hand"]):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for count in range(2):
            Image.fromarray(np.full((8, 8), 40 * index, np.uint8)).save(
                root / folder / f"{index}_{count}.png")
    if len(list(root.iterdir())) < 3:
        pytest.skip("this file system normalises names itself (both folders are one)")
    manifest = convert(root, tmp_path / "out", output_name="all")
    assert manifest["splits"]["all"]["class_counts"] == {"Hand": 2, "Schädel": 4}


# --- split sizes ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_a_split_size_that_is_not_a_number_is_a_value_error_naming_the_flag(value):
    with pytest.raises(ValueError, match=r"^--test_size must be a fraction < 1 or a count"):
        splits.split_fractions("tt_split", 0.1, value, 100)
