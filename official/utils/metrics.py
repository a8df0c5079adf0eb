"""Classification metrics for evaluation reports (pure numpy, no TensorFlow).

Conventions, chosen so a report never contains NaN:
- precision of a class that was never predicted is 0.0 (scikit-learn's
  ``zero_division=0``), recall of a class with no examples is 0.0, and F1 is 0.0
  whenever precision + recall is 0;
- one-vs-rest ROC AUC is ``None`` (JSON null) for a class that has no positive or
  no negative example, because it is undefined there, and such classes are left
  out of the macro AUC;
- macro averages weigh every class equally, weighted averages by support.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``[true, predicted]`` as an int64 matrix of shape [num_classes, num_classes]."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count half)."""
    num_pos = int(positives.sum())
    num_neg = len(positives) - num_pos
    if num_pos == 0 or num_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average ranks over tied scores so ties contribute 0.5 to U.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts):
        ranks[order[start:start + count]] = start + (count + 1) / 2.0
    u_statistic = ranks[positives].sum() - num_pos * (num_pos + 1) / 2.0
    return float(u_statistic / (num_pos * num_neg))


def laterality_pairs(class_names) -> list[tuple[int, int]]:
    """(left, right) class indices of names that differ only in "left"/"right" (any case, e.g.
    kidney-left / kidney-right, Left_Hand / Right_Hand): the classes a mirror would swap."""
    index = {name.lower(): k for k, name in enumerate(class_names)}
    pairs = []
    for name, k in index.items():
        if "left" in name:
            other = index.get(name.replace("left", "right"))
            if other is not None:
                pairs.append((k, other))
    return sorted(pairs)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def classification_metrics(labels, probabilities, class_names, *, top_k=(1, 5),
                           data_classes=None) -> dict:
    """Every number of an evaluation report, as a JSON-ready dict.

    Args:
      labels: int array [N] of true class indices.
      probabilities: float array [N, num_classes] (rows sum to 1).
      class_names: names of the classes, in index order.
      top_k: the k values for top-k accuracy; k larger than the class count is dropped.
      data_classes: the names the data can hold, when only some of the model's (an external
        test set with some body parts): the macro averages are over these (a class the data
        cannot hold has no recall to average), and the others are listed as
        "classes_not_in_data". None: every class.

    Raises:
      ValueError: when shapes disagree or there are no examples.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    num_classes = len(class_names)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    if probabilities.shape != (len(labels), num_classes):
        raise ValueError(f"probabilities must have shape {(len(labels), num_classes)}, "
                         f"got {probabilities.shape}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")

    predictions = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predictions, num_classes)
    true_positives = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    precision = _safe_divide(true_positives, predicted)
    recall = _safe_divide(true_positives, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    aucs = [roc_auc(probabilities[:, c], labels == c) for c in range(num_classes)]

    # Top-k with a stable sort so ties resolve the same way on every run.
    ranked = np.argsort(-probabilities, axis=1, kind="stable")
    top_k_accuracy = {
        f"top_{k}": float(np.mean(np.any(ranked[:, :k] == labels[:, None], axis=1)))
        for k in top_k if k <= num_classes
    }

    scored = [c for c, name in enumerate(class_names)
              if data_classes is None or name in data_classes]

    def average(values: np.ndarray, weights: np.ndarray | None) -> float:
        if weights is None:
            return float(np.mean(values[scored]))
        return float(np.average(values, weights=weights)) if weights.sum() else 0.0

    defined_aucs = [aucs[c] for c in scored if aucs[c] is not None]
    not_in_data = ({"classes_not_in_data": [class_names[c] for c in range(num_classes)
                                            if c not in scored]}
                   if len(scored) < num_classes else {})
    return {**not_in_data,
        "num_examples": int(len(labels)),
        "accuracy": float(np.mean(predictions == labels)),
        "top_k_accuracy": top_k_accuracy,
        "per_class": {
            name: {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
                "roc_auc": aucs[c],
            }
            for c, name in enumerate(class_names)
        },
        "macro_avg": {
            "precision": average(precision, None),
            "recall": average(recall, None),
            "f1": average(f1, None),
            "roc_auc": float(np.mean(defined_aucs)) if defined_aucs else None,
        },
        "weighted_avg": {
            "precision": average(precision, support),
            "recall": average(recall, support),
            "f1": average(f1, support),
        },
        "class_names": list(class_names),
        "confusion_matrix": matrix.tolist(),
        # Side errors read apart from the rest: a model (or a scan stored mirrored) that swaps
        # sides is a different failure from confusing two neighbouring organs.
        "left_right_swaps": {
            f"{class_names[left]}/{class_names[right]}": {
                "left_to_right": int(matrix[left, right]),
                "right_to_left": int(matrix[right, left])}
            for left, right in laterality_pairs(class_names)},
    }
