"""metrics.json numbers against a hand computation on a tiny crafted set."""

import json

import numpy as np
import pytest

from official.utils.metrics import classification_metrics, laterality_pairs, roc_auc

# 7 examples, 3 classes; class C is never predicted (zero-division case).
LABELS = [0, 0, 0, 1, 1, 2, 2]
PROBS = [
    [0.7, 0.2, 0.1],  # A -> A
    [0.6, 0.3, 0.1],  # A -> A
    [0.3, 0.5, 0.2],  # A -> B
    [0.2, 0.7, 0.1],  # B -> B
    [0.5, 0.4, 0.1],  # B -> A
    [0.4, 0.3, 0.3],  # C -> A
    [0.1, 0.6, 0.3],  # C -> B
]
NAMES = ["A", "B", "C"]


def test_hand_computed_report():
    m = classification_metrics(LABELS, PROBS, NAMES, top_k=(1, 2, 5))
    assert m["num_examples"] == 7
    assert m["accuracy"] == pytest.approx(3 / 7)
    assert m["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [1, 1, 0]]
    a, b, c = (m["per_class"][n] for n in NAMES)
    assert (a["precision"], a["recall"]) == pytest.approx((2 / 4, 2 / 3))
    assert (b["precision"], b["recall"]) == pytest.approx((1 / 3, 1 / 2))
    assert a["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert b["f1"] == pytest.approx(0.4)
    # Never predicted: defined as 0, not NaN.
    assert (c["precision"], c["recall"], c["f1"]) == (0.0, 0.0, 0.0)
    assert [a["support"], b["support"], c["support"]] == [3, 2, 2]
    # Pairwise counts: A 10/12, B 8/10, C 10/10.
    assert a["roc_auc"] == pytest.approx(10 / 12)
    assert b["roc_auc"] == pytest.approx(0.8)
    assert c["roc_auc"] == pytest.approx(1.0)
    assert m["macro_avg"]["precision"] == pytest.approx((0.5 + 1 / 3) / 3)
    assert m["weighted_avg"]["precision"] == pytest.approx((0.5 * 3 + 2 / 3) / 7)
    assert m["macro_avg"]["roc_auc"] == pytest.approx((10 / 12 + 0.8 + 1) / 3)
    # Row 5 ties B and C at 0.3: the stable order puts B first, so it misses top-2.
    assert m["top_k_accuracy"] == pytest.approx({"top_1": 3 / 7, "top_2": 6 / 7})
    assert "NaN" not in json.dumps(m)


def test_class_without_examples_has_null_auc():
    m = classification_metrics([0, 1, 0], [[0.9, 0.1, 0], [0.2, 0.8, 0], [0.6, 0.4, 0]],
                               NAMES, top_k=(1,))
    assert m["per_class"]["C"]["roc_auc"] is None
    assert m["per_class"]["C"]["support"] == 0
    assert m["macro_avg"]["roc_auc"] == pytest.approx(1.0)
    assert "NaN" not in json.dumps(m)


def test_data_with_some_of_the_models_classes_averages_over_those():
    """An external test set with classes A and B of a model that knows A, B and C: C has no
    recall to average (it counted as 0 in the macro averages)."""
    labels, probs = LABELS[:5], PROBS[:5]
    whole = classification_metrics(labels, probs, NAMES, top_k=(1,))
    some = classification_metrics(labels, probs, NAMES, top_k=(1,), data_classes=["B", "A"])
    assert some["classes_not_in_data"] == ["C"] and "classes_not_in_data" not in whole
    assert some["macro_avg"]["recall"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert whole["macro_avg"]["recall"] == pytest.approx((2 / 3 + 1 / 2) / 3)
    assert some["macro_avg"]["roc_auc"] == pytest.approx(whole["macro_avg"]["roc_auc"])
    for key in ("accuracy", "confusion_matrix", "per_class", "weighted_avg"):
        assert some[key] == whole[key]


def test_auc_ties_count_half():
    assert roc_auc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5


def test_laterality_pairs_match_names_differing_only_in_left_and_right():
    names = ["Left_Hand", "Right_Hand", "kidney-left", "kidney-right", "liver", "lung-left"]
    assert laterality_pairs(names) == [(0, 1), (2, 3)]
    assert laterality_pairs(["CXR", "Hand"]) == []


def test_left_right_swaps_are_counted_per_pair_and_direction():
    names = ["kidney-left", "kidney-right", "liver"]
    # kidney-left: 2 right, 1 liver (a neighbour, not a side error); kidney-right: 1 left.
    labels = [0, 0, 0, 0, 1, 1, 2]
    predicted = [0, 1, 1, 2, 1, 0, 2]
    m = classification_metrics(labels, np.eye(3)[predicted], names, top_k=(1,))
    assert m["left_right_swaps"] == {
        "kidney-left/kidney-right": {"left_to_right": 2, "right_to_left": 1}}
    assert classification_metrics(LABELS, PROBS, NAMES)["left_right_swaps"] == {}


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="probabilities must have shape"):
        classification_metrics([0, 1], [[1.0, 0.0]], ["A", "B"])


def test_report_files(tmp_path):
    from PIL import Image

    from official.utils.report import write_report

    names = ["Abdomen", "Chest", "Hand"]
    metrics = write_report(tmp_path, labels=LABELS, probabilities=PROBS, class_names=names,
                           filenames=[f"img{i}.png" for i in range(7)], extra={"split": "test"})
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["accuracy"] == pytest.approx(3 / 7) and on_disk["split"] == "test"
    assert on_disk == json.loads(json.dumps(metrics))
    with Image.open(tmp_path / "confusion_matrix.png") as image:
        assert image.size[0] > 200 and image.size[1] > 200
    rows = (tmp_path / "misclassified.csv").read_text().splitlines()
    assert rows[0].startswith("file,true,predicted,probability")
    assert len(rows) == 1 + 4  # four wrong predictions
    assert "img2.png,Abdomen,Chest,0.500000" in rows[1]
    assert not list(tmp_path.glob(".*tmp*"))


def test_plot_contains_class_names():
    """The class names are drawn as tick labels (checked on the figure text)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from official.utils.report import confusion_matrix_png

    captured = {}
    original = plt.Figure.savefig

    def spy(figure, *args, **kwargs):
        captured["labels"] = [t.get_text() for ax in figure.axes for t in ax.get_xticklabels()]
        return original(figure, *args, **kwargs)

    plt.Figure.savefig = spy
    try:
        png = confusion_matrix_png(np.eye(2, dtype=int), ["Knee", "Skull"])
    finally:
        plt.Figure.savefig = original
    assert png.startswith(b"\x89PNG")
    assert {"Knee", "Skull"} <= set(captured["labels"])
