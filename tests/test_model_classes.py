"""The models' classes read from their config.json without TensorFlow (model_paths.check_models)
and checked against the data's (check_data_classes), so that dicom_eval.py and
eval_image_classifier.py refuse data of other classes before TensorFlow's import. The programs
end to end: tests/test_eval_predict.py, tests/test_slim_eval_cli.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from official.core import model_paths
from official.core.config import write_config


def _model_dir(path, class_names, **extra):
    write_config(str(path), {"class_names": list(class_names), "image_size": 32, **extra})
    return str(path)


def _saved_model(path, class_names):
    (path / "assets.extra").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"")  # only its presence is read here
    (path / "assets.extra" / "config.json").write_text(json.dumps(
        {"class_names": list(class_names)}))
    return str(path)


def test_check_models_returns_the_classes_its_configs_agree_on(tmp_path):
    one = _model_dir(tmp_path / "a", ["Chest", "Hand"])
    export = _saved_model(tmp_path / "export" / "7", ["Chest", "Hand"])
    assert model_paths.check_models([one]) == ["Chest", "Hand"]
    # An export folder is read through its newest version; an ensemble gives its classes.
    assert model_paths.check_models([str(tmp_path / "export")]) == ["Chest", "Hand"]
    assert model_paths.check_models([one, export]) == ["Chest", "Hand"]
    # Members without a checkpoint yet are not compared (TensorFlow decides, and its ensemble
    # error comes first): their classes are then no one model's.
    other = _model_dir(tmp_path / "b", ["Chest", "Knee"])
    assert model_paths.check_models([one, other]) is None
    write_config(str(tmp_path / "d"), {"image_size": 32})  # no class_names: not ours to say
    assert model_paths.check_models([str(tmp_path / "d")]) is None


def test_check_data_classes_says_what_evaluation_says(tmp_path):
    from official.core import evaluation  # TensorFlow: imported by this test only

    model = ["Chest", "Hand"]
    model_paths.check_data_classes(str(tmp_path), ("Hand",), model)  # some of them: fine
    model_paths.check_data_classes(str(tmp_path), ("Chest", "Hand"), model)
    with pytest.raises(ValueError) as early:
        model_paths.check_data_classes(str(tmp_path), ("Hand", "Knee"), model)
    with pytest.raises(ValueError) as late:
        evaluation.label_map(["Hand", "Knee"], model, str(tmp_path))
    assert str(early.value) == str(late.value) == (
        f"{tmp_path}: classes ['Knee'] are not among the model's ['Chest', 'Hand']")
    assert np.array_equal(evaluation.label_map(["Hand"], model, str(tmp_path)), [1])


def test_weights_digest_follows_the_files_not_their_path(tmp_path):
    # What a real checkpoint's index holds when one weight changes: tests/test_views_ensembles.py.
    export = _saved_model(tmp_path / "export", ["Chest", "Hand"])
    (tmp_path / "export" / "variables").mkdir()
    (tmp_path / "export" / "variables" / "variables.index").write_bytes(b"index 1")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "ckpt-4.index").write_bytes(b"index 1")
    checkpoint = str(tmp_path / "run" / "ckpt-4")
    first = {path: model_paths.weights_digest(path) for path in (export, checkpoint)}
    assert all(len(digest) == 16 for digest in first.values())
    assert first[export] != first[checkpoint]  # the SavedModel's graph counts too
    moved = tmp_path / "moved"
    (tmp_path / "export").rename(moved)
    assert model_paths.weights_digest(str(moved)) == first[export]
    (moved / "variables" / "variables.index").write_bytes(b"index 2")
    assert model_paths.weights_digest(str(moved)) != first[export]
    (moved / "saved_model.pb").write_bytes(b"another graph")
    (moved / "variables" / "variables.index").write_bytes(b"index 1")
    assert model_paths.weights_digest(str(moved)) != first[export]
    (tmp_path / "run" / "ckpt-4.index").write_bytes(b"index 2")
    assert model_paths.weights_digest(checkpoint) != first[checkpoint]
    with pytest.raises(FileNotFoundError, match="ckpt-5.index"):  # e.g. rotated away
        model_paths.weights_digest(str(tmp_path / "run" / "ckpt-5"))


def test_class_names_in_another_unicode_form_are_the_same_classes(tmp_path):
    """A model trained before class names were written in NFC (2026-12-05) keeps a Mac's
    "A" + combining ring; data converted since has one letter. Both are the one class: it was
    refused as "classes ['Kopf Å'] are not among the model's [..., 'Kopf Å']"."""
    from dataset.converted import SplitInfo
    from official.core import evaluation

    model = ["Hand", "Kopf A\u030a"]  # NFD, as an old config.json holds it
    data = ["Kopf \u00c5", "Hand"]  # NFC, the data's own order
    model_paths.check_data_classes("data", data, model)
    assert evaluation.label_map(data, model, "data").tolist() == [1, 0]
    info = SplitInfo(data_dir="data", split="test", files=(), num_examples=2,
                     class_names=tuple(data), class_counts={})
    assert evaluation.data_classes(info, model) is None  # all of the model's classes
    only = SplitInfo(data_dir="data", split="test", files=(), num_examples=1,
                     class_names=("Kopf \u00c5",), class_counts={})
    assert evaluation.data_classes(only, model) == ["Kopf A\u030a"]  # as metrics names it
    # A look-alike that is another letter is still another class, said by its code points.
    with pytest.raises(ValueError, match=r"classes \['Kopf \u0410'\] are not among the model's "
                                         r".* \(as code points: \['Kopf \\u0410'\]\)$"):
        model_paths.check_data_classes("data", ["Kopf \u0410"], ["Kopf A"])
    with pytest.raises(ValueError, match="spell one name twice"):
        model_paths.class_index(["Kopf \u00c5", "Kopf A\u030a"])
    old = _model_dir(tmp_path / "old", model)
    new = _model_dir(tmp_path / "new", ["Hand", "Kopf \u00c5"])
    model_paths.check_ensemble([(old, {"class_names": model}),
                                (new, {"class_names": ["Hand", "Kopf \u00c5"]})])
