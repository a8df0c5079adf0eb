"""The converter's per-file work, shared by the local process pool and the Beam pipeline.

One task type (``FileTask``) and one per-file function (``encode_file``) serve both
``dataset.convert`` (through ``dataset.workers.WorkerPool``) and ``dataset.beam_pipeline``
(inside a DoFn), so a file gives the same records, or the same error line, on either
runner. Nothing here imports TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

from dataset import images, shards, sources
from dataset.dicom_options import DicomOptions
from dataset.features import serialize_example

# read_dicom computes a keyed patient hash that encoding throws away, so the key used
# while encoding does not matter: a fixed one keeps the user's key (--hash_key_env) out of
# encoding workers and out of Beam job graphs. Header reading, where the hash does
# matter, gets the real key.
_ENCODING_HASH_KEY = b"body-part-classifier/encoding/patient-hash-unused"


@dataclass(frozen=True)
class FileTask:
    """One input file to encode, with everything decided about it before decoding."""

    path: str  # absolute
    relpath: str  # relative to the dataset folder; stored as image/filename
    kind: str  # "image" or "dicom" (dataset.folder_walk.file_kind)
    label: int  # index into the class list
    text: str  # canonical class name
    split: str  # output split name
    order: bytes  # dataset.splits.order_key: the record's place within its split


def encode_file(task: FileTask, dicom_options) -> tuple[list[bytes], str | None]:
    """Reads, validates and encodes one file.

    Args:
      dicom_options: a ``dataset.dicom_options.DicomOptions`` (used for DICOM files).

    Returns:
      ``(framed TFRecords, None)``: one record per image (DICOM: per frame rendered),
      framed by ``dataset.shards.frame_record``; or ``([], reason)`` for a file that
      cannot be converted, ``reason`` being one line without the file's path.
    """
    try:
        encoded = images.load_image(task.path, task.kind, hash_key=_ENCODING_HASH_KEY,
                                    dicom_options=dicom_options if task.kind == "dicom"
                                    else None)
    except images.ImageError as error:
        return [], _without_path(str(error), task.path)
    multi = len(encoded) > 1
    # Framed here, in parallel: whoever writes the shard only appends bytes.
    return [shards.frame_record(serialize_example(
        encoded=image.data, image_format=image.image_format, label=task.label,
        text=task.text, height=image.height, width=image.width, channels=image.channels,
        filename=f"{task.relpath}#frame={image.frame}" if multi else task.relpath))
        for image in encoded], None


def read_header(path: str, dicom_options, hash_key: bytes):
    """``(sources.read_dicom_header(...), None)`` or ``(None, reason without the path)``."""
    try:
        return sources.read_dicom_header(path, dicom_options, hash_key), None
    except ValueError as error:
        return None, _without_path(str(error).splitlines()[0], path)


def _without_path(message: str, path: str) -> str:
    # Problems are reported as '<relative path>: <reason>'; drop the absolute path
    # that DICOM messages start with.
    return message[len(path) + 2:] if message.startswith(path + ": ") else message


# --- the local pool's side: per-process state set once by init_worker ----------

_WORKER = {}


def init_worker(dicom_options, hash_key: bytes) -> None:
    """Initialiser of the local pool's workers (None options mean the defaults)."""
    if dicom_options is None:
        dicom_options = DicomOptions()
    _WORKER["dicom"] = dicom_options
    _WORKER["hash_key"] = hash_key


def header_task(path: str):
    return read_header(path, _WORKER["dicom"], _WORKER["hash_key"])


def encode_task(task: FileTask):
    return encode_file(task, _WORKER["dicom"])


def encode_chunk(tasks: list[FileTask]):
    """Encodes consecutive tasks of one split; returns their framed records as one blob
    plus, per task, (record sizes, error). One result per chunk keeps the main process's
    per-image work (unpickling, writing, hashing) out of the hot loop: it was the
    bottleneck when every image came back on its own."""
    blobs, items = [], []
    for task in tasks:
        records, error = encode_file(task, _WORKER["dicom"])
        blobs.extend(records)
        items.append(([len(r) for r in records], error))
    return b"".join(blobs), items
