"""A --groups_csv whose rows the converter cannot take is listed with the dataset's other
problems (one line each, exit 1, nothing written); a CSV that cannot be read at all stops the
conversion at once."""

from __future__ import annotations

import pytest

from dataset import groups_csv
from dataset.conversion_plan import ConversionError
from tests.test_convert import convert, make_class_folders
from tests.test_convert_errors import error_line, run_cli, truncate


def test_bad_rows_are_listed_with_the_other_problems(tmp_path):
    # A contradicting row stopped the conversion alone: the bad image below, and the row
    # that matches no file, came up only in the run after it was fixed.
    root = make_class_folders(tmp_path / "ds", {"Chest": 3, "Hand": 3})
    truncate(root / "Hand" / "hand0001.png")
    csv_path = tmp_path / "groups.csv"
    csv_path.write_text("file,group\nchest0000,a\nchest0001;b\nchest0000,c\nnosuch,d\n")
    result = run_cli(f"--dataset_dir={root}", f"--output_dir={tmp_path / 'out'}",
                     f"--groups_csv={csv_path}")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: --groups_csv {csv_path}: line 3 needs 'file,group'",
        f"error: --groups_csv {csv_path}: line 4 puts 'chest0000' in group 'c', an earlier "
        "row in 'a'",
        f"error: --groups_csv {csv_path}: 1 of 2 row(s) match no file in --dataset_dir "
        "(nosuch)",
        "error: Hand/hand0001.png: undecodable PNG: image file is truncated",
        "error: 4 problem(s); nothing was written"]
    assert not (tmp_path / "out").exists()


def test_skip_cannot_get_past_a_bad_row(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"Chest": 3, "Hand": 3})
    truncate(root / "Hand" / "hand0001.png")
    csv_path = tmp_path / "groups.csv"
    csv_path.write_text("chest0000,a\nchest0000,b\n")
    with pytest.raises(ConversionError) as error:
        convert(root, tmp_path / "out", groups_csv=str(csv_path), on_error="skip")
    assert error.value.problems == [f"--groups_csv {csv_path}: line 2 puts 'chest0000' in "
                                    "group 'b', an earlier row in 'a'"]
    assert error.value.would_skip == ["Hand/hand0001.png: undecodable PNG: image file is "
                                      "truncated"]
    assert not (tmp_path / "out").exists()


def test_a_csv_of_another_shape_lists_its_first_rows_and_counts_the_rest(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"Chest": 2, "Hand": 2})
    csv_path = tmp_path / "groups.csv"
    csv_path.write_text("".join(f"chest{index:04d};g\n" for index in range(25)))
    with pytest.raises(ConversionError) as error:
        convert(root, tmp_path / "out", groups_csv=str(csv_path))
    shown = groups_csv.MAX_ROWS_LISTED
    assert error.value.problems == [
        *(f"--groups_csv {csv_path}: line {number} needs 'file,group'"
          for number in range(1, shown + 1)),
        f"--groups_csv {csv_path}: {25 - shown} more row(s) it cannot take (the first "
        f"{shown} are listed above)"]


def test_a_csv_it_cannot_read_stops_at_once(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"Chest": 3, "Hand": 3})
    truncate(root / "Hand" / "hand0001.png")
    csv_path = tmp_path / "groups.csv"
    csv_path.write_bytes(b"chest0000,\xff\n")
    result = run_cli(f"--dataset_dir={root}", f"--output_dir={tmp_path / 'out'}",
                     f"--groups_csv={csv_path}")
    assert result.returncode == 1
    assert error_line(result).startswith(f"error: --groups_csv {csv_path}: cannot read "
                                         "('utf-8' codec can't decode byte 0xff")
    assert not (tmp_path / "out").exists()


def test_read_groups_csv_still_refuses_the_whole_file_for_a_bad_row(tmp_path):
    """The benchmarks' readers (holdout_report, blind_review) take the CSV whole."""
    path = tmp_path / "groups.csv"
    path.write_text("a,g1\nb\na,g2\n")
    with pytest.raises(ValueError) as error:
        groups_csv.read_groups_csv(str(path))
    assert str(error.value) == (f"--groups_csv {path}: line 2 needs 'file,group' (and 1 more "
                                "row(s) it cannot take)")
    assert groups_csv.read_groups_rows(str(path)) == (
        {"a": "g1"}, ["line 2 needs 'file,group'",
                      "line 3 puts 'a' in group 'g2', an earlier row in 'g1'"])
