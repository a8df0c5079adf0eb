"""Class-folder names (``DIR/<Class>/``) go through the rule a label file's text does: a
control character or a direction control in a folder's name is refused, naming the folder
with the character escaped; other non-ASCII names (accents, joiners) are class names."""

from __future__ import annotations

import unicodedata

import pytest

from dataset import sources
from tests.test_convert import convert, make_class_folders
from tests.test_convert_errors import error_line, run_cli


@pytest.mark.parametrize("folder, shown, code", [
    ("Hand\x1b[2J", "Hand\\x1b[2J", "U+001B"),  # an escape sequence: it cleared the terminal
    ("Ha\x01nd", "Ha\\x01nd", "U+0001"),
    ("\u202eHand", "\\u202eHand", "U+202E"),  # a direction override: prints as "dnaH"
    ("Hand\u2066Left", "Hand\\u2066Left", "U+2066"),  # a direction isolate
], ids=["escape", "C0 control", "direction override", "direction isolate"])
def test_a_class_folder_named_with_a_control_character_is_a_problem(tmp_path, folder, shown,
                                                                      code):
    # The folder's name was taken as a class name as it was, printed raw in the summary,
    # labels.txt and every report.
    root = make_class_folders(tmp_path / "ds", {"Chest": 2, folder: 2})
    discovery = sources.discover(str(root))
    assert [problem.line() for problem in discovery.problems] == [
        f"{shown}/: class folder name holds control character {code}"]
    assert {item.label for item in discovery.files} == {"Chest"}


def test_the_cli_refuses_it_in_one_line_and_writes_nothing(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"Chest": 2, "Hand\x1b[2J": 2})
    result = run_cli(f"--dataset_dir={root}", f"--output_dir={tmp_path / 'out'}")
    assert result.returncode == 1
    assert error_line(result) == (
        "error: Hand\\x1b[2J/: class folder name holds control character U+001B; nothing "
        "was written (--on_error=skip converts the rest)")
    assert not (tmp_path / "out").exists()


def test_a_control_character_in_a_predefined_split_class_folder_is_a_problem(tmp_path):
    root = tmp_path / "ds"
    make_class_folders(root / "train", {"Chest": 2, "Hand": 2})
    make_class_folders(root / "test", {"Chest": 1, "Ha\x7fnd": 1})
    assert [problem.line() for problem in sources.discover(str(root)).problems] == [
        "test/Ha\\x7fnd/: class folder name holds control character U+007F"]


def test_accented_and_joined_class_folder_names_still_convert(tmp_path):
    names = {"Kopf Å": 2,
             "\U0001fac1\u200d\U0001f52c": 2,  # an emoji sequence joined by ZWJ
             "\u0633\u06cc\u200c\u0646\u0647": 2}  # Persian "sine" (chest), with a ZWNJ
    root = make_class_folders(tmp_path / "ds", names)
    manifest = convert(root, tmp_path / "out", output_name="all")
    assert manifest["classes"] == sorted(unicodedata.normalize("NFC", name) for name in names)
    assert manifest["splits"]["all"]["class_counts"] == names


def test_a_label_file_and_a_class_folder_are_refused_by_one_rule(tmp_path):
    """The same character in a label file's text and a folder's name: both refused, or
    neither."""
    for text in ("Ha\x00nd", "Hand\u202e", "Hand\u200dLeft", "Kopf\u00a0Å"):
        path = tmp_path / "label.txt"
        path.write_text(text + "\n", encoding="utf-8")
        label_refused = sources.read_label_file(str(path))[0] is None
        assert (sources.refused_character(text) is not None) == label_refused, repr(text)
