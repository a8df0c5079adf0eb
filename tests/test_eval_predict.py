"""Evaluation reports and prediction CSVs from a model_dir and from its SavedModel."""

from __future__ import annotations

import csv
import json
import os
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


def _checkpoint_name(model_dir: str) -> str:
    """The latest checkpoint's bare name, e.g. "ckpt-4", as a user types it after --model."""
    import tensorflow as tf

    return os.path.basename(tf.train.latest_checkpoint(model_dir))


def test_eval_cli_finds_a_bare_checkpoint_name_inside_the_model_dir(trained, tmp_path):
    name = _checkpoint_name(trained["model_dir"])
    out = tmp_path / "report"
    result = subprocess.run(  # from a working directory that does not hold the name
        [sys.executable, str(REPO_ROOT / "networks" / "resnet" / "dicom_eval.py"),
         f"--model={trained['model_dir']}", f"--checkpoint={name}",
         f"--data_dir={trained['data_dir']}", "--split=validation", f"--output_dir={out}"],
        capture_output=True, text=True, env=trainer_env(), cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == f"{trained['model_dir']}/{name}"
    from official.core.inference import Predictor

    with pytest.raises(FileNotFoundError) as error:
        Predictor(trained["model_dir"], "ckpt-999")
    assert str(error.value) == (f"ckpt-999: no such checkpoint (looked for ckpt-999.index and "
                                f"{trained['model_dir']}/ckpt-999.index)")


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


def test_predict_cli_bare_checkpoint_and_a_file_named_twice(trained, mixed_folder, tmp_path):
    """chest.png named and inside its folder, hand.jpg through another spelling: each is
    predicted once; --checkpoint is a bare name inside --model."""
    out = tmp_path / "p.csv"
    name = _checkpoint_name(trained["model_dir"])
    result = _run("dicom_predict.py", f"--model={trained['model_dir']}", f"--checkpoint={name}",
                  f"--output_csv={out}", str(mixed_folder / "chest.png"), str(mixed_folder),
                  str(mixed_folder / "sub" / ".." / "sub" / "hand.jpg"))
    assert result.returncode == 0, result.stderr[-2000:]
    files = [row["file"] for row in csv.DictReader(out.open())]
    assert len(files) == len(set(files)) == 5 and files[0] == str(mixed_folder / "chest.png")
    assert "5 files: 4 ok" in result.stdout
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
    assert "1 uncertain, 1 errors" in result.stdout
    assert "%|" not in result.stderr  # no progress bar when stderr is not a terminal


# Test-time views and ensembles.

def _model_dir_like(trained, folder, **changes):
    """A model_dir with the trained run's config changed by `changes` (e.g. another
    image_size or class order) and freshly initialised weights: an ensemble member."""
    from official.core import export

    config = {**json.loads(open(f"{trained['model_dir']}/config.json").read()), **changes}
    # The network is rebuilt from the "model" spec; keep it in step with the top-level keys.
    config["model"] = {**config["model"],
                       **{key: value for key, value in changes.items() if key in config["model"]}}
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    import tensorflow as tf

    model = export.build_inference_model(config)
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(folder), 1).save(1)
    return str(folder)


@pytest.fixture(scope="module")
def other_model(trained, tmp_path_factory):
    """A second member with the same classes at another image size."""
    return _model_dir_like(trained, tmp_path_factory.mktemp("other") / "model", image_size=48)


def _encoded(count=6):
    from tests.trainer_fixtures import png_bytes

    rng = np.random.default_rng(7)
    return [png_bytes(class_image(rng, index % 2, 32 + 8 * (index % 3))) for index in range(count)]


def test_client_side_views_equal_a_model_dir_with_views(trained):
    """A SavedModel exported without views gets them from the Predictor (decode, resize,
    views, predict_images per view): the same numbers as ServingModule's own views."""
    from official.core.inference import Predictor

    images = _encoded()
    from_dir = Predictor(trained["model_dir"], tta_views=3)
    from_export = Predictor(trained["export"], tta_views=3)
    assert from_dir.tta_views == from_export.tta_views == 3
    with_views = from_dir(images)
    np.testing.assert_allclose(from_export(images), with_views, atol=1e-5)
    np.testing.assert_allclose(with_views.sum(axis=1), 1.0, rtol=1e-5)
    assert np.abs(with_views - Predictor(trained["model_dir"])(images)).max() > 1e-4


def test_export_with_views_built_in_refuses_more(trained, tmp_path):
    from official.core import export
    from official.core.inference import Predictor

    model, config = export.load_model_from_dir(trained["model_dir"])
    path = export.export_saved_model(model, config, str(tmp_path / "export"), tta_views=3)
    baked = Predictor(path)
    assert baked.tta_views == 3
    images = _encoded()
    np.testing.assert_allclose(baked(images), Predictor(trained["model_dir"], tta_views=3)(images),
                               atol=1e-5)
    with pytest.raises(ValueError, match=r"exported with 3 test-time views .* augment twice"):
        Predictor(path, tta_views=2)


def test_ensemble_is_the_mean_of_its_members(trained, other_model):
    from official.core.inference import Ensemble, Predictor, load_predictor

    paths = [trained["model_dir"], other_model, trained["export"]]
    ensemble = load_predictor(paths)
    assert isinstance(ensemble, Ensemble) and ensemble.class_names == list(CLASSES)
    assert len(ensemble.members) == 3 and ensemble.tta_views == [1, 1, 1]
    images = _encoded()
    members = [Predictor(path)(images) for path in paths]
    assert np.abs(members[0] - members[1]).max() > 1e-3  # the mean is not trivially any one
    np.testing.assert_allclose(ensemble(images), np.mean(members, axis=0), atol=1e-6)
    assert isinstance(load_predictor(paths[:1]), Predictor)  # one model stays a Predictor


def test_ensemble_refuses_different_classes(trained, tmp_path):
    from official.core.inference import load_predictor

    swapped = _model_dir_like(trained, tmp_path / "swapped", class_names=["Hand", "Chest"])
    with pytest.raises(ValueError) as error:
        load_predictor([trained["model_dir"], swapped])
    message = str(error.value)
    assert "\n" not in message and trained["model_dir"] in message and swapped in message
    assert "different order: class 0 is 'Chest'" in message
    other = _model_dir_like(trained, tmp_path / "other", class_names=["Chest", "Foot"])
    with pytest.raises(ValueError, match=r"only in .*\['Hand'\]; only in .*\['Foot'\]"):
        load_predictor([trained["export"], other])
    with pytest.raises(ValueError, match="--checkpoint .* 2 models"):
        load_predictor([trained["model_dir"], swapped], checkpoint="ckpt-1")


def test_eval_cli_ensemble_with_views_records_both(trained, other_model, tmp_path):
    out = tmp_path / "report"
    result = _run("dicom_eval.py", f"--model={trained['export']},{other_model}", "--tta=2",
                  f"--data_dir={trained['data_dir']}", "--split=validation",
                  f"--output_dir={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_examples"] == 8 and metrics["tta_views"] == 2
    assert [member["tta_views"] for member in metrics["members"]] == [2, 2]
    assert metrics["members"][0]["model"].startswith(trained["export"])
    assert metrics["members"][1]["model"].startswith(other_model)
    # Without --output_dir an ensemble's report would belong to no model: refused up front.
    result = _run("dicom_eval.py", f"--model={trained['export']},{other_model}",
                  f"--data_dir={trained['data_dir']}")
    assert result.returncode != 0 and "needs --output_dir" in result.stderr


def test_cli_mismatched_ensemble_is_one_error_line_and_writes_nothing(trained, mixed_folder,
                                                                      tmp_path):
    from tests.trainer_fixtures import error_lines

    swapped = _model_dir_like(trained, tmp_path / "swapped", class_names=["Hand", "Chest"])
    out = tmp_path / "report"
    result = _run("dicom_eval.py", f"--model={trained['model_dir']},{swapped}",
                  f"--data_dir={trained['data_dir']}", f"--output_dir={out}")
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "error: cannot ensemble" in lines[0], lines
    assert swapped in lines[0] and "different order" in lines[0]
    assert not out.exists()
    csv_path = tmp_path / "p.csv"
    result = _run("dicom_predict.py", f"--model={trained['export']},{swapped}",
                  f"--output_csv={csv_path}", str(mixed_folder / "chest.png"))
    assert result.returncode == 1 and "cannot ensemble" in result.stderr
    assert not list(tmp_path.glob("p.*"))


def test_predict_cli_ensemble_with_views(trained, other_model, mixed_folder, tmp_path):
    out = tmp_path / "p.csv"
    result = _run("dicom_predict.py", f"--model={trained['model_dir']},{other_model}",
                  "--tta=3", f"--output_csv={out}", str(mixed_folder / "chest.png"),
                  str(mixed_folder / "sub" / "hand.jpg"))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert [row["status"] for row in rows] == ["ok", "ok"]
    info = json.loads((tmp_path / "p.json").read_text())
    assert info["tta_views"] == 3 and len(info["members"]) == 2
    assert info["counts"] == {"ok": 2, "uncertain": 0, "error": 0}
    # The CSV's probabilities are the in-process ensemble's.
    from official.core.inference import load_predictor

    ensemble = load_predictor([trained["model_dir"], other_model], tta_views=3)
    expected = ensemble([(mixed_folder / "chest.png").read_bytes(),
                         (mixed_folder / "sub" / "hand.jpg").read_bytes()])
    for row, probabilities in zip(rows, expected):
        assert float(row["probability"]) == pytest.approx(probabilities.max(), abs=1e-5)


@pytest.mark.parametrize("script", ["dicom_eval.py", "dicom_predict.py"])
def test_help_explains_views_and_ensembles(script):
    result = _run(script, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    text = " ".join(result.stdout.split())
    from dataset import test_time

    assert "--tta" in text and "never a mirror" in text
    assert f"up to {len(test_time.TTA_VIEWS)}" in text
    assert "comma-separated, form an ensemble" in text and "same order" in text


# One SavedModel from model_dirs: dicom_export.py.

def test_export_cli_ensemble_is_one_model_equal_to_the_in_process_ensemble(trained, tmp_path):
    from official.core.inference import Predictor, load_predictor

    second = _model_dir_like(trained, tmp_path / "second")  # same size, other weights
    out = tmp_path / "ensemble"
    result = _run("dicom_export.py", f"--model_dir={trained['model_dir']},{second}",
                  f"--export_dir={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "exported the ensemble of 2 models to" in result.stdout
    (version,) = list(out.iterdir())
    config = json.loads((version / "assets.extra" / "config.json").read_text())
    assert [member["source"] for member in config["ensemble"]] == [trained["model_dir"], second]
    images = _encoded()
    members = [Predictor(path)(images) for path in (trained["model_dir"], second)]
    assert np.abs(members[0] - members[1]).max() > 1e-3
    ensembled = Predictor(str(out))(images)
    np.testing.assert_allclose(ensembled, np.mean(members, axis=0), atol=1e-5)
    np.testing.assert_allclose(ensembled, load_predictor([trained["model_dir"], second])(images),
                               atol=1e-5)
    # One model_dir: the same model the trainer exported (its last checkpoint, named as a
    # user would: inside the model_dir).
    single = tmp_path / "single"
    assert _run("dicom_export.py", f"--model_dir={trained['model_dir']}",
                f"--checkpoint={_checkpoint_name(trained['model_dir'])}",
                f"--export_dir={single}").returncode == 0
    (version,) = list(single.iterdir())
    assert "ensemble" not in json.loads((version / "assets.extra" / "config.json").read_text())
    np.testing.assert_allclose(Predictor(str(single))(images), Predictor(trained["export"])(images),
                               atol=1e-5)


def test_export_cli_refuses_mismatched_members_in_one_line_and_writes_nothing(
        trained, other_model, tmp_path):
    from tests.trainer_fixtures import error_lines

    out = tmp_path / "ensemble"
    result = _run("dicom_export.py", f"--model_dir={trained['model_dir']},{other_model}",
                  f"--export_dir={out}")
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "cannot ensemble" in lines[0] and "image_size 32 vs 48" in lines[0]
    assert not out.exists() or not list(out.iterdir())
    result = _run("dicom_export.py", f"--model_dir={tmp_path / 'missing'}",
                  f"--export_dir={out}")
    assert result.returncode == 1 and len(error_lines(result.stderr)) == 1
    assert "config.json" in result.stderr
