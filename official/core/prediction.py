"""Predict the body part of files: the library part of networks/resnet/dicom_predict.py.

Files are read as the converter reads them (dataset.folder_walk.file_kind, dataset.images,
dataset.dicom), encoded, and fed to a Predictor (official/core/inference.py); the CSV has one
row per file, an error row for a file that cannot be read (its columns, and the partial file
its rows grow in: official/core/prediction_csv.py). No TensorFlow here: dicom_predict.py
checks the files and the output path before that import.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass

import numpy as np

from dataset import body_parts, dicom, folder_walk, images, magic, sources
from official.core.model_paths import member_records
from official.core.prediction_csv import (ANOTHER_RUN, CSV_COLUMNS, PARTIAL_SUFFIX, STATUSES,
                                          Kept, PartialFile, partial_path,
                                          partial_record_path)
from official.utils import progress as reporting
from official.utils.decoder_noise import DecoderNoise
from official.utils.files import file_in_use, written_atomically


@dataclass
class Item:
    path: str
    encoded: bytes | None = None
    body_part: str | None = None  # normalised to a class name
    error: str | None = None


def collect_files(inputs: list[str], *, dicom_force: bool = False,
                  passed_over: list[str] | None = None) -> list[str]:
    """Named files as given, plus the image and DICOM files under named folders (sorted):
    those the converter would read (dataset.folder_walk.file_kind; with ``dicom_force``, every
    file without suffix too). A file reached twice (named and inside a named folder, or
    through a link) is kept once, where it came first. ``passed_over`` gets the folders'
    other files (a .tif, a .bmp: no row of theirs would say they were left out).

    Raises:
      FileNotFoundError: naming every input that does not exist (a mistyped path is refused
        rather than reported as an error row of an otherwise successful run).
      ValueError: naming every folder that cannot be listed (no permission): its files would
        otherwise be missing from the CSV without a word, or a named folder reported as
        holding no images.
    """
    missing = [entry for entry in inputs if not os.path.exists(entry)]
    if missing:
        # Quoted: a name holding ", " (or split at a comma by --input) reads as itself.
        raise FileNotFoundError("no such file or folder: "
                                + ", ".join(repr(entry) for entry in missing))
    files, unlistable = [], []
    for entry in inputs:
        if os.path.isdir(entry):
            found = []
            for root, _, names in folder_walk.walk_folders(entry, onerror=unlistable.append):
                for name in names:
                    path = os.path.join(root, name)
                    if folder_walk.file_kind(path, dicom_force) is not None:
                        found.append(path)
                    elif passed_over is not None and folder_walk.visible(name):
                        passed_over.append(path)
            files.extend(sorted(found))
        else:
            files.append(entry)  # an odd file gets an error row, not a silent drop
    if unlistable:
        raise ValueError("cannot list " + "; ".join(
            f"the folder {error.filename!r}: {error.strerror or error}" for error in unlistable))
    # Keyed by the real path, first spelling kept (dicts keep insertion order).
    unique = {}
    for path in files:
        unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())


def check_output_paths(output_csv: str, files: list[str]) -> None:
    """Refuses (ValueError naming the path and the problem), before anything is predicted, an
    output (the CSV, its run record, its partial file and that file's record) that cannot be
    written, would overwrite one of ``files`` or is being written by another run. Its folder
    must exist: making one would turn a typo in the path into a new folder, and its
    predictions would be looked for elsewhere."""
    if output_csv.endswith(PARTIAL_SUFFIX):  # a script must tell a complete CSV at a glance
        raise ValueError(f"--output_csv={output_csv}: names ending {PARTIAL_SUFFIX} are those "
                         "of the rows an interrupted run leaves; give another name")
    inputs = {os.path.realpath(path): path for path in files}
    for path, what in ((output_csv, ""), (run_info_path(output_csv), "its run record "),
                       (partial_path(output_csv), "its partial file "),
                       (partial_record_path(output_csv), "its partial file's record ")):
        if os.path.realpath(path) in inputs:
            raise ValueError(f"--output_csv={output_csv}" + (f": {what}{path}" if what else "")
                             + f" would overwrite the input file {inputs[os.path.realpath(path)]}")
        if os.path.isdir(path):
            raise ValueError(f"--output_csv={output_csv}: {path} is a folder")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.exists(parent):
            raise ValueError(f"--output_csv={output_csv}: the folder {parent} does not exist "
                             "(create it first)")
        if not os.path.isdir(parent):
            raise ValueError(f"--output_csv={output_csv}: {parent} is not a folder")
    if file_in_use(partial_path(output_csv)):  # said before the model loads, not after
        raise ValueError(ANOTHER_RUN.format(output_csv, partial_path(output_csv)))


def load_item(path: str, class_names: list[str], dicom_options, hash_key: bytes) -> Item:
    """Encoded image bytes (DICOM rendered to PNG) and the normalised body-part tag."""
    item, unknown_bytes = Item(path), False
    if folder_walk.is_dicomdir(path):  # named on its own: a folder's is passed over
        item.error = f"{path}: a DICOMDIR (the index of a DICOM CD), not an image"
        return item
    try:
        if folder_walk.special_file(path):  # opening a named pipe would wait forever
            raise ValueError("not a regular file (a pipe, socket or device)")
        with open(path, "rb") as handle:
            head = handle.read(16)
        # JPEG/PNG are recognised by their bytes first, so --dicom_force only widens
        # what counts as DICOM among the rest.
        sniffed = magic.sniff_format(head)
        if sniffed is None and (dicom.is_dicom_file(path) or dicom_options.force):
            rendered, info = dicom.read_dicom(path, dicom_options, hash_key=hash_key)
            item.encoded = rendered[0].png
            item.body_part = body_parts.normalize_body_part(info.body_part, class_names,
                                                            modality=info.modality)
        else:
            unknown_bytes = bool(head) and sniffed is None  # neither image nor DICOM
            item.encoded = images.load_image(path, "image")[0].data
    except (ValueError, OSError) as error:
        item.error = str(error).splitlines()[0] if str(error) else type(error).__name__
        if isinstance(error, OSError) and error.strerror and error.filename == path:
            # "[Errno 2] No such file or directory: '<path>'" said as the other rows are
            item.error = f"{path}: {error.strerror}" + (
                " (a link whose target is missing)" if os.path.islink(path)
                and error.errno == errno.ENOENT else "")
        if path not in item.error:
            item.error = f"{path}: {item.error}"
        if unknown_bytes and not folder_walk.split_suffix(path)[1]:  # a CD's IM0002, no preamble
            item.error += ("; a DICOM file without the DICM preamble is read with "
                           "--dicom_force")
    return item


def _probabilities(predictor, items: list[Item], noise: DecoderNoise):
    """The predictor's probabilities for the items without an error. An image its decoder
    refuses (images.ImageError; the checks before it passed the file) failed the whole run
    with a traceback; its batch is now predicted an image at a time, and that image's row is
    an error, as an unreadable file's is. What the decoder printed about it (libjpeg's
    "Corrupt JPEG data: ...") is left out of stderr (``noise``): the row says why."""
    good = [item for item in items if not item.error]
    if not good:
        return []
    try:
        with noise.dropped_if(images.ImageError):
            return predictor([item.encoded for item in good])
    except images.ImageError as error:
        if len(good) == 1:
            good[0].error = f"{good[0].path}: {error}"
            return []
    parts = [_probabilities(predictor, [item], noise) for item in good]
    return np.concatenate([part for part in parts if len(part)] or [np.zeros((0, 0))])


def rows_for(items: list[Item], probabilities, class_names, *, top_k: int,
             min_confidence: float | None) -> list[dict]:
    """CSV rows for a batch; ``probabilities`` has one row per item without error."""
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
                  min_confidence: float | None, dicom_options, tta_views: int | None = None,
                  resume: bool = False, kept: Kept | None = None,
                  noise: DecoderNoise | None = None) -> dict[str, int]:
    """Writes the prediction CSV whole into an existing folder; returns counts per status.

    The rows go to ``partial_path(output_csv)`` a batch at a time, and become the output once
    every file has one; a failure or Ctrl-C leaves them there (complete rows; ``kept`` says how
    many) and the output as it was. ``resume`` reuses the rows of a partial file of the same
    models and settings. ``noise``, entered by the program, keeps the decoder's lines about an
    image it refuses off stderr. With ``tta_views``, the run's information (run_info_path) is
    written just before the CSV takes the output's place: never a new CSV beside another
    run's .json.

    Raises:
      ValueError: another run is writing the same output (its partial file is locked), or,
        with ``resume``, the partial file was written by other models or settings.
    """
    kept = kept if kept is not None else Kept()
    noise = noise or DecoderNoise()  # not entered: stderr as it is
    kept.path, kept.total, kept.rows = partial_path(output_csv), len(files), 0
    hash_key = os.urandom(32)  # patient keys are not used here; nothing is written from them
    record = {**_models(predictor, tta_views), "top_k": top_k,
              "min_confidence": min_confidence, "dicom_force": bool(dicom_options.force)}
    partial = PartialFile(output_csv, record)
    try:
        # A file that could not be read is tried again: it may have been mended, or have
        # finished copying, since.
        known = {key: row for key, row in (partial.reusable() if resume else {}).items()
                 if row[1] != "error"}
        keys = [sources.escape_non_utf8(path) for path in files]  # the CSV's spelling
        todo = [path for path, key in zip(files, keys) if key not in known]
        counts = {status: sum(known[key][1] == status for key in keys if key in known)
                  for status in STATUSES}
        kept.rows = len(files) - len(todo)
        progress = reporting.progress(len(todo), unit="files", desc="predicting")
        for start in range(0, len(todo), batch_size):
            items = [load_item(path, predictor.class_names, dicom_options, hash_key)
                     for path in todo[start:start + batch_size]]
            probabilities = _probabilities(predictor, items, noise)
            rows = rows_for(items, probabilities, predictor.class_names, top_k=top_k,
                            min_confidence=min_confidence)
            partial.append(rows)
            kept.rows += len(rows)
            for row in rows:
                counts[row["status"]] += 1
            progress.update(len(items))
        progress.close()
        partial.finish(files, in_order=not known, run_info=None if tta_views is None else (
            lambda: write_run_info(run_info_path(output_csv), predictor, counts,
                                   tta_views=tta_views)))
    except BaseException:
        if not partial.leave():
            kept.rows = 0
        raise
    finally:
        os.close(partial.handle)  # lets go of the lock
    return counts


def run_info_path(output_csv: str) -> str:
    """predictions.csv -> predictions.json (the run's models, views and counts)."""
    path = os.path.splitext(output_csv)[0] + ".json"
    return path if path != output_csv else output_csv + ".run.json"


def write_run_info(path: str, predictor, counts: dict[str, int], *, tta_views: int) -> None:
    """What produced a prediction CSV: the models (each with the views it averaged, a
    SavedModel's built-in ones included), the requested --tta, the classes and the counts."""
    with written_atomically(path) as tmp, open(tmp, "w") as handle:
        json.dump({**_models(predictor, tta_views), "counts": counts}, handle, indent=2)


def _models(predictor, tta_views: int | None) -> dict:
    """The models (each with the views it averaged, a SavedModel's built-in ones included),
    the requested --tta and the classes: in the run's .json, and in its partial file's
    record, which --resume compares."""
    return {"model": predictor.source, "members": member_records(predictor),
            "tta_views": tta_views, "class_names": list(predictor.class_names)}
