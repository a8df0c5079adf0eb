"""Writes an evaluation report: metrics.json, confusion_matrix.png, misclassified.csv.

The three files are written under temporary names first and only then renamed, metrics.json
last, so an interrupted or failed evaluation (Ctrl-C, a full disk) never leaves a report that
looks complete but is not, nor one whose files come from two evaluations.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # no display on servers; before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402

from official.utils.files import written_atomically
from official.utils.metrics import classification_metrics


def _write_together(files: dict[Path, bytes]) -> None:
    """Every file under a temporary name first, then each renamed over its path, the first
    given last: a failure while writing (a full disk, Ctrl-C) replaces none of the files an
    earlier report left, so they never mix two evaluations."""
    with contextlib.ExitStack() as stack:  # exits, and renames, in reverse order
        temporary = [(stack.enter_context(written_atomically(str(path))), data)
                     for path, data in files.items()]
        for tmp, data in temporary:
            try:
                Path(tmp).write_bytes(data)
            except OSError as error:
                # A full disk's OSError names no file, and every context below would claim
                # it (the last one entered, misclassified.csv, first): name this one's.
                if error.filename is None and error.errno:
                    raise OSError(error.errno, error.strerror, tmp) from None
                raise


def confusion_matrix_png(matrix: np.ndarray, class_names, title: str = "") -> bytes:
    """A confusion-matrix plot: counts in each cell, shading by row-normalised share."""
    matrix = np.asarray(matrix)
    row_sums = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, row_sums, out=np.zeros(matrix.shape), where=row_sums > 0)
    size = max(4.0, 0.6 * len(class_names) + 2.0)
    figure, axes = plt.subplots(figsize=(size + 1.5, size))
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of true class")
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, labels=class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, labels=class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if title:
        axes.set_title(title)
    for row in range(matrix.shape[0]):
        for column in range(matrix.shape[1]):
            # White text on dark cells keeps every count readable.
            colour = "white" if shares[row, column] > 0.5 else "black"
            axes.text(column, row, str(matrix[row, column]), ha="center", va="center",
                      color=colour, fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


# The folders write_report has put a report in, in this process: what an evaluation program
# interrupted after it left (left_by_interrupt). The interrupt handler runs outside the
# program's main and can see nothing else.
_WRITTEN: list[str] = []


def left_by_interrupt(output_dir: str | None) -> str:
    """What an interrupted evaluation program left, for its Ctrl-C line. A report is replaced
    whole, so one in the folder is never half new; only its TensorBoard copy comes after it.

    Args:
      output_dir: the folder the user named; None for the default beside the model.
    """
    if _WRITTEN:
        return f"the report in {_WRITTEN[-1]} is whole; its TensorBoard copy may be missing"
    if not output_dir:  # the default folder beside the model is known only once it is loaded
        return "no new report was written (one already beside the model is an earlier run's)"
    if Path(output_dir, "metrics.json").is_file():
        return f"no new report was written; the one in {output_dir} is an earlier run's, whole"
    return f"no new report was written to {output_dir}"


def write_report(output_dir, *, labels, probabilities, class_names, filenames,
                 title: str = "", extra: dict | None = None,
                 data_classes: list[str] | None = None) -> dict:
    """Computes the metrics and writes the three report files into ``output_dir``.

    Args:
      output_dir: folder for metrics.json, confusion_matrix.png, misclassified.csv.
      labels: int [N] true classes; probabilities: float [N, C]; filenames: [N] str.
      title: shown on the plot (e.g. "test split, step 1200").
      extra: more JSON fields for metrics.json (checkpoint, split, model path ...).
      data_classes: the classes the data holds when only some of the model's
        (classification_metrics).

    Returns:
      The metrics dict (as written to metrics.json, extra fields included).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    metrics = classification_metrics(labels, probabilities, class_names,
                                     data_classes=data_classes)
    metrics.update(extra or {})

    predictions = probabilities.argmax(axis=1)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["file", "true", "predicted", "probability", "true_class_probability"])
    for index in np.flatnonzero(predictions != labels):
        writer.writerow([filenames[index], class_names[labels[index]],
                         class_names[predictions[index]],
                         f"{probabilities[index, predictions[index]]:.6f}",
                         f"{probabilities[index, labels[index]]:.6f}"])
    # metrics.json first, so renamed last: a new metrics.json comes with its plot and list.
    _write_together({
        output_dir / "metrics.json": json.dumps(metrics, indent=2).encode(),
        output_dir / "confusion_matrix.png": confusion_matrix_png(
            np.array(metrics["confusion_matrix"]), class_names, title),
        output_dir / "misclassified.csv": text.getvalue().encode()})
    _WRITTEN.append(str(output_dir))
    return metrics


def summary_scalars(metrics: dict) -> dict[str, float]:
    """The scalars an evaluator (dicom_eval.py, the Slim evaluator) logs with its report;
    the trainer's periodic validation logs only accuracy, loss and cross_entropy."""
    scalars = {"accuracy": metrics["accuracy"],
               "macro_f1": metrics["macro_avg"]["f1"]}
    scalars.update({f"accuracy_{name}": value
                    for name, value in metrics["top_k_accuracy"].items() if name != "top_1"})
    absent = set(metrics.get("classes_not_in_data", ()))  # no recall to plot (0 by convention)
    for name, values in metrics["per_class"].items():
        if name not in absent:
            scalars[f"recall/{name}"] = values["recall"]
    return scalars
