"""benchmarks/blind_review.py: failing groups mixed with same-class controls for a reader who
sees neither the errors nor the group names, and the reader's verdicts scored against the key."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import blind_review
from tests.conftest import one_error_line
from tests.test_holdout_report import converted_with_groups, eval_dir


def test_choose_pairs_each_failing_group_with_a_control_of_its_class():
    names = ["a-0", "a-1", "a-2", "b-0", "b-1", "c-0"]
    sizes = np.array([10, 10, 4, 10, 10, 10])
    errors = np.array([5, 0, 0, 3, 1, 2])
    key = blind_review.choose(names, sizes, errors, min_errors=3, min_share=0.25, seed=0)
    kinds = {entry["group"]: entry["kind"] for entry in key.values()}
    # a-0 and b-0 fail (c-0: 2 errors, under 3); a-2 is too small to control, b-1 is 10% wrong.
    assert kinds == {"a-0": "failing", "b-0": "failing", "a-1": "control"}
    assert sorted(key) == ["G00", "G01", "G02"]
    assert key[next(n for n in key if key[n]["group"] == "a-0")]["errors"] == 5
    # The order is shuffled by the seed, the same draw for the same seed.
    assert key == blind_review.choose(names, sizes, errors, 3, 0.25, 0)
    orders = {tuple(entry["group"] for entry in blind_review.choose(
        names, sizes, errors, 3, 0.25, seed).values()) for seed in range(20)}
    assert len(orders) > 1


def test_score_counts_verdicts_and_the_ceiling_without_absent_groups():
    key = {"G00": {"group": "a-0", "kind": "failing", "errors": 8, "images": 10},
           "G01": {"group": "a-1", "kind": "control", "errors": 0, "images": 6},
           "G02": {"group": "b-0", "kind": "failing", "errors": 2, "images": 4}}
    verdicts = {"G00": {"verdict": "absent"}, "G01": {"verdict": "visible"}, "G02": "unsure"}
    lines = blind_review.score(key, verdicts, total_images=100, total_errors=12).splitlines()
    assert lines[1].split() == ["failing", "visible", "0", "0", "0"]
    assert lines[2].split() == ["failing", "absent", "1", "10", "8"]
    assert lines[3].split() == ["failing", "unsure", "1", "4", "2"]
    assert lines[4].split() == ["control", "visible", "1", "6", "0"]
    assert lines[-1] == ("errors in groups called absent: 8 of 12; accuracy 0.8800, 0.9200 if "
                         "every other error were gone")
    second = {"G00": "absent", "G01": "unsure", "G02": "unsure"}
    assert blind_review.agreement(key, verdicts, second) == (
        "the readers agree on 2 of 3 rows; both call 1 absent, 1 of them failing groups (8 "
        "errors)")
    with pytest.raises(ValueError, match="no verdict for G02"):
        blind_review.score(key, {"G00": "absent", "G01": "absent"}, 100, 12)
    with pytest.raises(ValueError, match="G00: 'maybe' is not one of visible, absent, unsure"):
        blind_review.score(key, {"G00": "maybe", "G01": "absent", "G02": "absent"}, 100, 12)


def _run(*flags):
    blind_review.main(blind_review.parse_flags(["blind_review.py", *flags]))


def test_cli_makes_unmarked_sheets_then_scores_the_verdicts(tmp_path, capsys):
    converted_with_groups(tmp_path, 10, 5)
    eval_dir(tmp_path / "e", {"a": 0.9, "b": 0.6}, ["b/b5.png", "b/b6.png", "b/b7.png",
                                                      "b/b8.png", "a/a0.png"], 20)
    review = tmp_path / "review"
    make = [f"--data_dir={tmp_path / 'data'}", "--split=data",
            f"--groups_csv={tmp_path / 'groups.csv'}", f"--eval_dir={tmp_path / 'e'}",
            f"--output_dir={review}"]
    capsys.readouterr()
    _run(*make)
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"1 failing groups and 1 controls on 1 sheets in {review} (key.json: not for the reader)")
    key = json.loads((review / "key.json").read_text())
    assert {entry["group"]: entry["kind"] for entry in key["groups"].values()} == {
        "b-1": "failing", "b-0": "control"}
    assert (key["images"], key["errors"]) == (20, 5)
    from PIL import Image
    with Image.open(review / "sheet0.png") as sheet:
        pixels = np.asarray(sheet.convert("RGB"))
    assert not np.any(np.all(pixels == (255, 0, 0), axis=-1))  # no error marks for the reader

    # A second draw into the same folder would not match its sheets.
    line = one_error_line(capsys, "blind_review.py", lambda: _run(*make))
    assert "holds a key already" in line

    failing = next(n for n, e in key["groups"].items() if e["kind"] == "failing")
    control = next(n for n, e in key["groups"].items() if e["kind"] == "control")
    (review / "verdicts.json").write_text(json.dumps({failing: {"verdict": "absent"},
                                                      control: {"verdict": "visible"}}))
    _run(f"--output_dir={review}", f"--verdicts={review / 'verdicts.json'}")
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == ("errors in groups called absent: 4 of 5; accuracy 0.7500, 0.8000 if "
                         "every other error were gone")

    # Another model's errors on the same split, split by the same verdicts.
    eval_dir(tmp_path / "e2", {"a": 0.9, "b": 0.9}, ["b/b5.png", "a/a0.png", "a/a9.png"], 20)
    score = [f"--output_dir={review}", f"--verdicts={review / 'verdicts.json'}"]
    _run(*score, f"--groups_csv={tmp_path / 'groups.csv'}",
         f"--compare_eval_dirs={tmp_path / 'e'},{tmp_path / 'e2'}")
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == [f"{tmp_path / 'e'}: 5 errors, 4 in groups called absent, 1 elsewhere",
                          f"{tmp_path / 'e2'}: 3 errors, 1 in groups called absent, 2 elsewhere"]
    line = one_error_line(capsys, "blind_review.py", lambda: _run(
        *score, f"--compare_eval_dirs={tmp_path / 'e2'}"))
    assert "--compare_eval_dirs needs the --groups_csv the split was made with" in line
    eval_dir(tmp_path / "e3", {"a": 1.0, "b": 1.0}, [], 7)
    line = one_error_line(capsys, "blind_review.py", lambda: _run(
        *score, f"--groups_csv={tmp_path / 'groups.csv'}",
        f"--compare_eval_dirs={tmp_path / 'e3'}"))
    assert f"{tmp_path / 'e3'}: scored 7 images, the reviewed split has 20" in line

    # A key of another shape (an older draw's) and verdicts that are not an object.
    other = tmp_path / "other"
    other.mkdir()
    (other / "key.json").write_text(json.dumps({"key": {}, "high": [], "controls": []}))
    line = one_error_line(capsys, "blind_review.py", lambda: _run(
        f"--output_dir={other}", f"--verdicts={review / 'verdicts.json'}"))
    assert f"{other / 'key.json'}: not a key written by blind_review.py" in line
    (tmp_path / "list.json").write_text("[]")
    line = one_error_line(capsys, "blind_review.py", lambda: _run(
        f"--output_dir={review}", f"--verdicts={tmp_path / 'list.json'}"))
    assert f"{tmp_path / 'list.json'}: not a JSON object of row -> verdict" in line

    line = one_error_line(capsys, "blind_review.py", lambda: _run(
        f"--output_dir={tmp_path / 'missing' / 'r'}", *make[:-1]))
    assert f"--output_dir: folder {tmp_path / 'missing'} does not exist" in line
    (tmp_path / "a_file").write_text("")
    line = one_error_line(capsys, "blind_review.py", lambda: _run(
        f"--output_dir={tmp_path / 'a_file'}", *make[:-1]))
    assert f"--output_dir: {tmp_path / 'a_file'} is a file, not a folder" in line
    line = one_error_line(capsys, "blind_review.py", lambda: _run(f"--output_dir={review}x"))
    assert "--data_dir is needed to make the sheets" in line
