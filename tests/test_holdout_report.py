"""benchmarks/holdout_report.py: cluster-bootstrap intervals over held-out groups, paired
differences, rank correlation with given recalls."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from benchmarks import holdout_report
from dataset.convert import ConvertConfig, convert_dataset
from tests.conftest import one_error_line, write_image


def test_errors_in_one_group_widen_the_interval_and_equal_models_differ_by_zero():
    sizes = np.array([10] * 20)
    clustered = np.zeros(20)
    clustered[0] = 10  # one scan wholly wrong
    spread = np.full(20, 0.5)  # the same 10 errors spread over every group
    draws = holdout_report.cluster_bootstrap(sizes, np.stack([clustered, spread, clustered]),
                                             2000, 0)
    assert draws.shape == (2000, 3)
    width = np.ptp(np.percentile(draws, [2.5, 97.5], axis=0), axis=0)
    assert width[0] > 5 * width[1]  # same accuracy (0.95), a far wider interval
    np.testing.assert_allclose(draws.mean(axis=0), [0.95, 0.95, 0.95], atol=0.01)
    assert np.all(draws[:, 2] == draws[:, 0])  # paired: the same draws for every model


def test_spearman_ranks_with_ties():
    assert holdout_report.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert holdout_report.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    # Ties take their mean rank: ranks [1.5, 1.5, 3] against [1, 2, 3].
    assert holdout_report.spearman([5, 5, 9], [1, 2, 3]) == pytest.approx(np.sqrt(3) / 2)


def eval_dir(folder, names, wrong, total):
    """A dicom_eval.py report: metrics.json and misclassified.csv (the files this reads)."""
    folder.mkdir()
    per_class = {name: {"recall": recall} for name, recall in names.items()}
    (folder / "metrics.json").write_text(json.dumps({
        "num_examples": total, "accuracy": 1 - len(wrong) / total,
        "class_names": list(names), "per_class": per_class}))
    with open(folder / "misclassified.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "true", "predicted", "probability", "true_class_probability"])
        writer.writerows([file, "a", "b", 0.9, 0.1] for file in wrong)


def converted_with_groups(tmp_path, per_class: int, group_size: int, *,
                          ungrouped: tuple[str, ...] = ()):
    """Classes a and b of `per_class` random 8x8 PNGs each, converted to tmp_path/data (one
    split, "data"), and tmp_path/groups.csv putting each class's images in runs of
    `group_size` ("a-0", "a-1", ...), leaving out the files named in `ungrouped`."""
    rng = np.random.default_rng(per_class * 100 + group_size)
    for name in ("a", "b"):
        for index in range(per_class):
            write_image(tmp_path / "ds" / name / f"{name}{index}.png",
                        rng.integers(0, 255, (8, 8), dtype=np.uint8))
    convert_dataset(ConvertConfig(dataset_name="t", dataset_dir=str(tmp_path / "ds"),
                                  output_dir=str(tmp_path / "data"), need_split="None",
                                  num_workers=1, show_progress=False))
    rows = [(f"{name}/{name}{index}.png", f"{name}-{index // group_size}")
            for name in ("a", "b") for index in range(per_class)]
    with open(tmp_path / "groups.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("file", "group"),
                                      *[row for row in rows if row[0] not in ungrouped]])


def _run(*flags):
    holdout_report.main(holdout_report.parse_flags(["holdout_report.py", *flags]))


def test_cli_reports_each_model_and_the_difference_from_the_first(tmp_path, capsys):
    # Groups of three images; "b/b5.png" is left out of the CSV: its own group.
    converted_with_groups(tmp_path, 6, 3, ungrouped=("b/b5.png",))
    eval_dir(tmp_path / "one", {"a": 1.0, "b": 0.5}, ["b/b3.png", "b/b4.png", "b/b5.png"], 12)
    eval_dir(tmp_path / "two", {"a": 1.0, "b": 1.0}, [], 12)
    capsys.readouterr()
    _run(f"--data_dir={tmp_path / 'data'}", "--split=data",
         f"--groups_csv={tmp_path / 'groups.csv'}",
         f"--eval_dirs={tmp_path / 'one'},{tmp_path / 'two'}", "--reference_recall=a=0.9,b=0.8")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("5 held-out groups, 12 images")
    assert lines[1].startswith(f"{tmp_path / 'one'}: accuracy 0.7500 (95% ")
    assert "errors in 2 groups; worst b 0.500, a 1.000" in lines[1]
    assert lines[1].endswith("rank correlation with the reference recall +1.00")
    assert lines[2].startswith(f"{tmp_path / 'two'}: accuracy 1.0000 (95% 1.0000-1.0000)")
    assert lines[2].endswith("rank correlation with the reference recall undefined (equal "
                             "recalls)")
    assert lines[3].startswith(f"  minus {tmp_path / 'one'}: +0.2500 (95% +")
    assert len(lines) == 4  # model two gets every group right: no group fails for both

    # Both models wrong on all of group b-1 (b3, b4): listed, and each accuracy without it.
    eval_dir(tmp_path / "three", {"a": 1.0, "b": 0.6}, ["b/b3.png", "b/b4.png"], 12)
    _run(f"--data_dir={tmp_path / 'data'}", "--split=data",
         f"--groups_csv={tmp_path / 'groups.csv'}",
         f"--eval_dirs={tmp_path / 'one'},{tmp_path / 'three'}")
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == ("groups every model gets >= 90% wrong: 1 (2 images: b-1); accuracy "
                         "without them: 0.9000, 1.0000")


def test_a_report_of_another_split_is_one_line(tmp_path, capsys):
    write_image(tmp_path / "ds" / "a" / "a0.png", np.zeros((8, 8), np.uint8))
    write_image(tmp_path / "ds" / "b" / "b0.png", np.zeros((8, 8), np.uint8))
    convert_dataset(ConvertConfig(dataset_name="t", dataset_dir=str(tmp_path / "ds"),
                                  output_dir=str(tmp_path / "data"), need_split="None",
                                  num_workers=1, show_progress=False))
    (tmp_path / "groups.csv").write_text("file,group\n")
    eval_dir(tmp_path / "e", {"a": 1.0, "b": 1.0}, [], 7)
    line = one_error_line(capsys, "holdout_report.py", lambda: _run(
        f"--data_dir={tmp_path / 'data'}", "--split=data",
        f"--groups_csv={tmp_path / 'groups.csv'}", f"--eval_dirs={tmp_path / 'e'}"))
    assert f"{tmp_path / 'e'}: scored 7 images, the data split of" in line and "has 2" in line
    line = one_error_line(capsys, "holdout_report.py", lambda: _run(
        f"--data_dir={tmp_path / 'data'}", "--split=data",
        f"--groups_csv={tmp_path / 'groups.csv'}", f"--eval_dirs={tmp_path / 'missing'}"))
    assert f"{tmp_path / 'missing'}: not a dicom_eval.py report" in line


def test_worst_groups_rank_by_errors_and_say_what_they_were_called():
    names = ["a-0", "a-1", "b-0"]
    sizes = np.array([4, 2, 3])
    errors = np.array([2.0, 2.0, 0.0])
    files = ["a/0", "a/1", "a/2", "a/3", "a/4", "a/5", "b/0", "b/1", "b/2"]
    group_of = ["a-0"] * 4 + ["a-1"] * 2 + ["b-0"] * 3
    predicted = {"a/0": "c", "a/1": "b", "a/4": "b", "a/5": "b"}
    order, lines = holdout_report.worst_groups(names, sizes, errors, group_of, predicted, files,
                                               5)
    # Equal counts: the group with the larger share wrong first; a group without errors never.
    assert order == [1, 0]
    assert lines == ["  a-1: 2 of 2 wrong (called b 2)", "  a-0: 2 of 4 wrong (called b 1, c 1)"]


def test_contact_sheet_marks_the_wrong_images_and_thins_long_groups():
    grey = np.full((8, 8, 1), 200, np.uint8)
    rows = [("one", [(grey, True), (grey, False)]),
            ("two", [(grey, index % 2 == 0) for index in range(25)])]
    sheet = np.asarray(holdout_report.contact_sheet(rows))
    tile, gap, bar = holdout_report.SHEET_TILE, 2, 4
    assert sheet.shape == (2 * (tile + bar + gap),
                           holdout_report.SHEET_LABEL_WIDTH + 10 * (tile + gap), 3)
    left = holdout_report.SHEET_LABEL_WIDTH
    assert tuple(sheet[0, left]) == (255, 0, 0)  # first image wrong: a red bar
    assert tuple(sheet[0, left + tile + gap]) != (255, 0, 0)  # second right: none
    assert tuple(sheet[bar + 1, left + 1]) == (200, 200, 200)  # the image itself
    # 25 images thin to 10 evenly spaced, the first and last among them; nothing past row one's 2.
    row_two = tile + bar + gap
    assert tuple(sheet[row_two + bar + 1, left + 9 * (tile + gap) + 1]) == (200, 200, 200)
    assert tuple(sheet[bar + 1, left + 2 * (tile + gap) + 1]) == (32, 32, 32)


def test_cli_lists_the_worst_groups_and_writes_their_sheet(tmp_path, capsys):
    converted_with_groups(tmp_path, 6, 3)
    eval_dir(tmp_path / "one", {"a": 1.0, "b": 0.5}, ["b/b3.png", "b/b4.png", "a/a0.png"], 12)
    flags = [f"--data_dir={tmp_path / 'data'}", "--split=data",
             f"--groups_csv={tmp_path / 'groups.csv'}", f"--eval_dirs={tmp_path / 'one'}"]
    capsys.readouterr()
    _run(*flags, "--worst_groups=5", f"--contact_sheet={tmp_path / 'sheet.png'}")
    lines = capsys.readouterr().out.splitlines()
    assert lines[-4:] == [f"{tmp_path / 'one'}: the 2 groups with most errors",
                          "  b-1: 2 of 3 wrong (called b 2)", "  a-0: 1 of 3 wrong (called b 1)",
                          f"contact sheet of those groups: {tmp_path / 'sheet.png'}"]
    from PIL import Image
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.size[1] == 2 * (holdout_report.SHEET_TILE + 6)
    assert not list(tmp_path.glob("*.tmp-*"))

    line = one_error_line(capsys, "holdout_report.py", lambda: _run(
        *flags, f"--contact_sheet={tmp_path / 'sheet2.png'}"))
    assert "--contact_sheet shows the --worst_groups: set --worst_groups=N" in line
    line = one_error_line(capsys, "holdout_report.py", lambda: _run(
        *flags, "--worst_groups=1", f"--contact_sheet={tmp_path / 'nowhere' / 's.png'}"))
    assert f"--contact_sheet: folder {tmp_path / 'nowhere'} does not exist" in line
    assert not (tmp_path / "sheet2.png").exists()
