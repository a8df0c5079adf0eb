"""tf_convert_data.py's bad-input errors: one line naming the file and the problem, a non-zero
exit, no half-written output, an earlier output kept byte for byte, and the --on_error=skip
hint only where skipping would let the run go on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dataset import beam_convert, beam_pipeline, shards
from dataset.convert import ConvertConfig
from dataset.conversion_plan import ConversionError
from tests.conftest import REPO_ROOT
from tests.test_convert import convert, make_class_folders, output_bytes

HINT = "--on_error=skip converts the rest"


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tf_convert_data.py", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def error_line(result: subprocess.CompletedProcess) -> str:
    """stderr, which must be exactly one line."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


@pytest.fixture
def earlier_output(tmp_path, make_images_labels_dataset):
    """(a dataset folder, an output folder holding a good conversion of it)."""
    root = make_images_labels_dataset({"Chest": 2, "Hand": 1}, size=16, suffix=".jpg")
    convert(root, tmp_path / "out", output_name="all")
    return root, tmp_path / "out"


def test_skip_of_every_file_fails_and_keeps_the_earlier_output(earlier_output):
    root, out = earlier_output
    before = output_bytes(out)
    for image in (root / "images").iterdir():
        truncate(image)
    # A stray label is skipped too; the message counts and quotes the images.
    (root / "labels" / "orphan.txt").write_text("Chest")
    result = run_cli(f"--dataset_dir={root}", f"--output_dir={out}", "--need_split=None",
                     "--output_name=all", "--on_error=skip")
    assert result.returncode == 1
    line = error_line(result)
    assert line.startswith(f"error: {root}: all 3 input file(s) failed, none left to convert "
                           "(first: images/00000"), line
    assert "undecodable JPEG" in line and line.endswith("; nothing was written")
    assert "wrote" not in result.stdout
    assert output_bytes(out) == before
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # no staging left


def test_skip_of_every_file_into_a_new_folder_creates_nothing(tmp_path,
                                                              make_images_labels_dataset):
    root = make_images_labels_dataset({"Chest": 2}, size=16)
    for label in (root / "labels").iterdir():
        label.unlink()  # every image fails in the validation pass, before any decoding
    result = run_cli(f"--dataset_dir={root}", f"--output_dir={tmp_path / 'out'}",
                     "--on_error=skip")
    assert result.returncode == 1
    assert "all 2 input file(s) failed" in error_line(result)
    assert "image without label file" in error_line(result)
    assert not (tmp_path / "out").exists()


def test_beam_skip_of_every_file_fails_and_keeps_the_earlier_output(earlier_output):
    if beam_pipeline.beam is None:
        pytest.skip("needs apache-beam (pip install -r requirements-beam.txt)")
    root, out = earlier_output
    before = output_bytes(out)
    for image in (root / "images").iterdir():
        truncate(image)
    config = dict(dataset_name="test", dataset_dir=str(root), output_dir=str(out),
                  output_name="all", on_error="skip", num_workers=1, show_progress=False)
    with pytest.raises(ConversionError) as error:
        beam_convert.convert_dataset_beam(ConvertConfig(**config), [
            "--runner=FnApiRunner", "--direct_running_mode=in_memory"])
    assert "all 3 input file(s) failed" in error.value.problems[0]
    assert output_bytes(out) == before


def test_skip_that_leaves_a_class_in_too_few_groups_fails(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"Common": 30, "Rare": 4})
    convert(root, tmp_path / "out", need_split="tvt_split")
    before = output_bytes(tmp_path / "out")
    for name in ("rare0000.png", "rare0001.png"):
        truncate(root / "Rare" / name)
    with pytest.raises(ConversionError) as error:
        convert(root, tmp_path / "out", need_split="tvt_split", on_error="skip")
    assert error.value.problems == [
        "--need_split: after skipping, class 'Rare' has 2 group(s), fewer than the 3 splits "
        "requested (Rare/rare0002.png, Rare/rare0003.png)"]
    assert not error.value.skippable
    assert output_bytes(tmp_path / "out") == before
    # Without skip the decode problems are listed, and the hint is not offered: skipping
    # them would fail as above.
    result = run_cli(f"--dataset_dir={root}", f"--output_dir={tmp_path / 'out'}",
                     "--need_split=tvt_split")
    assert result.returncode == 1
    assert "Rare/rare0000.png: undecodable PNG" in result.stderr
    assert result.stderr.splitlines()[-1] == "error: 2 problem(s); nothing was written"


def test_small_class_names_its_files(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"Common": 30, "Foot": 5})
    csv_path = tmp_path / "groups.csv"  # all five Foot files: one patient
    csv_path.write_text("".join(f"foot{index:04d},p1\n" for index in range(5)))
    with pytest.raises(ConversionError) as error:
        convert(root, tmp_path / "out", need_split="tvt_split", groups_csv=str(csv_path))
    assert error.value.problems == [
        "--need_split: class 'Foot' has 1 group(s), fewer than the 3 splits requested "
        "(Foot/foot0000.png, Foot/foot0001.png, Foot/foot0002.png and 2 more)"]


def test_groups_csv_rows_that_match_no_file_are_an_error(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"Chest": 3, "Hand": 3})
    csv_path = tmp_path / "groups.csv"
    csv_path.write_text("nosuch,g\n")  # a typo would silently turn the grouping off
    result = run_cli(f"--dataset_dir={root}", f"--output_dir={tmp_path / 'out'}",
                     f"--groups_csv={csv_path}")
    assert result.returncode == 1
    assert error_line(result) == (f"error: --groups_csv {csv_path}: 1 of 1 row(s) match no "
                                  "file in --dataset_dir (nosuch); nothing was written")
    assert not (tmp_path / "out").exists()
    csv_path.write_text("file,group\nchest0000,a\nChest/chest0001.png,a\n"
                        + "".join(f"typo{index},b\n" for index in range(5)))
    with pytest.raises(ConversionError) as error:
        convert(root, tmp_path / "out", groups_csv=str(csv_path))
    assert error.value.problems == [f"--groups_csv {csv_path}: 5 of 7 row(s) match no file in "
                                    "--dataset_dir (typo0, typo1, typo2 and 2 more)"]


def test_groups_csv_row_of_a_skipped_file_still_matches(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"Chest": 3, "Hand": 3})
    truncate(root / "Hand" / "hand0000.png")
    (root / "Hand" / "notes.txt").write_text("not an image")  # skipped by discovery
    csv_path = tmp_path / "groups.csv"
    csv_path.write_text("Hand/hand0000.png,a\nnotes,b\nchest0000,c\n")
    manifest = convert(root, tmp_path / "out", output_name="all", groups_csv=str(csv_path),
                       on_error="skip")
    assert [s["path"] for s in manifest["skipped"]] == ["Hand/notes.txt", "Hand/hand0000.png"]
    assert manifest["splits"]["all"]["num_examples"] == 5


NON_UTF8_LAYOUTS = {  # layout: (image path, label file path or None), as bytes
    "images_labels": (b"images/x\xe9.jpg", b"labels/x\xe9.txt"),
    "class_folders": (b"Hand/x\xe9.png", None),
}


def _add_non_utf8_file(root, layout: str) -> None:
    image, label = NON_UTF8_LAYOUTS[layout]
    some_image = next(p for p in root.rglob("*") if p.suffix in (".png", ".jpg"))
    with open(os.path.join(os.fsencode(root), image), "wb") as stream:
        stream.write(some_image.read_bytes())
    if label:
        with open(os.path.join(os.fsencode(root), label), "wb") as stream:
            stream.write(b"Hand\n")


@pytest.mark.parametrize("layout", sorted(NON_UTF8_LAYOUTS))
def test_non_utf8_file_name_is_named_and_skippable(tmp_path, make_images_labels_dataset, layout):
    if layout == "images_labels":
        root = make_images_labels_dataset({"Chest": 2, "Hand": 2}, size=16, suffix=".jpg")
    else:
        root = make_class_folders(tmp_path / "ds", {"Chest": 2, "Hand": 2})
    _add_non_utf8_file(root, layout)
    escaped = NON_UTF8_LAYOUTS[layout][0].decode("ascii", "backslashreplace")
    result = run_cli(f"--dataset_dir={root}", f"--output_dir={tmp_path / 'out'}",
                     "--need_split=None")
    assert result.returncode == 1
    assert error_line(result) == (f"error: {escaped}: file name is not valid UTF-8 "
                                  "(image/filename stores it as UTF-8 text); nothing was "
                                  f"written ({HINT})")
    assert not (tmp_path / "out").exists()
    result = run_cli(f"--dataset_dir={root}", f"--output_dir={tmp_path / 'out'}",
                     "--need_split=None", "--on_error=skip")
    assert result.returncode == 0, result.stderr
    assert "wrote 4 examples" in result.stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    assert [s["path"] for s in manifest["skipped"]] == [escaped]


def test_non_utf8_dataset_folder_fails_before_the_earlier_output_is_touched(earlier_output):
    root, out = earlier_output
    before = output_bytes(out)
    renamed = os.path.join(os.fsencode(root.parent), b"d\xe9")
    os.rename(root, renamed)
    result = run_cli(f"--dataset_dir={os.fsdecode(renamed)}", f"--output_dir={out}",
                     "--need_split=None", "--output_name=all")
    assert result.returncode == 1
    assert error_line(result) == (f"error: --dataset_dir={root.parent}/d\\xe9 is not valid "
                                  "UTF-8 (manifest.json records it as UTF-8 text)")
    assert output_bytes(out) == before


def test_commit_refuses_unwritable_text_before_touching_the_old_output(earlier_output):
    _, out = earlier_output
    before = output_bytes(out)
    staging = shards.make_staging_dir(str(out))
    with pytest.raises(ValueError, match="manifest.json would hold text that is not UTF-8"):
        shards.commit(str(out), staging, [], ["all"], "0:Chest\n", '{"name": "x\udce9"}')
    os.rmdir(staging)
    assert output_bytes(out) == before


def test_two_line_label_file_is_an_error_naming_it(tmp_path, make_images_labels_dataset):
    root = make_images_labels_dataset({"Chest": 2, "Hand": 2}, size=16)
    (root / "labels" / "000002.txt").write_text("Hand\nChest\n")
    with pytest.raises(ConversionError) as error:
        convert(root, tmp_path / "out")
    assert error.value.problems == [
        "images/000002.png: label file has 2 non-empty lines, expected one class name "
        "(labels/000002.txt)"]
    assert error.value.skippable and not (tmp_path / "out").exists()
    manifest = convert(root, tmp_path / "out", on_error="skip", output_name="all")
    assert [s["path"] for s in manifest["skipped"]] == ["images/000002.png"]
    assert manifest["splits"]["all"]["num_examples"] == 3


@pytest.mark.parametrize("case, flags, hint", [
    ("a bad file", ["--on_error=fail"], True),
    ("a bad file, tt_split", ["--need_split=tt_split"], True),
    ("a bad file, bad sizes, skip", ["--on_error=skip", "--need_split=tvt_split",
                                     "--validation_size=-1"], False),
    ("a bad file, bad sizes", ["--need_split=tvt_split", "--validation_size=-1"], False),
    ("a bad file, output_dir a file", ["--output_dir=A_FILE"], False),
    ("a bad file whose skip leaves a class too small", ["--need_split=tvt_split"], False),
    ("a bad file, a class too small", ["--need_split=tvt_split", "--groups_csv=ONE_GROUP"],
     False),
])
def test_skip_hint_only_where_skipping_lets_the_run_go_on(tmp_path, make_images_labels_dataset,
                                                          case, flags, hint):
    root = make_images_labels_dataset({"Chest": 3, "Hand": 4}, size=16)
    (root / "images" / "000001.png").write_bytes(b"hello world")  # a Chest image
    (tmp_path / "one_group.csv").write_text("".join(f"{index:06d},g\n" for index in range(7)))
    (tmp_path / "a_file").write_text("")
    flags = [flag.replace("ONE_GROUP", str(tmp_path / "one_group.csv"))
             .replace("A_FILE", str(tmp_path / "a_file")) for flag in flags]
    # The last --output_dir given wins.
    result = run_cli(f"--dataset_dir={root}", f"--output_dir={tmp_path / 'out'}", *flags)
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: ") and "nothing was written" in last, result.stderr
    assert (HINT in result.stderr) == hint, result.stderr
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "a_file").read_text() == ""  # where --output_dir named it


@pytest.mark.parametrize("args, message", [
    (["--dataset_dir=DS", "--need_split", "tvt_split", "0.3"], "unexpected argument(s): 0.3"),
    (["--dataset_dir=DS", "DS"], "unexpected argument(s): DS"),
    (["--dataset_dir=DS", "--need_split=bogus"], "flag --need_split=bogus: value should be "
                                                  "one of <None|tt_split|tvt_split|predefined>"),
    ([], "flag --dataset_dir=None: Flag --dataset_dir must have a value other than None."),
    (["--dataset_dir=DS", "--dicom_voi=given", "--dicom_window_center=40"],
     "flags dicom_voi=given, dicom_window_center=40.0, dicom_window_width=None: "
     "--dicom_voi=given needs --dicom_window_center and a --dicom_window_width > 0"),
])
def test_stray_argument_or_bad_flag_is_a_one_line_usage_error(tmp_path,
                                                              make_images_labels_dataset,
                                                              args, message):
    root = str(make_images_labels_dataset({"Chest": 2, "Hand": 2}, size=16))
    result = run_cli(f"--output_dir={tmp_path / 'out'}", *(a.replace("DS", root) for a in args))
    assert result.returncode == 2
    assert error_line(result) == f"tf_convert_data.py: error: {message.replace('DS', root)}"
    assert not (tmp_path / "out").exists()


def test_dicom_voi_given_with_its_window_converts(tmp_path, make_images_labels_dataset):
    root = make_images_labels_dataset({"Chest": 2, "Hand": 2}, size=16)
    result = run_cli(f"--dataset_dir={root}", f"--output_dir={tmp_path / 'out'}",
                     "--dicom_voi=given", "--dicom_window_center=40",
                     "--dicom_window_width=400")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["flags"]["dicom"]["window_width"] == 400


def test_skip_that_leaves_a_class_with_no_file_fails_without_a_split_too(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"Common": 6, "Rare": 2})
    for name in ("rare0000.png", "rare0001.png"):
        truncate(root / "Rare" / name)
    with pytest.raises(ConversionError) as error:
        convert(root, tmp_path / "out", on_error="skip")  # no split: everything in one output
    (line,) = error.value.problems
    assert line.startswith("--on_error=skip: after skipping, class 'Rare' has no file left (all "
                           "2 failed; first: Rare/rare0000.png: ")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("layout, inside, refused", [
    ("class_folders", "out", "--dataset_dir"),
    ("images_labels", "images", "images"),
    ("images_labels", "labels/out", "labels"),
    ("images_labels", "records", None),  # beside images/ and labels/: never read
])
def test_output_where_the_input_is_read_is_refused(tmp_path, make_images_labels_dataset, layout,
                                                   inside, refused):
    if layout == "class_folders":
        root = make_class_folders(tmp_path / "ds", {"A": 4, "B": 4})
    else:
        root = make_images_labels_dataset({"Chest": 4, "Hand": 4})
    before = sorted(str(path) for path in root.rglob("*"))
    if refused is None:
        convert(root, root / inside)
        assert (root / inside / "manifest.json").is_file()
        return
    with pytest.raises(ConversionError) as error:
        convert(root, root / inside)
    where = "--dataset_dir" if refused == "--dataset_dir" else str(root / refused)
    assert error.value.problems == [
        f"--output_dir: is inside {where}, where it would be read as input"]
    assert sorted(str(path) for path in root.rglob("*")) == before


def test_an_empty_output_dir_is_refused_not_the_current_folder(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"A": 2, "B": 2})
    result = run_cli(f"--dataset_dir={root}", f"--output_dir={tmp_path / 'typo'}",
                     "--output_dir=")  # e.g. --output_dir=$OUT with OUT unset
    assert result.returncode == 1
    assert error_line(result) == "error: --output_dir is empty"
    assert not list(REPO_ROOT.glob("*.tfrecord")) and not (REPO_ROOT / "manifest.json").exists()


def test_split_sizes_without_a_split_are_said_to_be_ignored(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"A": 3, "B": 3})
    result = run_cli(f"--dataset_dir={root}", f"--output_dir={tmp_path / 'out'}",
                     "--validation_size=0.5")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "warning: --validation_size ignored: --need_split=None cuts no split (tt_split or "
        "tvt_split does)"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert list(manifest["splits"]) == ["data"]


def test_a_failed_skip_run_marks_what_it_would_skip_apart_from_what_stopped_it(
        tmp_path, make_images_labels_dataset):
    root = make_images_labels_dataset({"Chest": 6, "Hand": 6}, size=8)
    (root / "images" / "000001.png").write_bytes(b"hello world")
    (root / "labels" / "000002.txt").write_text("")
    result = run_cli(f"--dataset_dir={root}", f"--output_dir={tmp_path / 'out'}",
                     "--need_split=tvt_split", "--validation_size=-1", "--on_error=skip")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    # Found while listing, then while decoding (a failing run decodes all, writing nothing).
    assert lines[:-1] == [
        "would skip: images/000002.png: empty label file (labels/000002.txt)",
        "would skip: images/000001.png: not a JPEG or PNG image (unrecognised magic bytes)"]
    assert lines[-1].startswith("error: --need_split: ") and lines[-1].endswith(
        "; nothing was written (--on_error=skip cannot get past the error(s); it would leave "
        "out the 2 file(s) marked 'would skip')"), lines[-1]
    assert not (tmp_path / "out").exists()
