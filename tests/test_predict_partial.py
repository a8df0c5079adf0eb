"""A prediction run that does not finish (Ctrl-C, SIGTERM, a failure midway) leaves its output
as it was and keeps the rows predicted so far in <stem>.partial.csv, complete rows only;
--resume predicts only the rest; two runs into one --output_csv at once are refused."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dataset.dicom_options import DicomOptions
from official.core import prediction, prediction_csv
from official.utils import files as files_lib
from tests.conftest import write_image
from tests.trainer_fixtures import REPO_ROOT, HalfAndHalf, class_image, error_lines, trainer_env

PREDICT = REPO_ROOT / "networks" / "resnet" / "dicom_predict.py"
OPTIONS = dict(batch_size=2, top_k=1, min_confidence=None, dicom_options=DicomOptions(),
               tta_views=1)


@pytest.fixture
def folder(tmp_path):
    """Five small PNGs, 0.png ... 4.png: three batches of two."""
    rng = np.random.default_rng(0)
    for index in range(5):
        write_image(tmp_path / "in" / f"{index}.png", class_image(rng, index % 2, 32))
    return tmp_path / "in"


def _rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _names(folder):
    return sorted(path.name for path in folder.iterdir())


def test_an_interrupt_midway_keeps_the_rows_so_far_and_the_old_csv(folder, tmp_path):
    out = tmp_path / "p.csv"
    out.write_text("the previous run's rows\n")
    files = prediction.collect_files([str(folder)])
    kept = prediction_csv.Kept()
    with pytest.raises(KeyboardInterrupt):  # in the third batch: two batches were written
        prediction.predict_files(HalfAndHalf(fail_on_call=3), files, str(out), kept=kept,
                                 **OPTIONS)
    assert out.read_text() == "the previous run's rows\n"  # a script never sees a half CSV
    assert _names(tmp_path) == ["in", "p.csv", "p.partial.csv", "p.partial.json"]
    assert [row["file"] for row in _rows(tmp_path / "p.partial.csv")] == files[:4]
    assert (kept.rows, kept.total, kept.path) == (4, 5, str(tmp_path / "p.partial.csv"))
    # A later complete run (without --resume) replaces the output and removes the partial file.
    counts = prediction.predict_files(HalfAndHalf(), files, str(out), **OPTIONS)
    assert counts == {"ok": 5, "uncertain": 0, "error": 0}
    assert [row["file"] for row in _rows(out)] == files
    assert _names(tmp_path) == ["in", "p.csv", "p.json"]


def test_nothing_predicted_leaves_no_partial_file_and_an_earlier_one_as_it_was(folder,
                                                                               tmp_path):
    out = tmp_path / "p.csv"
    files = prediction.collect_files([str(folder)])
    kept = prediction_csv.Kept()
    with pytest.raises(KeyboardInterrupt):
        prediction.predict_files(HalfAndHalf(fail_on_call=1), files, str(out), kept=kept,
                                 **OPTIONS)
    assert _names(tmp_path) == ["in"] and kept.rows == 0
    with pytest.raises(KeyboardInterrupt):  # an earlier run's partial file, then this run's
        prediction.predict_files(HalfAndHalf(fail_on_call=2), files, str(out), **OPTIONS)
    before = {name: (tmp_path / name).read_bytes() for name in _names(tmp_path) if name != "in"}
    with pytest.raises(KeyboardInterrupt):  # stopped before its first batch: nothing replaced
        prediction.predict_files(HalfAndHalf(fail_on_call=1), files, str(out), kept=kept,
                                 **OPTIONS)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert kept.rows == 0


def test_a_full_disk_midway_cuts_the_half_written_batch_off(folder, tmp_path, monkeypatch):
    """The write of the third batch fails after half its bytes (ENOSPC, naming no file)."""
    out = tmp_path / "p.csv"
    files = prediction.collect_files([str(folder)])
    real_write, writes = os.write, []

    def filling_disk(handle, data):
        writes.append(len(data))
        if len(writes) == 3:
            real_write(handle, data[:len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(handle, data)

    monkeypatch.setattr(prediction.os, "write", filling_disk)
    kept = prediction_csv.Kept()
    with pytest.raises(OSError) as error:
        prediction.predict_files(HalfAndHalf(), files, str(out), kept=kept, **OPTIONS)
    assert error.value.filename == str(tmp_path / "p.partial.csv")  # not a bare errno
    text = (tmp_path / "p.partial.csv").read_text()
    assert text.endswith("\n") and [row["file"] for row in _rows(tmp_path / "p.partial.csv")] \
        == files[:4] and kept.rows == 4
    assert not out.exists()


def test_resume_predicts_only_the_rest_and_writes_the_csv_of_a_whole_run(folder, tmp_path):
    out, whole = tmp_path / "p.csv", tmp_path / "whole.csv"
    files = prediction.collect_files([str(folder)])
    prediction.predict_files(HalfAndHalf(), files, str(whole), **OPTIONS)
    with pytest.raises(KeyboardInterrupt):
        prediction.predict_files(HalfAndHalf(fail_on_call=2), files, str(out), **OPTIONS)
    # A run killed during a write (SIGKILL: no clean-up) leaves half a row at the end.
    with open(tmp_path / "p.partial.csv", "a", encoding="utf-8") as handle:
        handle.write(f"{files[2]},ok,Chest,0.5")
    predictor = HalfAndHalf()
    counts = prediction.predict_files(predictor, files[::-1], str(out), resume=True,
                                      **OPTIONS)  # named in another order: still its rows
    assert predictor.calls == [2, 1]  # files 4, 3, 2; the half row's file predicted again
    assert counts == {"ok": 5, "uncertain": 0, "error": 0}
    assert _rows(out) == _rows(whole)[::-1]  # in this run's order, every row whole
    assert json.loads((tmp_path / "p.json").read_text())["counts"]["ok"] == 5
    assert "p.partial.csv" not in _names(tmp_path) and "p.partial.json" not in _names(tmp_path)
    # Without a partial file, --resume is a whole run.
    predictor = HalfAndHalf()
    prediction.predict_files(predictor, files, str(out), resume=True, **OPTIONS)
    assert predictor.calls == [2, 2, 1] and _rows(out) == _rows(whole)


def test_resume_tries_again_the_files_that_could_not_be_read(folder, tmp_path):
    out = tmp_path / "p.csv"
    good = (folder / "0.png").read_bytes()
    (folder / "0.png").write_bytes(good[:40])  # still being copied: cut short
    files = prediction.collect_files([str(folder)])
    with pytest.raises(KeyboardInterrupt):
        prediction.predict_files(HalfAndHalf(fail_on_call=2), files, str(out), **OPTIONS)
    assert [row["status"] for row in _rows(tmp_path / "p.partial.csv")] == ["error", "ok"]
    (folder / "0.png").write_bytes(good)  # the copy has finished
    predictor = HalfAndHalf()
    counts = prediction.predict_files(predictor, files, str(out), resume=True, **OPTIONS)
    assert predictor.calls == [2, 2]  # 0.png again with 2.png, then 3-4; 1.png's row kept
    assert counts == {"ok": 5, "uncertain": 0, "error": 0}
    assert [row["file"] for row in _rows(out)] == files


def test_resume_refuses_rows_of_other_settings_or_of_an_unknown_model(folder, tmp_path):
    out = tmp_path / "p.csv"
    files = prediction.collect_files([str(folder)])
    with pytest.raises(KeyboardInterrupt):
        prediction.predict_files(HalfAndHalf(fail_on_call=2), files, str(out), **OPTIONS)
    before = {name: (tmp_path / name).read_bytes() for name in ("p.partial.csv",
                                                                 "p.partial.json")}
    partial = tmp_path / "p.partial.csv"
    with pytest.raises(ValueError, match=rf"^--resume: {partial} is not this run's to resume "
                                         r"\(top_k 1, now 2\); without --resume every file"):
        prediction.predict_files(HalfAndHalf(), files, str(out), resume=True,
                                 **{**OPTIONS, "top_k": 2})
    (tmp_path / "p.partial.json").unlink()
    with pytest.raises(ValueError, match=r"p\.partial\.json, its record, is missing"):
        prediction.predict_files(HalfAndHalf(), files, str(out), resume=True, **OPTIONS)
    assert partial.read_bytes() == before["p.partial.csv"] and not out.exists()


def test_resume_refuses_rows_of_the_same_model_path_with_other_weights(folder, tmp_path):
    # A model_dir trained again from scratch, or an export replaced in place: its path, the
    # only name the rows had, would have let --resume mix two models' rows in one CSV.
    out = tmp_path / "p.csv"
    files = prediction.collect_files([str(folder)])
    with pytest.raises(KeyboardInterrupt):
        prediction.predict_files(HalfAndHalf(fail_on_call=2), files, str(out), **OPTIONS)
    retrained = HalfAndHalf()
    retrained.weights = "fedcba9876543210"
    with pytest.raises(ValueError, match=r"is not this run's to resume \(other weights in "
                                         r"half-and-half \(trained or exported again since\)\)"):
        prediction.predict_files(retrained, files, str(out), resume=True, **OPTIONS)
    assert len(_rows(tmp_path / "p.partial.csv")) == 2 and not out.exists()
    # A record written before the weights were recorded names no weights: said as it is.
    record = tmp_path / "p.partial.json"
    old = json.loads(record.read_text())
    del old["members"][0]["weights"]
    record.write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"resume \(members \[\{'model': 'half-and-half', "
                                         r"'tta_views': 1\}\], now \[\{'model'"):
        prediction.predict_files(HalfAndHalf(), files, str(out), resume=True, **OPTIONS)


def test_an_output_being_written_by_another_run_is_refused(folder, tmp_path):
    out = tmp_path / "p.csv"
    files = prediction.collect_files([str(folder)])
    held = files_lib.open_locked(str(tmp_path / "p.partial.csv"), "held by the test")
    try:
        refusal = (rf"^--output_csv={out}: another dicom_predict\.py run is writing it \(its "
                   rf"{tmp_path / 'p.partial.csv'} is locked\)")
        with pytest.raises(ValueError, match=refusal):
            prediction.check_output_paths(str(out), files)
        with pytest.raises(ValueError, match=refusal):  # the check came too late: the lock
            prediction.predict_files(HalfAndHalf(), files, str(out), **OPTIONS)
        # Another output in the same folder is not held up.
        prediction.predict_files(HalfAndHalf(), files, str(tmp_path / "q.csv"), **OPTIONS)
    finally:
        os.close(held)
    prediction.check_output_paths(str(out), files)  # free again


def test_partial_names_are_neither_an_output_nor_an_input(folder, tmp_path):
    files = prediction.collect_files([str(folder)])
    with pytest.raises(ValueError, match="names ending .partial.csv are those of the rows"):
        prediction.check_output_paths(str(tmp_path / "p.partial.csv"), files)
    (folder / "p.partial.json").write_text("{}")  # named as an input: an error row of its own
    with pytest.raises(ValueError, match=f"its partial file's record {folder}/p.partial.json "
                                         "would overwrite the input file"):
        prediction.check_output_paths(str(folder / "p.csv"),
                                      files + [str(folder / "p.partial.json")])
    for output in ("p.csv", "p", "p.json", "p.partial"):
        companions = {prediction.run_info_path(output), prediction_csv.partial_path(output),
                      prediction_csv.partial_record_path(output)}
        assert len(companions) == 3 and output not in companions


def test_an_interrupt_while_the_run_information_is_written_keeps_both_earlier_files(
        folder, tmp_path, monkeypatch):
    # The CSV was renamed into place before its .json was written: an interrupt between left a
    # new CSV beside the .json of another run (another model). Every row is kept for --resume.
    out = tmp_path / "out" / "p.csv"
    out.parent.mkdir()
    files = prediction.collect_files([str(folder)])
    prediction.predict_files(HalfAndHalf(), files, str(out), **OPTIONS)
    assert json.loads(out.with_suffix(".json").read_text())["model"] == "half-and-half"
    before = {path.name: path.read_bytes() for path in out.parent.iterdir()}

    class Other(HalfAndHalf):
        source = "another model"

        def __call__(self, encoded_images):  # another CSV too
            return np.tile(np.float32([0.7, 0.3]), (len(encoded_images), 1))

    real_dump = json.dump

    def interrupted(info, *args, **kwargs):
        if "counts" in info:  # the run's information, not the partial file's record
            raise KeyboardInterrupt
        return real_dump(info, *args, **kwargs)

    monkeypatch.setattr(prediction.json, "dump", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prediction.predict_files(Other(), files, str(out), **OPTIONS)
    after = {path.name: path.read_bytes() for path in out.parent.iterdir()}
    assert {name: after.pop(name) for name in before} == before
    assert sorted(after) == ["p.partial.csv", "p.partial.json"]
    assert len(_rows(out.parent / "p.partial.csv")) == len(files)


def _start_prediction(export, out, inputs, *extra):
    return subprocess.Popen(
        [sys.executable, str(PREDICT), f"--model={export}", f"--output_csv={out}",
         "--batch_size=1", *extra, str(inputs)], cwd=REPO_ROOT, env=trainer_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_midway_keeps_the_rows_and_resume_finishes_the_run(trained, tmp_path):
    """The program as a job scheduler stops it: SIGTERM once rows are being written."""
    many = tmp_path / "many"
    write_image(many / "0000.png", class_image(np.random.default_rng(0), 0, 32))
    for index in range(1, 400):  # enough that the run is still going when the signal comes
        shutil.copy(many / "0000.png", many / f"{index:04d}.png")
    out, partial = tmp_path / "p.csv", tmp_path / "p.partial.csv"
    run = _start_prediction(trained["export"], out, many)
    try:
        deadline = time.monotonic() + 120
        while not (partial.exists() and partial.read_text().count("\n") >= 2):
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.005)
        run.send_signal(signal.SIGTERM)
        _, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 143, stderr[-2000:]
    rows = _rows(partial)
    assert 1 <= len(rows) < 400 and all(row["status"] == "ok" for row in rows)
    assert error_lines(stderr) == [
        f"dicom_predict.py: error: terminated (SIGTERM); the rows of {len(rows)} of 400 files "
        f"are kept in {partial} (--resume predicts only the others)"]
    assert not out.exists()
    run = _start_prediction(trained["export"], out, many, "--resume")
    stdout, stderr = run.communicate(timeout=180)
    assert run.returncode == 0, stderr[-2000:]
    assert "400 files: 400 ok" in stdout
    assert _rows(out)[:len(rows)] == rows and len(_rows(out)) == 400
    assert sorted(path.name for path in tmp_path.iterdir()) == ["many", "p.csv", "p.json"]


def test_a_second_run_into_the_same_output_is_one_line_before_tensorflow(folder, tmp_path):
    out = tmp_path / "p.csv"
    held = files_lib.open_locked(str(tmp_path / "p.partial.csv"), "held by the test")
    try:
        result = subprocess.run(
            [sys.executable, str(PREDICT), f"--model={tmp_path / 'no_model'}",
             f"--output_csv={out}", str(folder)], cwd=REPO_ROOT, capture_output=True,
            text=True, timeout=120, env=trainer_env(without_tensorflow=True))
    finally:
        os.close(held)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert error_lines(result.stderr) == [
        f"dicom_predict.py: error: --output_csv={out}: another dicom_predict.py run is "
        f"writing it (its {tmp_path / 'p.partial.csv'} is locked); wait for it to end, or give "
        "another --output_csv"]


def test_the_interrupt_line_says_what_was_kept_and_whose_csv_is_there(tmp_path):
    from networks.resnet import dicom_predict

    out = tmp_path / "p.csv"
    kept = prediction_csv.Kept(path=str(tmp_path / "p.partial.csv"), rows=3, total=10)
    note = (f"the rows of 3 of 10 files are kept in {tmp_path / 'p.partial.csv'} (--resume "
            "predicts only the others)")
    assert dicom_predict.left_by_interrupt(str(out), kept) == note
    out.write_text("file,status\n")
    assert dicom_predict.left_by_interrupt(str(out), kept) == (
        f"{note}; {out} is an earlier run's, left as it was")
    assert dicom_predict.left_by_interrupt(str(out), prediction_csv.Kept()) == (
        f"no predictions were written; {out} is an earlier run's, left as it was")
