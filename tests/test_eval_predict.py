"""Evaluation reports and prediction CSVs from a model_dir and from its SavedModel."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.trainer_fixtures import REPO_ROOT, class_image, tiny_dataset, trainer_env
from tests.conftest import write_image

CLASSES = ("Chest", "Hand")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A ResNet-18 trained a few steps on tiny data, with a SavedModel export."""
    from networks.resnet.train_steps import ResNetNetwork
    from official.core import train_lib
    from official.core.config import TrainConfig
    from official.utils.misc import distribution_utils

    root = tmp_path_factory.mktemp("trained")
    data_dir = tiny_dataset(root / "data", train_per_class=8, eval_per_class=4, classes=CLASSES)
    config = TrainConfig(model_dir=str(root / "model"), data_dir=str(data_dir), image_size=32,
                         train_epochs=2, batch_size=8, hooks=(), seed=1,
                         export_dir=str(root / "export"))
    result = train_lib.train(config, distribution_utils.get_distribution_strategy(num_gpus=0),
                             ResNetNetwork(resnet_size=18, version=2, small_input=False))
    return {"root": root, "data_dir": str(data_dir), "model_dir": config.model_dir,
            "export": result.export_path}


def _predictor(path):
    from official.core.inference import Predictor

    return Predictor(path)


def test_model_dir_and_saved_model_give_the_same_report(trained, tmp_path):
    from official.core.evaluation import evaluate_split
    from official.utils.report import write_report

    reports = {}
    for name in ("model_dir", "export"):
        predictor = _predictor(trained[name])
        labels, probabilities, files = evaluate_split(predictor, trained["data_dir"],
                                                      "validation", batch_size=3)
        assert len(labels) == len(files) == 8 and probabilities.shape == (8, 2)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
        reports[name] = (labels, probabilities,
                         write_report(tmp_path / name, labels=labels, probabilities=probabilities,
                                      class_names=list(CLASSES), filenames=files))
    np.testing.assert_array_equal(reports["model_dir"][0], reports["export"][0])
    np.testing.assert_allclose(reports["model_dir"][1], reports["export"][1], atol=1e-5)
    assert reports["model_dir"][2]["confusion_matrix"] == reports["export"][2]["confusion_matrix"]


def _run(script, *args):
    return subprocess.run([sys.executable, str(REPO_ROOT / "networks" / "resnet" / script), *args],
                          capture_output=True, text=True, env=trainer_env(), cwd=REPO_ROOT,
                          timeout=180)


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


def test_eval_cli_errors_are_one_line(trained, tmp_path):
    result = _run("dicom_eval.py", f"--model={tmp_path}", f"--data_dir={trained['data_dir']}")
    assert result.returncode == 1
    assert "neither a SavedModel" in result.stderr and str(tmp_path) in result.stderr
    result = _run("dicom_eval.py", f"--model={trained['model_dir']}",
                  f"--data_dir={trained['data_dir']}", "--split=nope")
    assert result.returncode == 1 and "no split 'nope'" in result.stderr


@pytest.fixture
def mixed_folder(tmp_path):
    """DICOM (pydicom's test files, one without extension), JPEG, PNG, a corrupt file."""
    from pydicom.data import get_testdata_file

    folder = tmp_path / "incoming"
    rng = np.random.default_rng(3)
    write_image(folder / "chest.png", class_image(rng, 0, 32))
    write_image(folder / "sub" / "hand.jpg", class_image(rng, 1, 40))
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    (folder / "sub" / "deeper").mkdir(parents=True)
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "sub" / "deeper" / "MR0001")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "notes.txt").write_text("not an image")  # ignored inside folders
    return folder


def test_predict_mixed_folder_one_row_per_file(trained, mixed_folder, tmp_path):
    from dataset.dicom import DicomOptions
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


def test_predict_cli_min_confidence_marks_uncertain(trained, mixed_folder, tmp_path):
    out = tmp_path / "p.csv"
    result = _run("dicom_predict.py", f"--model={trained['export']}", f"--output_csv={out}",
                  "--min_confidence=1.0", str(mixed_folder / "chest.png"),
                  str(mixed_folder / "missing.png"))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert [row["status"] for row in rows] == ["uncertain", "error"]
    assert rows[0]["predicted_class"] == "uncertain" and rows[0]["top_k"].split(":")[0] in CLASSES
    assert "missing.png" in rows[1]["error"]
    assert "1 uncertain, 1 errors" in result.stdout
    assert "%|" not in result.stderr  # no progress bar when stderr is not a terminal
