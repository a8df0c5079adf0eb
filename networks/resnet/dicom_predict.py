"""Predict the body part of new DICOM, JPEG and PNG files with a trained model.

    python networks/resnet/dicom_predict.py --model=runs/r18/export \\
        --output_csv=predictions.csv /incoming/study1 /incoming/scan.dcm

Inputs are files and/or folders (searched recursively for .jpg/.jpeg/.png/.dcm and
extension-less DICOM files). --model is a training model_dir or a SavedModel; the
preprocessing is rebuilt from the model's saved config, identical to evaluation.
The CSV has one row per input file:

    file, status (ok | uncertain | error), predicted_class, probability,
    top_k ("Chest:0.9812;Abdomen:0.0150;..."), body_part_tag (the DICOM
    BodyPartExamined normalised to a class name, when it maps), tag_agrees
    (yes | no | empty when there is nothing to compare), error

With --min_confidence=P, predictions whose probability is below P get status and
predicted_class "uncertain" (the model's guess stays in top_k). A file that cannot
be read gets an error row; the run goes on.

--tta=N averages each model's probabilities over N fixed test-time views (never a mirror);
--model=a,b,... is an ensemble whose probabilities are averaged (same class names, same
order). Next to the CSV, predictions.json (the CSV's name with .json) records the models,
the views and the counts.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm", ".dicom")
CSV_COLUMNS = ("file", "status", "predicted_class", "probability", "top_k", "body_part_tag",
               "tag_agrees", "error")


@dataclass
class Item:
    path: str
    encoded: bytes | None = None
    body_part: str | None = None  # normalised to a class name
    error: str | None = None


def collect_files(inputs: list[str]) -> list[str]:
    """Named files as given, plus the image and DICOM files under named folders (sorted)."""
    from dataset.dicom import is_dicom_file

    files = []
    for entry in inputs:
        if os.path.isdir(entry):
            found = []
            for root, dirs, names in os.walk(entry):
                dirs.sort()
                for name in names:
                    path = os.path.join(root, name)
                    suffix = os.path.splitext(name)[1].lower()
                    if suffix in IMAGE_SUFFIXES or (not suffix and is_dicom_file(path)):
                        found.append(path)
            files.extend(sorted(found))
        else:
            files.append(entry)  # missing or odd files get an error row, not a silent drop
    return files


def load_item(path: str, class_names: list[str], dicom_options, hash_key: bytes) -> Item:
    """Encoded image bytes (DICOM rendered to PNG) and the normalised body-part tag."""
    from dataset import body_parts, dicom, images

    item = Item(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
        # JPEG/PNG are recognised by their bytes first, so --dicom_force only widens
        # what counts as DICOM among the rest.
        if images.sniff_format(head) is None and (dicom.is_dicom_file(path)
                                                   or dicom_options.force):
            rendered, info = dicom.read_dicom(path, dicom_options, hash_key=hash_key)
            item.encoded = rendered[0].png
            item.body_part = body_parts.normalize_body_part(info.body_part, class_names,
                                                            modality=info.modality)
        else:
            item.encoded = images.load_image(path, "image")[0].data
    except (ValueError, OSError) as error:
        item.error = str(error).splitlines()[0] if str(error) else type(error).__name__
        if path not in item.error:
            item.error = f"{path}: {item.error}"
    return item


def rows_for(items: list[Item], probabilities, class_names, *, top_k: int,
             min_confidence: float | None) -> list[dict]:
    """CSV rows for a batch; ``probabilities`` has one row per item without error."""
    import numpy as np

    rows, index = [], 0
    for item in items:
        row = dict.fromkeys(CSV_COLUMNS, "")
        row["file"] = item.path
        if item.error:
            row.update(status="error", error=item.error)
            rows.append(row)
            continue
        probs = probabilities[index]
        index += 1
        order = np.argsort(-probs, kind="stable")[:top_k]
        best = class_names[order[0]]
        uncertain = min_confidence is not None and probs[order[0]] < min_confidence
        row.update(status="uncertain" if uncertain else "ok",
                   predicted_class="uncertain" if uncertain else best,
                   probability=f"{probs[order[0]]:.6f}",
                   top_k=";".join(f"{class_names[c]}:{probs[c]:.4f}" for c in order))
        if item.body_part:
            row["body_part_tag"] = item.body_part
            row["tag_agrees"] = "yes" if item.body_part == best else "no"
        rows.append(row)
    return rows


def predict_files(predictor, files: list[str], output_csv: str, *, batch_size: int, top_k: int,
                  min_confidence: float | None, dicom_options) -> dict[str, int]:
    """Writes the prediction CSV (atomically); returns counts per status."""
    from tqdm import tqdm

    hash_key = os.urandom(32)  # patient keys are not used here; nothing is written from them
    counts = {"ok": 0, "uncertain": 0, "error": 0}
    tmp = f"{output_csv}.tmp-{os.getpid()}"
    os.makedirs(os.path.dirname(os.path.abspath(output_csv)), exist_ok=True)
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        # disable=None: no bar when stderr is a log file rather than a terminal.
        for start in tqdm(range(0, len(files), batch_size), unit="batch", desc="predicting",
                          disable=None):
            items = [load_item(path, predictor.class_names, dicom_options, hash_key)
                     for path in files[start:start + batch_size]]
            good = [item.encoded for item in items if not item.error]
            probabilities = predictor(good) if good else []
            for row in rows_for(items, probabilities, predictor.class_names, top_k=top_k,
                                min_confidence=min_confidence):
                counts[row["status"]] += 1
                writer.writerow(row)
    os.replace(tmp, output_csv)
    return counts


def run_info_path(output_csv: str) -> str:
    """predictions.csv -> predictions.json (the run's models, views and counts)."""
    path = os.path.splitext(output_csv)[0] + ".json"
    return path if path != output_csv else output_csv + ".run.json"


def write_run_info(path: str, predictor, counts: dict[str, int], *, tta_views: int) -> None:
    """What produced a prediction CSV: the models (each with the views it averaged, a
    SavedModel's built-in ones included), the requested --tta, the classes and the counts."""
    members = getattr(predictor, "members", [predictor])
    info = {"model": predictor.source,
            "members": [{"model": member.source, "tta_views": member.tta_views}
                        for member in members],
            "tta_views": tta_views, "class_names": predictor.class_names, "counts": counts}
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as handle:
        json.dump(info, handle, indent=2)
    os.replace(tmp, path)


def define_flags() -> None:
    """Flags exist only when run as a program, so tests can import this module."""
    from networks.resnet.dicom_eval import MODEL_HELP, TTA_HELP

    flags.DEFINE_list("model", None, MODEL_HELP)
    flags.DEFINE_string("checkpoint", None, "Checkpoint prefix inside a model_dir (default: "
                        "latest); only with a single --model.")
    flags.DEFINE_integer("tta", 1, TTA_HELP, lower_bound=1)
    flags.DEFINE_list("input", [], "Files or folders to classify (positional arguments work too).")
    flags.DEFINE_string("output_csv", "predictions.csv", "Where the CSV goes.")
    flags.DEFINE_integer("batch_size", 32, "Images per inference batch.")
    flags.DEFINE_integer("top_k", 3, "How many classes to list per file.")
    flags.DEFINE_float("min_confidence", None, "Below this probability a prediction is marked "
                       "'uncertain' (e.g. 0.8). Default: never.")
    flags.DEFINE_bool("dicom_force", False, "Read DICOM files that lack the DICM preamble/meta.")
    flags.mark_flag_as_required("model")


def main(argv):
    from dataset.dicom_options import DicomOptions
    from networks.resnet.inference import load_predictor

    inputs = list(FLAGS.input) + list(argv[1:])
    if not inputs:
        raise app.UsageError("give files or folders to classify (--input or positional)")
    if FLAGS.min_confidence is not None and not 0 < FLAGS.min_confidence <= 1:
        raise app.UsageError(f"--min_confidence={FLAGS.min_confidence}: must be in (0, 1]")
    files = collect_files(inputs)
    if not files:
        print(f"error: no DICOM, JPEG or PNG files under {', '.join(inputs)}", file=sys.stderr)
        return 1
    try:
        predictor = load_predictor(FLAGS.model, FLAGS.checkpoint, FLAGS.tta)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    counts = predict_files(predictor, files, FLAGS.output_csv, batch_size=FLAGS.batch_size,
                           top_k=FLAGS.top_k, min_confidence=FLAGS.min_confidence,
                           dicom_options=DicomOptions(force=FLAGS.dicom_force))
    write_run_info(run_info_path(FLAGS.output_csv), predictor, counts, tta_views=FLAGS.tta)
    print(f"{len(files)} files: {counts['ok']} ok, {counts['uncertain']} uncertain, "
          f"{counts['error']} errors; predictions in {FLAGS.output_csv}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
