"""The DICOM rendering of a model trained before config.json recorded it (2026-12-05): the one
its training data's manifest records, read through the config's data_dir
(model_paths.training_rendering), for the Predictor, the ensemble check, the export and a
resumed run; the defaults, said once, when that data is gone."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from dataset.dicom_options import DicomOptions, rendering_of
from official.core import model_paths
from official.core.resume import rendering_change
from tests.test_convert import convert, make_class_folders

GIVEN = {"voi": "given", "window_center": 40.0, "window_width": 400.0, "bits": 16}
DEFAULTS = rendering_of(None)


def _converted(folder, classes=("Chest", "Hand"), **dicom) -> str:
    """Records converted by the converter's library with these DICOM options (the PNGs it
    converts need none: the manifest records the options all the same)."""
    make_class_folders(folder / "source", dict.fromkeys(classes, 2))
    convert(folder / "source", folder / "records", output_name="all",
            dicom=DicomOptions(**dicom))
    return str(folder / "records")


def _old_config(data_dir: str) -> dict:
    """A config.json as the trainer wrote it before 2026-12-05: no "dicom_rendering"."""
    return {"class_names": ["Chest", "Hand"], "data_dir": data_dir}


def _warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.levelno == logging.WARNING]


def test_an_old_models_rendering_is_its_training_datas(tmp_path, caplog):
    config = _old_config(_converted(tmp_path, **GIVEN))
    assert model_paths.training_rendering(config) == (GIVEN, None)
    assert model_paths.model_rendering(config, str(tmp_path / "model")) == GIVEN
    assert _warnings(caplog) == []
    # What is recorded wins, a recorded None (a conversion from before it was recorded) too.
    assert model_paths.model_rendering({**config, "dicom_rendering": None}) == DEFAULTS
    assert model_paths.model_rendering({**config, "dicom_rendering": {"voi": "minmax"}}) == {
        **DEFAULTS, "voi": "minmax"}


def test_an_old_model_without_its_training_data_gets_the_defaults_said_once(tmp_path, caplog):
    model = str(tmp_path / "model")
    gone = _old_config(str(tmp_path / "records"))
    rendering, unknown = model_paths.training_rendering(gone)
    assert rendering is None and unknown.startswith(f"{tmp_path}/records: no such folder")
    for _ in range(2):  # the ensemble check, then the Predictor, ...: one line
        assert model_paths.model_rendering(gone, model) == DEFAULTS
    (warning,) = _warnings(caplog)
    assert warning.startswith(f"{model}: its config.json does not record how its training "
                              "DICOMs were rendered (trained before 2026-12-05), nor can its "
                              f"training data say ({tmp_path}/records: no such folder")
    assert warning.endswith("DICOM files are rendered with the defaults (voi=window, bits=8)")
    assert len(warning.splitlines()) == 1
    assert model_paths.model_rendering(_old_config(None)) == DEFAULTS  # no data_dir at all
    assert len(_warnings(caplog)) == 1  # a check (no model named) says nothing


def test_the_ensemble_check_reads_an_old_models_rendering_from_its_data(tmp_path):
    old = _old_config(_converted(tmp_path / "given", **GIVEN))
    recorded = {**old, "dicom_rendering": GIVEN}
    model_paths.check_same_rendering([("old", old), ("new", recorded)])  # alike: no error
    # Read as the defaults (before), the old model was refused beside the one it matches,
    # and allowed beside one trained on default-rendered data.
    defaults = {**old, "dicom_rendering": None}
    with pytest.raises(ValueError, match=r"^cannot ensemble old and new: their training DICOMs "
                       r"were rendered differently \(voi=given, window_center=40.0, "
                       r"window_width=400.0, bits=16 vs voi=window, bits=8\)"):
        model_paths.check_same_rendering([("old", old), ("new", defaults)])


def test_a_resumed_old_run_compares_its_start_with_its_training_datas_rendering(tmp_path):
    saved = _old_config(_converted(tmp_path / "given", **GIVEN))
    assert rendering_change(saved, GIVEN) is None
    assert rendering_change(saved, {"voi": "minmax"}) == (
        "this run's records rendered DICOM files with voi=minmax, bits=8, the run's start with "
        "voi=given, window_center=40.0, window_width=400.0, bits=16; prediction will render "
        "new DICOM files as these records were")
    # Its data gone: nothing to compare (as before).
    assert rendering_change(_old_config(str(tmp_path / "gone")), {"voi": "minmax"}) is None
    # Started on records that recorded no rendering (the defaults): said too (it was not).
    assert rendering_change({**saved, "dicom_rendering": None}, {"voi": "minmax"}) == (
        "this run's records rendered DICOM files with voi=minmax, bits=8, the run's start with "
        "voi=window, bits=8; prediction will render new DICOM files as these records were")
    assert rendering_change({**saved, "dicom_rendering": None}, None) is None


def _old_model_dir(trained, folder, data_dir: str) -> str:
    """A model_dir of the trained network whose config.json is from before the rendering was
    recorded and names ``data_dir`` as its training data."""
    from tests.test_views_ensembles import _model_dir_like

    model_dir = _model_dir_like(trained, folder, data_dir=data_dir)
    config = json.loads((folder / "config.json").read_text())
    del config["dicom_rendering"]
    (folder / "config.json").write_text(json.dumps(config))
    return model_dir


def test_the_predictor_renders_as_an_old_models_training_data_was(trained, tmp_path, caplog):
    """A model from before the rendering was recorded, trained on records converted with
    --dicom_voi=given, was fed DICOM files rendered with the default window."""
    from official.core import export, restore
    from official.core.inference import Predictor, load_predictor

    data_dir = _converted(tmp_path / "data", **GIVEN)
    model_dir = _old_model_dir(trained, tmp_path / "model", data_dir)
    assert Predictor(model_dir).dicom_rendering == GIVEN
    exported = export.export_ensemble([(*restore.load_model_from_dir(model_dir), model_dir)],
                                      str(tmp_path / "export"))
    # The export records it: it renders alike where the training data is not.
    shutil.rmtree(data_dir)
    assert json.loads(open(f"{exported}/assets.extra/config.json").read())[
        "dicom_rendering"] == GIVEN
    assert Predictor(exported).dicom_rendering == GIVEN
    assert _warnings(caplog) == []
    # Its training data gone, the model_dir is fed the defaults, as before, and says so once.
    assert load_predictor([model_dir]).dicom_rendering == DEFAULTS
    (warning,) = _warnings(caplog)
    assert warning.startswith(f"{model_dir}: its config.json does not record how its "
                              "training DICOMs were rendered")


def test_an_old_models_data_dir_holding_another_conversion_is_not_its_training_data(
        tmp_path, monkeypatch, caplog):
    """The folder was converted again for other classes since (or, relative, it is read from
    another working directory, where a folder of that name holds other data): its rendering
    was taken as the model's, silently. Its classes are not the model's (a model's class
    names are its training manifest's): the defaults, said as when the data is gone."""
    model = str(tmp_path / "model")
    other = _converted(tmp_path / "other", classes=("Abdomen", "Head"), voi="minmax")
    replaced = _old_config(other)
    rendering, unknown = model_paths.training_rendering(replaced)
    assert rendering is None
    assert unknown == (f"{other} holds another conversion now: classes ['Abdomen', 'Head'], "
                       "not the model's ['Chest', 'Hand']")
    assert model_paths.model_rendering(replaced, model) == DEFAULTS
    (warning,) = _warnings(caplog)
    assert warning.startswith(f"{model}: its config.json does not record how its training "
                              f"DICOMs were rendered (trained before 2026-12-05), nor can its "
                              f"training data say ({other} holds another conversion now")
    # Relative, as an older trainer recorded it as typed: read from the working directory.
    monkeypatch.chdir(tmp_path / "other")
    assert model_paths.training_rendering(_old_config("records"))[0] is None
    # Its own data there: read.
    _converted(tmp_path / "mine", **GIVEN)
    monkeypatch.chdir(tmp_path / "mine")
    assert model_paths.training_rendering(_old_config("records")) == (GIVEN, None)
