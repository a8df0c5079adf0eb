"""Evaluation reports and prediction CSVs from a model_dir and from its SavedModel (the model:
conftest.py's `trained`). Test-time views and ensembles: tests/test_views_ensembles.py."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.trainer_fixtures import REPO_ROOT, TRAINED_CLASSES as CLASSES, checkpoint_name, \
    error_lines, run_resnet_cli as _run, trainer_env

def _predictor(path):
    from official.core.inference import Predictor

    return Predictor(path)


def test_model_dir_and_saved_model_give_the_same_report(trained, tmp_path):
    from dataset.converted import split_info
    from official.core.evaluation import evaluate_split
    from official.utils.report import write_report

    reports = {}
    for name in ("model_dir", "export"):
        predictor = _predictor(trained[name])
        labels, probabilities, files = evaluate_split(
            predictor, split_info(trained["data_dir"], "validation"), batch_size=3)
        assert len(labels) == len(files) == 8 and probabilities.shape == (8, 2)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
        reports[name] = (labels, probabilities,
                         write_report(tmp_path / name, labels=labels, probabilities=probabilities,
                                      class_names=list(CLASSES), filenames=files))
    np.testing.assert_array_equal(reports["model_dir"][0], reports["export"][0])
    np.testing.assert_allclose(reports["model_dir"][1], reports["export"][1], atol=1e-5)
    assert reports["model_dir"][2]["confusion_matrix"] == reports["export"][2]["confusion_matrix"]


def test_eval_cli_writes_report_next_to_model(trained):
    result = _run("dicom_eval.py", f"--model={trained['model_dir']}",
                  f"--data_dir={trained['data_dir']}", "--split=validation")
    assert result.returncode == 0, result.stderr[-2000:]
    report = f"{trained['model_dir']}/eval_validation"
    metrics = json.loads(open(f"{report}/metrics.json").read())
    assert metrics["num_examples"] == 8 and metrics["split"] == "validation"
    assert set(metrics["per_class"]) == set(CLASSES)
    assert "accuracy" in result.stdout and report in result.stdout
    # stderr is a pipe here, as in a log file: no progress bar's carriage-return updates.
    assert "%|" not in result.stderr  # (a bar's percentage; text mode hides its \\r)
    import glob

    assert glob.glob(f"{report}/events.out.tfevents*"), "no TensorBoard event file"
    assert open(f"{report}/confusion_matrix.png", "rb").read(4) == b"\x89PNG"


def test_eval_cli_finds_a_bare_checkpoint_name_inside_the_model_dir(trained, tmp_path):
    name = checkpoint_name(trained["model_dir"])
    out = tmp_path / "report"
    result = subprocess.run(  # from a working directory that does not hold the name
        [sys.executable, str(REPO_ROOT / "networks" / "resnet" / "dicom_eval.py"),
         f"--model={trained['model_dir']}", f"--checkpoint={name}",
         f"--data_dir={trained['data_dir']}", "--split=validation", f"--output_dir={out}"],
        capture_output=True, text=True, env=trainer_env(), cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == f"{trained['model_dir']}/{name}"
    import tensorflow as tf

    from official.core.inference import Predictor

    # The message lists the checkpoints --keep_checkpoints left (2 epochs, one each).
    kept = ", ".join(os.path.basename(path) for path in tf.train.get_checkpoint_state(
        trained["model_dir"]).all_model_checkpoint_paths)
    assert kept.count("ckpt-") == 2 and kept.endswith(name)
    with pytest.raises(FileNotFoundError) as error:
        Predictor(trained["model_dir"], "ckpt-999")
    assert str(error.value) == (f"ckpt-999: no such checkpoint (looked for ckpt-999.index and "
                                f"{trained['model_dir']}/ckpt-999.index); {trained['model_dir']} "
                                f"keeps {kept}")


@pytest.mark.parametrize("script", ["dicom_eval.py", "dicom_predict.py", "dicom_export.py"])
def test_help_says_a_checkpoint_may_be_named_inside_the_model_dir(script):
    result = _run(script, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "its name inside the model_dir (ckpt-400)" in " ".join(result.stdout.split())


def test_default_report_folder_names_the_views(tmp_path):
    from official.core.evaluation import default_output_dir

    (tmp_path / "config.json").write_text("{}")
    assert default_output_dir(str(tmp_path), "ckpt-3", "test") == f"{tmp_path}/eval_test"
    assert default_output_dir(str(tmp_path), "ckpt-3", "test", 5) == f"{tmp_path}/eval_test-tta5"
    assert default_output_dir("e", "e/17", "test", 3) == "e/eval-17-test-tta3"
    # A named --checkpoint's report overwrote the newest checkpoint's.
    assert default_output_dir(str(tmp_path), f"{tmp_path}/ckpt-3", "test", 2,
                              checkpoint_named=True) == f"{tmp_path}/eval_test-ckpt-3-tta2"
    # Other data than the training data's: an external test set's "test" replaced the report
    # on the training data's test split.
    own, other = tmp_path / "records", tmp_path / "site b" / "ct test"
    assert default_output_dir(str(tmp_path), "ckpt-3", "test", data_dir=str(own),
                              trained_on=str(own)) == f"{tmp_path}/eval_test"
    assert default_output_dir(str(tmp_path), "ckpt-3", "test", 5, data_dir=f"{other}/",
                              trained_on=str(own)) == f"{tmp_path}/eval_test-ct_test-tta5"
    assert default_output_dir("e", "e/17", "test", data_dir=str(other),
                              trained_on=None) == "e/eval-17-test-ct_test"


def test_a_rerun_evaluation_replaces_its_tensorboard_point_and_keeps_other_steps(tmp_path):
    """Each rerun of an evaluation added an events file at the same step: TensorBoard showed
    several points there. A report of another step (a newer checkpoint) is a new point."""
    import tensorflow as tf

    from official.core.evaluation import write_tensorboard
    from official.utils.report import write_report

    def evaluate(step, correct):
        metrics = write_report(tmp_path, labels=[0, 1], probabilities=[[0.9, 0.1], [
            0.2, 0.8] if correct else [0.7, 0.3]], class_names=["A", "B"], filenames=["a", "b"])
        write_tensorboard(str(tmp_path), metrics, step)

    def points():
        found = []
        for path in sorted(tmp_path.glob("events.out.tfevents*")):
            for event in tf.compat.v1.train.summary_iterator(str(path)):
                found += [(event.step, round(float(tf.make_ndarray(value.tensor)), 2))
                          for value in event.summary.value if value.tag == "accuracy"]
        return sorted(found)

    evaluate(100, correct=False)
    evaluate(100, correct=True)  # the same checkpoint again (after a fix to the data, say)
    assert points() == [(100, 1.0)]
    evaluate(200, correct=True)
    assert points() == [(100, 1.0), (200, 1.0)]


def test_a_default_report_folder_holding_other_datas_report_is_refused(tmp_path):
    """Two external sets in folders of the same name share a default report folder."""
    from official.core.evaluation import check_default_folder_is_of

    report = tmp_path / "eval_test-ct"
    check_default_folder_is_of(str(report), "/a/ct")  # no folder yet
    report.mkdir()
    (report / "metrics.json").write_text(json.dumps({"data_dir": "/a/ct"}))
    check_default_folder_is_of(str(report), "/a/ct/")  # its own data's: replaced, as ever
    with pytest.raises(ValueError, match=f"^{report} holds the report on /a/ct, not on /b/ct; "
                                         "name another folder with --output_dir"):
        check_default_folder_is_of(str(report), "/b/ct")


def test_eval_cli_errors_are_one_line(trained, tmp_path):
    result = _run("dicom_eval.py", f"--model={tmp_path}", f"--data_dir={trained['data_dir']}",
                  "--split=validation", without_tensorflow=True)
    assert result.returncode == 1
    assert "neither a SavedModel" in result.stderr and str(tmp_path) in result.stderr
    # The split is checked before any model is looked at (a restore can take minutes): the
    # absent model is not what is reported.
    result = _run("dicom_eval.py", f"--model={tmp_path / 'absent'}",
                  f"--data_dir={trained['data_dir']}", "--split=nope",
                  without_tensorflow=True)
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        f"dicom_eval.py: error: {trained['data_dir']}: no split 'nope'; available: train, "
        "validation"]


def test_eval_cli_scores_data_with_some_of_the_models_classes(trained, tmp_path):
    """An external test set holding only some body parts was refused ("classes differ")."""
    from tests.trainer_fixtures import write_converted_dataset

    hands = write_converted_dataset(tmp_path / "external_hands", {"test": {"Hand": 5}},
                                    classes=("Hand",))
    result = _run("dicom_eval.py", f"--model={trained['model_dir']}", f"--data_dir={hands}",
                  "--split=test")
    assert result.returncode == 0, result.stderr[-2000:]
    # Not the training data: by default its report went beside the training data's, which
    # it replaced.
    out = Path(trained["model_dir"]) / "eval_test-external_hands"
    assert f"report in {out}" in result.stdout
    assert ("the data holds 1 of the model's 2 classes; macro averages are over those (not "
            "in the data: Chest)") in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes_not_in_data"] == ["Chest"] and metrics["num_examples"] == 5
    assert metrics["per_class"]["Hand"]["support"] == 5  # "Hand" is the model's class 1
    assert metrics["macro_avg"]["recall"] == metrics["per_class"]["Hand"]["recall"]
    from official.utils.report import summary_scalars

    assert "recall/Chest" not in summary_scalars(metrics)  # TensorBoard: no 0 for it
    # A class the model does not know cannot be scored: said before TensorFlow's import, from
    # the model's config.json (a model_dir's, an export's, an ensemble's) and the manifest.
    knees = write_converted_dataset(tmp_path / "knees", {"test": {"Knee": 2, "Hand": 2}},
                                    classes=("Hand", "Knee"))
    for model in (trained["model_dir"], trained["export"],
                  f"{trained['model_dir']},{trained['export']}"):
        result = _run("dicom_eval.py", f"--model={model}", f"--data_dir={knees}",
                      "--split=test", f"--output_dir={tmp_path / 'r2'}",
                      without_tensorflow=True)
        assert result.returncode == 1
        assert error_lines(result.stderr) == [
            f"dicom_eval.py: error: {knees}: classes ['Knee'] are not among the model's "
            "['Chest', 'Hand']"], model
    assert not (tmp_path / "r2").exists()


def test_predict_mixed_folder_one_row_per_file(trained, mixed_folder, tmp_path):
    from dataset.dicom_options import DicomOptions
    from official.core.prediction import collect_files, predict_files

    files = collect_files([str(mixed_folder)])
    assert len(files) == 5 and not any(f.endswith(".txt") for f in files)
    rows = {}
    for name in ("model_dir", "export"):
        out = tmp_path / f"{name}.csv"
        counts = predict_files(_predictor(trained[name]), files, str(out), batch_size=2, top_k=2,
                               min_confidence=None, dicom_options=DicomOptions())
        assert counts == {"ok": 4, "uncertain": 0, "error": 1}
        rows[name] = list(csv.DictReader(out.open()))
    for a, b in zip(rows["model_dir"], rows["export"]):
        assert a["file"] == b["file"] and a["predicted_class"] == b["predicted_class"]
        if a["status"] == "ok":
            assert float(a["probability"]) == pytest.approx(float(b["probability"]), abs=1e-4)
    by_file = {row["file"].rsplit("/", 1)[-1]: row for row in rows["export"]}
    assert by_file["broken.png"]["status"] == "error"
    assert "broken.png" in by_file["broken.png"]["error"]
    assert by_file["MR0001"]["status"] == "ok"  # found by its DICM preamble
    assert len(by_file["ct.dcm"]["top_k"].split(";")) == 2
    assert by_file["ct.dcm"]["predicted_class"] in CLASSES


def test_predict_cli_bare_checkpoint_and_a_file_named_twice(trained, mixed_folder, tmp_path):
    """chest.png named and inside its folder, hand.jpg through another spelling: each is
    predicted once; --checkpoint is a bare name inside --model."""
    out = tmp_path / "p.csv"
    name = checkpoint_name(trained["model_dir"])
    result = _run("dicom_predict.py", f"--model={trained['model_dir']}", f"--checkpoint={name}",
                  f"--output_csv={out}", str(mixed_folder / "chest.png"), str(mixed_folder),
                  str(mixed_folder / "sub" / ".." / "sub" / "hand.jpg"))
    assert result.returncode == 0, result.stderr[-2000:]
    files = [row["file"] for row in csv.DictReader(out.open())]
    assert len(files) == len(set(files)) == 5 and files[0] == str(mixed_folder / "chest.png")
    assert "5 files: 4 ok" in result.stdout
    # notes.txt: no row says it was left out, the summary does
    assert (f"passed over 1 other file in the folders (not DICOM, JPEG or PNG; e.g. "
            f"{mixed_folder / 'notes.txt'})") in result.stdout
    info = json.loads((tmp_path / "p.json").read_text())
    assert info["model"] == f"{trained['model_dir']}/{name}"


def test_predict_cli_min_confidence_marks_uncertain(trained, mixed_folder, tmp_path):
    out = tmp_path / "p.csv"
    result = _run("dicom_predict.py", f"--model={trained['export']}", f"--output_csv={out}",
                  "--min_confidence=1.0", str(mixed_folder / "chest.png"),
                  str(mixed_folder / "broken.png"))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert [row["status"] for row in rows] == ["uncertain", "error"]
    assert rows[0]["predicted_class"] == "uncertain" and rows[0]["top_k"].split(":")[0] in CLASSES
    assert "broken.png" in rows[1]["error"]
    assert "1 uncertain, 1 error;" in result.stdout
    assert "%|" not in result.stderr  # no progress bar when stderr is not a terminal


def test_predict_renders_a_dicom_as_the_models_training_data_was(trained, tmp_path):
    """A model trained on records converted with --dicom_voi=minmax was fed DICOM files
    rendered with the default window by dicom_predict.py: the same file scored differently
    in evaluation and prediction (walk-through). The rendering recorded in config.json is used,
    for a model_dir as for its export."""
    import shutil

    from pydicom.data import get_testdata_file

    from dataset import dicom
    from dataset.dicom_options import DicomOptions
    from official.core import export, restore
    from official.core.inference import Predictor
    from tests.test_views_ensembles import _model_dir_like

    minmax = {"voi": "minmax", "window_center": None, "window_width": None, "bits": 8}
    model_dir = _model_dir_like(trained, tmp_path / "minmax", dicom_rendering=minmax)
    exported = export.export_ensemble([(*restore.load_model_from_dir(model_dir), model_dir)],
                                      str(tmp_path / "export"))
    scan = tmp_path / "in" / "mr.dcm"  # MR_small: a stored window of 600/1600, not min-max
    scan.parent.mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), scan)

    def rendered(voi):
        return dicom.read_dicom(scan, DicomOptions(voi=voi), hash_key=b"k")[0][0].png

    predictor = Predictor(model_dir)
    assert predictor.dicom_rendering == Predictor(exported).dicom_rendering == minmax
    expected, windowed = (predictor([rendered(voi)])[0] for voi in ("minmax", "window"))
    assert np.abs(expected - windowed).max() > 1e-3  # the rendering matters to it
    out = tmp_path / "predictions.csv"
    result = _run("dicom_predict.py", f"--model={model_dir}", f"--output_csv={out}",
                  "--top_k=2", str(scan))
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = csv.DictReader(out.open())
    scores = dict(pair.split(":") for pair in row["top_k"].split(";"))
    np.testing.assert_allclose([float(scores[name]) for name in CLASSES], expected, atol=1e-4)


def test_an_ensemble_of_models_trained_on_differently_rendered_dicoms_is_refused(trained,
                                                                                 tmp_path):
    from official.core.inference import load_predictor
    from tests.test_views_ensembles import _model_dir_like

    from official.core import export, restore

    minmax = _model_dir_like(trained, tmp_path / "minmax", dicom_rendering={"voi": "minmax"})
    message = (r"cannot ensemble .*: their training DICOMs were rendered differently "
               r"\(voi=window, bits=8 vs voi=minmax, bits=8\); use one model at a time")
    with pytest.raises(ValueError, match=message):
        load_predictor([trained["model_dir"], minmax])
    members = [(*restore.load_model_from_dir(path), path) for path in (trained["model_dir"],
                                                                        minmax)]
    with pytest.raises(ValueError, match=message):  # a SavedModel of them: refused alike
        export.export_ensemble(members, str(tmp_path / "export"))
    assert not (tmp_path / "export").exists()
    # A model from before the rendering was recorded, beside one trained on defaults: alike.
    defaults = {"voi": "window", "window_center": None, "window_width": None, "bits": 8}
    explicit = _model_dir_like(trained, tmp_path / "explicit", dicom_rendering=defaults)
    assert load_predictor([trained["model_dir"], explicit]).dicom_rendering == defaults


def test_the_source_dir_is_recorded_absolute(tmp_path, monkeypatch):
    """Recorded as typed, a relative --dataset_dir in metrics.json named nothing from another
    working directory."""
    from official.core.evaluation import source_dir
    from tests.test_convert import convert, make_class_folders

    make_class_folders(tmp_path / "ds", {"A": 2, "B": 2})
    monkeypatch.chdir(tmp_path)
    convert("ds", tmp_path / "out", output_name="all")
    assert source_dir(str(tmp_path / "out")) == str(tmp_path / "ds")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    manifest["flags"]["dataset_dir"] = "ds"  # as older conversions recorded it
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(manifest))
    assert source_dir(str(tmp_path / "out")) is None


def test_an_ensemble_names_each_model_once(trained):
    from official.core.inference import load_predictor

    model = trained["model_dir"]
    with pytest.raises(ValueError, match=f"^{model}/ is named twice in the ensemble \\(as "
                                         f"{model}\\): each model once$"):
        load_predictor([model, trained["export"], f"{model}/"])
    export_dir = os.path.dirname(trained["export"])  # the folder and its newest version
    with pytest.raises(ValueError, match="is named twice in the ensemble"):
        load_predictor([export_dir, trained["export"]])


def test_an_interrupt_says_an_earlier_report_or_csv_is_not_this_runs(tmp_path, monkeypatch):
    """A Ctrl-C said "the report is missing or incomplete" (reports are replaced whole: never
    incomplete) and "no predictions were written to p.csv" beside an earlier run's p.csv."""
    from networks.resnet import dicom_predict
    from official.utils import report as report_module
    from official.utils.cli import report_left  # dicom_eval's and eval_image_classifier's

    monkeypatch.setattr(report_module, "_WRITTEN", [])
    report = tmp_path / "eval_test"
    assert report_left(str(report)) == f"no new report was written to {report}"
    report.mkdir()
    (report / "metrics.json").write_text("{}")
    assert "earlier run's" in report_left(str(report))
    assert "earlier run's" in report_left(None)
    report_module.write_report(  # then interrupted in the TensorBoard copy
        report, labels=[0], probabilities=[[0.9, 0.1]], class_names=["A", "B"],
        filenames=["a.png"])
    assert report_left(None).startswith(f"the report in {report} is whole")
    csv_path = tmp_path / "p.csv"
    assert dicom_predict.left_by_interrupt(str(csv_path)).endswith(f"written to {csv_path}")
    csv_path.write_text("file,status\n")
    assert dicom_predict.left_by_interrupt(str(csv_path)) == (
        f"no predictions were written; {csv_path} is an earlier run's, left as it was")
