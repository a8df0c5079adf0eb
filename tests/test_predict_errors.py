"""dicom_predict.py on bad input: one error line, the right exit code, nothing half-written."""

from __future__ import annotations

import contextlib
import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import write_image
from tests.trainer_fixtures import REPO_ROOT, HalfAndHalf, class_image, error_lines, \
    trainer_env

PREDICT = REPO_ROOT / "networks" / "resnet" / "dicom_predict.py"
CORRUPT_PNG = b"\x89PNG\r\n\x1a\nnot really"


@pytest.fixture
def export(trained):
    """conftest.py's trained ResNet-18 SavedModel (32 px, Chest/Hand), only read here: a
    training of this module's own cost ~8 s and showed nothing more."""
    return trained["export"]


@pytest.fixture
def folder(tmp_path):
    """Two good images, a.jpeg and b.png."""
    rng = np.random.default_rng(0)
    write_image(tmp_path / "in" / "a.jpeg", class_image(rng, 0, 32))
    write_image(tmp_path / "in" / "b.png", class_image(rng, 1, 32))
    return tmp_path / "in"


def _predict(export, *args, without_tensorflow=False):
    """``without_tensorflow``: the error must come before TensorFlow's import."""
    return subprocess.run([sys.executable, str(PREDICT), f"--model={export}", *args],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=180,
                          env=trainer_env(without_tensorflow=without_tensorflow))


def _the_error_line(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1, lines
    return lines[0]


def _snapshot(root):
    """Every file under root with its bytes: a failed run must leave it as it was."""
    return {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}


def test_output_that_would_overwrite_an_input_is_refused(export, folder, tmp_path):
    (folder / "sub").mkdir()
    before = _snapshot(tmp_path)
    result = _predict(export, f"--output_csv={folder}/a.jpeg", str(folder),
                      without_tensorflow=True)
    assert result.returncode == 1
    line = _the_error_line(result)
    assert line.startswith("dicom_predict.py: error:") and "overwrite" in line
    assert str(folder / "a.jpeg") in line
    assert _snapshot(tmp_path) == before
    # The same check, in the process (each CLI run costs a TensorFlow start): another
    # spelling of the same file, and the companion .json over an input.
    from official.core import prediction

    (folder / "notes.json").write_text("{}")
    files = prediction.collect_files([str(folder), str(folder / "notes.json")])
    for target, overwritten in (("sub/../b.png", "b.png"), ("notes.csv", "notes.json")):
        with pytest.raises(ValueError, match="would overwrite the input file") as error:
            prediction.check_output_paths(f"{folder}/{target}", files)
        assert str(folder / overwritten) in str(error.value)


def test_unusable_output_paths_are_one_line_and_leave_nothing(export, folder, tmp_path):
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("x")
    before = _snapshot(tmp_path)
    result = _predict(export, f"--output_csv={tmp_path / 'a_folder'}", str(folder),
                      without_tensorflow=True)
    assert result.returncode == 1, result.stderr[-2000:]
    line = _the_error_line(result)
    assert line.startswith("dicom_predict.py: error:") and "is a folder" in line
    assert str(tmp_path / "a_folder") in line
    assert _snapshot(tmp_path) == before  # no .tmp-PID file either
    from official.core import prediction

    with pytest.raises(ValueError, match="not a folder") as error:
        prediction.check_output_paths(str(tmp_path / "a_file" / "x.csv"),
                                      prediction.collect_files([str(folder)]))
    assert str(tmp_path / "a_file") in str(error.value)


def test_missing_output_folder_is_refused_not_created(export, folder, tmp_path):
    """A typo in --output_csv's folder must not become a new folder (it is refused before
    anything is predicted); the library does not create one either."""
    before = _snapshot(tmp_path)
    result = _predict(export, f"--output_csv={tmp_path / 'typo' / 'p.csv'}", str(folder),
                      without_tensorflow=True)
    assert result.returncode == 1, result.stderr[-2000:]
    line = _the_error_line(result)
    assert line == (f"dicom_predict.py: error: --output_csv={tmp_path / 'typo' / 'p.csv'}: the "
                    f"folder {tmp_path / 'typo'} does not exist (create it first)")
    assert not (tmp_path / "typo").exists() and _snapshot(tmp_path) == before
    from dataset.dicom_options import DicomOptions
    from official.core.prediction import collect_files, predict_files

    with pytest.raises(FileNotFoundError, match=str(tmp_path / "typo" / "p.csv")):
        predict_files(HalfAndHalf(), collect_files([str(folder)]),
                      str(tmp_path / "typo" / "p.csv"), batch_size=2, top_k=1,
                      min_confidence=None, dicom_options=DicomOptions())
    assert not (tmp_path / "typo").exists()


def test_unwritable_output_is_named_as_given_not_by_its_temporary_name(folder):
    """/proc takes no new files; the error named '/proc/p.csv.tmp-<pid>', a name the user
    never gave."""
    if not os.path.isdir("/proc"):
        pytest.skip("no /proc here: this case needs a folder that refuses new files")
    from dataset.dicom_options import DicomOptions
    from official.core.prediction import collect_files, predict_files, write_run_info

    with pytest.raises(OSError) as error:
        predict_files(HalfAndHalf(), collect_files([str(folder)]), "/proc/p.csv",
                      batch_size=2, top_k=1, min_confidence=None, dicom_options=DicomOptions())
    assert str(error.value).endswith(": '/proc/p.csv'") and ".tmp" not in str(error.value)
    with pytest.raises(OSError) as error:
        write_run_info("/proc/p.json", HalfAndHalf(), {}, tta_views=1)
    assert str(error.value).endswith(": '/proc/p.json'")


def test_an_unwritable_output_is_said_as_the_flags(export, folder):
    """It was a bare '[Errno 2] No such file or directory: ...'."""
    if not os.path.isdir("/proc"):
        pytest.skip("no /proc here: this case needs a folder that refuses new files")
    result = _predict(export, "--output_csv=/proc/p.csv", str(folder))
    assert result.returncode == 1
    assert _the_error_line(result).startswith(
        "dicom_predict.py: error: --output_csv=/proc/p.csv: cannot write /proc/p.csv: ")


def test_a_file_named_twice_is_collected_once_where_it_came_first(folder, tmp_path):
    from official.core.prediction import collect_files

    (tmp_path / "link.png").symlink_to(folder / "b.png")
    assert collect_files([str(folder / "b.png"), str(folder), str(tmp_path / "link.png"),
                          f"{folder}/../in/a.jpeg"]) == [str(folder / "b.png"),
                                                         str(folder / "a.jpeg")]
    assert collect_files([str(folder), str(folder)]) == [str(folder / "a.jpeg"),
                                                         str(folder / "b.png")]



def test_linked_subfolders_are_followed_once_and_a_loop_ends(folder, tmp_path):
    """A linked subfolder was passed over without a word ("2 files" of 14)."""
    from official.core.prediction import collect_files

    elsewhere = tmp_path / "elsewhere"
    write_image(elsewhere / "c.png", class_image(np.random.default_rng(1), 0, 32))
    (folder / "linked").symlink_to(elsewhere)
    (folder / "again").symlink_to(elsewhere)  # the same folder twice: read once
    (elsewhere / "up").symlink_to(folder)  # a loop back up the tree
    assert collect_files([str(folder)]) == [str(folder / "a.jpeg"),
                                            str(folder / "again" / "c.png"),
                                            str(folder / "b.png")]


def test_a_folder_that_cannot_be_listed_is_named_not_passed_over(folder, monkeypatch):
    """An unreadable subfolder's files were missing from the CSV without a word, and an
    unreadable named folder was said to hold "no DICOM, JPEG or PNG files"."""
    from official.core.prediction import collect_files

    closed = folder / "closed"
    write_image(closed / "c.png", class_image(np.random.default_rng(1), 0, 32))
    listed = os.scandir

    def scandir(path="."):  # tests run as root, whom chmod 000 does not stop
        if os.fspath(path).rstrip(os.sep) == str(closed):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return listed(path)

    monkeypatch.setattr(os, "scandir", scandir)
    for named in (folder, closed):
        with pytest.raises(ValueError, match="cannot list the folder") as error:
            collect_files([str(named)])
        assert str(closed) in str(error.value) and "Permission denied" in str(error.value)


def test_a_named_pipe_is_no_image_and_does_not_hang_the_run(folder):
    """Opening a pipe named b.png (or IM0002, sniffed for DICOM) waited for a writer forever."""
    import threading

    from dataset.dicom_options import DicomOptions
    from official.core.prediction import collect_files, load_item

    pipes = [folder / "c.png", folder / "IM0002"]
    for pipe in pipes:
        os.mkfifo(pipe)
    found = []
    worker = threading.Thread(target=lambda: found.append((
        collect_files([str(folder)]),
        load_item(str(pipes[0]), ["Chest", "Hand"], DicomOptions(), b"k" * 32).error)))
    worker.start()
    worker.join(timeout=20)
    waited = worker.is_alive()
    while worker.is_alive():  # a reader still waiting is let go, so the test ends either way
        for pipe in pipes:
            with contextlib.suppress(OSError):
                os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=1)
    assert not waited, "waited on a named pipe"
    files, error = found[0]
    assert files == [str(folder / "a.jpeg"), str(folder / "b.png")]
    assert error == f"{pipes[0]}: not a regular file (a pipe, socket or device)"


def test_a_broken_or_looping_link_is_said_as_the_other_rows_are(folder):
    """Its row said "[Errno 2] No such file or directory: '<file>'"."""
    from dataset.dicom_options import DicomOptions
    from official.core.prediction import load_item

    (folder / "gone.png").symlink_to(folder / "nowhere.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    assert [load_item(str(folder / name), ["Chest"], DicomOptions(), b"k" * 32).error
            for name in ("gone.png", "loop.png")] == [
        f"{folder}/gone.png: No such file or directory (a link whose target is missing)",
        f"{folder}/loop.png: Too many levels of symbolic links"]


def test_a_dicom_cds_index_is_passed_over_and_a_bare_name_gets_a_hint(folder, tmp_path):
    """Every DICOM CD carries a DICOMDIR (an index, with the DICM preamble and no pixels): it
    was predicted as a failing image. A file without suffix or preamble (a CD's IM0002) was
    "not a JPEG or PNG image", without a word of --dicom_force."""
    import shutil

    from pydicom.data import get_testdata_file

    from dataset.dicom_options import DicomOptions
    from official.core.prediction import collect_files, load_item

    shutil.copy(get_testdata_file("DICOMDIR"), folder / "DICOMDIR")
    assert collect_files([str(folder)]) == [str(folder / "a.jpeg"), str(folder / "b.png")]
    item = load_item(str(folder / "DICOMDIR"), ["Chest", "Hand"], DicomOptions(), b"k")
    assert item.error == f"{folder}/DICOMDIR: a DICOMDIR (the index of a DICOM CD), not an image"
    bare = tmp_path / "IM0002"
    bare.write_bytes(b"\x08\x00" * 100)  # an ACR-NEMA-style start: no preamble
    item = load_item(str(bare), ["Chest", "Hand"], DicomOptions(), b"k")
    assert item.error == (f"{bare}: not a JPEG or PNG image (unrecognised magic bytes); a DICOM "
                          "file without the DICM preamble is read with --dicom_force")
    forced = load_item(str(bare), ["Chest", "Hand"], DicomOptions(force=True), b"k")
    assert "--dicom_force" not in forced.error  # it was tried as DICOM: its own reason
    # A suffix-less file with the preamble failed as DICOM: no word of --dicom_force.
    mask = tmp_path / "SEG0001"
    shutil.copy(get_testdata_file("CT_small.dcm"), mask)
    import pydicom

    seg = pydicom.dcmread(mask)
    seg.Modality = "SEG"
    seg.save_as(mask)
    item = load_item(str(mask), ["Chest", "Hand"], DicomOptions(), b"k")
    assert item.error == f"{mask}: a segmentation mask (SEG), not an image of anatomy"
    # In a folder it was passed over even with --dicom_force: now tried as DICOM.
    shutil.copy(bare, folder / "IM0002")
    assert str(folder / "IM0002") not in collect_files([str(folder)])
    assert collect_files([str(folder)], dicom_force=True) == [
        str(folder / "IM0002"), str(folder / "a.jpeg"), str(folder / "b.png")]


@pytest.mark.parametrize("flag, named", [
    ("--top_k=0", "--top_k=0"), ("--top_k=-2", "--top_k=-2"),
    ("--batch_size=0", "--batch_size=0"),
    ("--min_confidence=2", "--min_confidence=2"), ("--min_confidence=-1", "--min_confidence=-1"),
    (None, "--input"),  # no files given at all
])
def test_usage_errors_are_one_line_exit_2(folder, tmp_path, flag, named):
    # A flag error is caught before any model loads: no need for a real one.
    out = tmp_path / "p.csv"
    args = [f"--output_csv={out}"] + ([flag, str(folder)] if flag else [])
    result = _predict(tmp_path / "no_model", *args, without_tensorflow=True)
    assert result.returncode == 2, result.stderr[-2000:]
    line = _the_error_line(result)
    assert line.startswith("dicom_predict.py: error:") and named in line
    assert "flags:" not in result.stderr and "usage" not in result.stderr.lower()
    assert not list(tmp_path.glob("p.*"))


def test_missing_arguments_are_named_before_predicting(export, folder, tmp_path):
    out = tmp_path / "p.csv"
    missing = [str(tmp_path / "does" / "not" / "exist.jpg"), str(tmp_path / "typo")]
    result = _predict(export, f"--output_csv={out}", str(folder / "a.jpeg"), *missing,
                      without_tensorflow=True)
    assert result.returncode == 1
    line = _the_error_line(result)
    assert line.startswith("dicom_predict.py: error:")
    assert line.endswith(f"no such file or folder: {missing[0]!r}, {missing[1]!r}")
    assert not list(tmp_path.glob("p.*"))


def test_every_file_failing_writes_the_csv_and_exits_1(export, tmp_path):
    (tmp_path / "in").mkdir()
    for name in ("x.png", "y.png"):
        (tmp_path / "in" / name).write_bytes(CORRUPT_PNG)
    out = tmp_path / "p.csv"
    result = _predict(export, f"--output_csv={out}", str(tmp_path / "in"))
    assert result.returncode == 1
    line = _the_error_line(result)
    assert line.startswith("dicom_predict.py: error:") and "2 of 2" in line and str(out) in line
    rows = list(csv.DictReader(out.open()))
    assert [row["status"] for row in rows] == ["error", "error"]
    assert all(row["error"] for row in rows)
    assert not list(tmp_path.glob("p.csv.tmp-*"))


def test_some_files_failing_is_one_warning_and_exit_0(export, folder, tmp_path):
    (folder / "c.png").write_bytes(CORRUPT_PNG)
    out = tmp_path / "p.csv"
    result = _predict(export, f"--output_csv={out}", str(folder))
    assert result.returncode == 0, result.stderr[-2000:]
    line = _the_error_line(result)
    assert "1 of 3" in line and "CSV" in line and str(out) in line
    statuses = {row["file"]: row["status"] for row in csv.DictReader(out.open())}
    assert statuses[str(folder / "c.png")] == "error" and len(statuses) == 3


def test_non_utf8_file_name_and_a_large_top_k_still_give_rows(export, folder, tmp_path):
    os.rename(folder / "a.jpeg", os.path.join(os.fsencode(folder), b"x\xe9.jpeg"))
    out = tmp_path / "p.csv"
    result = _predict(export, f"--output_csv={out}", "--top_k=5", str(folder))
    assert result.returncode == 0, result.stderr[-2000:]
    assert error_lines(result.stderr) == []
    with open(out, encoding="utf-8", newline="") as handle:  # still valid UTF-8
        rows = list(csv.DictReader(handle))
    assert [row["file"] for row in rows] == [str(folder / "b.png"),  # as the converter says
                                             str(folder / "x\\xe9.jpeg")]
    assert [row["status"] for row in rows] == ["ok", "ok"]
    # More than the model's classes lists every class once.
    assert all(len(row["top_k"].split(";")) == 2 for row in rows)
    assert not list(tmp_path.glob("p.csv.tmp-*"))


def _jpeg_only_tensorflow_refuses(good: bytes) -> bytes:
    """``good`` with an APP0 marker written into its compressed data: Pillow decodes it with a
    warning (the converter's and prediction's checks pass it), TensorFlow's decoder fails."""
    import tensorflow as tf

    from dataset import images

    start = good.index(b"\xff\xda") + 20
    for offset in range(start, len(good) - 4):
        bad = good[:offset] + b"\xff\xe0" + good[offset + 2:]
        try:
            images.validate_image_bytes(bad)
            tf.io.decode_jpeg(bad)
        except images.ImageError:
            continue
        except tf.errors.InvalidArgumentError:
            return bad
    raise AssertionError("no such JPEG found")


def test_an_image_only_tensorflow_refuses_is_its_own_error_row(export, folder, tmp_path):
    """It failed the whole run with a TensorFlow traceback, and with it every other file of
    its batch; its batch is now predicted an image at a time."""
    from dataset.dicom_options import DicomOptions
    from official.core import prediction
    from official.core.inference import Predictor

    bad = folder / "bad.jpeg"
    bad.write_bytes(_jpeg_only_tensorflow_refuses((folder / "a.jpeg").read_bytes()))
    predictor = Predictor(export)
    files = prediction.collect_files([str(folder)])
    options = dict(batch_size=4, top_k=1, min_confidence=None, dicom_options=DicomOptions())
    counts = prediction.predict_files(predictor, files, str(tmp_path / "p.csv"), **options)
    assert counts == {"ok": 2, "uncertain": 0, "error": 1}
    rows = {row["file"]: row for row in csv.DictReader((tmp_path / "p.csv").open())}
    assert rows[str(bad)]["error"] == (f"{bad}: TensorFlow cannot decode it (jpeg::Uncompress "
                                       "failed. Invalid JPEG data or crop window.)")
    # The others' figures are those of a run without it.
    bad.unlink()
    prediction.predict_files(predictor, prediction.collect_files([str(folder)]),
                             str(tmp_path / "q.csv"), **options)
    alone = {row["file"]: row["top_k"] for row in csv.DictReader((tmp_path / "q.csv").open())}
    assert {name: rows[name]["top_k"] for name in alone} == alone
