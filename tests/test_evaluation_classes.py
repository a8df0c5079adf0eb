"""evaluation.label_map maps the data's classes with the class index that
model_paths.check_data_classes built while checking them: one index per evaluation."""

from __future__ import annotations

from official.core import evaluation, model_paths


def test_label_map_builds_the_class_index_once(monkeypatch):
    built = []
    class_index = model_paths.class_index

    def counted(model_classes):
        built.append(list(model_classes))
        return class_index(model_classes)

    # Both names: label_map called it through each (check_data_classes, then its own import).
    monkeypatch.setattr(model_paths, "class_index", counted)
    monkeypatch.setattr(evaluation, "class_index", counted)
    model = ["Hand", "Kopf A\u030a", "Chest"]  # NFD, as a config.json from before NFC has it
    data = ["Chest", "Kopf \u00c5"]  # NFC, the data's own order
    assert evaluation.label_map(data, model, "data").tolist() == [2, 1]
    assert built == [model]  # twice before


def test_check_data_classes_returns_the_index_it_checked_with():
    model = ["Hand", "Kopf A\u030a"]
    assert model_paths.check_data_classes("data", ["Kopf \u00c5"], model) == {
        "Hand": 0, "Kopf \u00c5": 1}
