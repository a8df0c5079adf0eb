"""Test-time views and ensembles in evaluation, prediction and export (the model: conftest.py's
`trained`, with freshly initialised members beside it)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests.trainer_fixtures import TRAINED_CLASSES as CLASSES, checkpoint_name, class_image, \
    run_resnet_cli as _run


def _model_dir_like(trained, folder, **changes):
    """A model_dir with the trained run's config changed by `changes` (e.g. another
    image_size or class order) and freshly initialised weights: an ensemble member."""
    from official.core import restore

    config = {**json.loads(open(f"{trained['model_dir']}/config.json").read()), **changes}
    # The network is rebuilt from the "model" spec; keep it in step with the top-level keys.
    config["model"] = {**config["model"],
                       **{key: value for key, value in changes.items() if key in config["model"]}}
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    import tensorflow as tf

    model = restore.build_inference_model(config)
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
    from official.core import export, restore
    from official.core.inference import Predictor

    model, config = restore.load_model_from_dir(trained["model_dir"])
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
    with pytest.raises(ValueError, match=r"only in .*\['Hand'\]; classes only in .*\['Foot'\]"):
        load_predictor([trained["export"], other])
    more = _model_dir_like(trained, tmp_path / "more", class_names=[*CLASSES, "Foot"],
                           num_classes=3)
    with pytest.raises(ValueError) as error:  # one side has no class of its own: not said
        load_predictor([trained["export"], more])
    message = str(error.value)
    assert message.count("only in") == 1 and message.endswith(": ['Foot']"), message
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
                  f"--data_dir={trained['data_dir']}", "--split=validation",
                  f"--output_dir={out}", without_tensorflow=True)
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "error: cannot ensemble" in lines[0], lines
    assert swapped in lines[0] and "different order" in lines[0]
    assert not out.exists()
    csv_path = tmp_path / "p.csv"
    result = _run("dicom_predict.py", f"--model={trained['export']},{swapped}",
                  f"--output_csv={csv_path}", str(mixed_folder / "chest.png"),
                  without_tensorflow=True)
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
                f"--checkpoint={checkpoint_name(trained['model_dir'])}",
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
                  f"--export_dir={out}", without_tensorflow=True)
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "cannot ensemble" in lines[0] and "image_size 32 vs 48" in lines[0]
    assert not out.exists() or not list(out.iterdir())
    result = _run("dicom_export.py", f"--model_dir={tmp_path / 'missing'}",
                  f"--export_dir={out}", without_tensorflow=True)
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        f"dicom_export.py: error: {tmp_path / 'missing'}: no such folder"]
    result = _run("dicom_export.py", f"--model_dir={trained['model_dir']},{trained['model_dir']}",
                  f"--export_dir={out}", without_tensorflow=True)
    assert result.returncode == 1 and "is named twice in the ensemble" in result.stderr
    # Versions among the checkpoints: a later evaluation of the folder read the old export.
    result = _run("dicom_export.py", f"--model_dir={trained['model_dir']}",
                  f"--export_dir={trained['model_dir']}/", without_tensorflow=True)
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        f"dicom_export.py: error: --export_dir={trained['model_dir']}/ is a --model_dir; give "
        f"the export a folder of its own (e.g. {trained['model_dir']}/export)"]


def test_a_re_export_keeps_the_views_the_trainer_exported_with(trained, tmp_path):
    """A model trained with --export_tta=3 re-exported without --tta lost its views (its
    predictions then differed from the trainer's own export's)."""
    from official.core.export import trained_export_tta

    with_views = _model_dir_like(trained, tmp_path / "views", export_tta=3)
    result = _run("dicom_export.py", f"--model_dir={with_views}",
                  f"--export_dir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("(3 test-time views averaged)")
    (version,) = list((tmp_path / "out").iterdir())
    config = json.loads((version / "assets.extra" / "config.json").read_text())
    assert config["tta_views"] == config["export_tta"] == 3
    # An ensemble's members trained with different counts: none is the trainer's, so none.
    assert trained_export_tta([{"export_tta": 3}, {"export_tta": 3}]) == 3
    assert trained_export_tta([{"export_tta": 3}, {"export_tta": 1}]) == 1
    assert trained_export_tta([{}]) == 1  # a config from before the flag


def test_a_predictor_names_its_weights_not_only_their_path(trained, tmp_path):
    """A model_dir trained again reuses its checkpoints' names and a SavedModel folder may be
    replaced in place: Predictor.weights (what --resume and the reports compare) tells them
    apart, and a copy of the same export elsewhere keeps it."""
    import shutil

    import tensorflow as tf

    from official.core import export as export_lib, restore
    from official.core.inference import Predictor

    run = tmp_path / "run"
    shutil.copytree(trained["model_dir"], run)
    before = Predictor(str(run))
    assert before.weights == Predictor(trained["model_dir"]).weights
    model, config = restore.load_model_from_dir(str(run))
    model.trainable_variables[0].assign_add(tf.ones_like(model.trainable_variables[0]))
    number = int(before.source.rsplit("-", 1)[1])  # the same name, other weights
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(run), 3).save(number)
    after = Predictor(str(run))
    assert after.source == before.source and after.weights != before.weights
    assert np.abs(after(_encoded()) - before(_encoded())).max() > 1e-4

    export = Predictor(trained["export"])
    shutil.copytree(export.source, tmp_path / "deployed")
    assert Predictor(str(tmp_path / "deployed")).weights == export.weights
    shutil.rmtree(tmp_path / "deployed")  # replaced in place by the changed model's export
    shutil.copytree(export_lib.export_saved_model(model, config, str(tmp_path / "exports")),
                    tmp_path / "deployed")
    assert Predictor(str(tmp_path / "deployed")).weights not in (export.weights, after.weights)
