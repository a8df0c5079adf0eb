"""The converter's output as the trainer and the evaluators first read it, without TensorFlow:
the manifest, and each split's shards, size and classes (dataset/reader.py builds the tf.data
pipeline on them). A bad --data_dir or --split is thus reported before TensorFlow's import.

The manifest is the only source of truth: a folder without ``manifest.json``, or
whose listed shards are missing or have the wrong size, is refused (that is
what an interrupted conversion leaves). Sizes come from the manifest, so the
trainer never hard-codes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass

from dataset import dicom_options, shards

MANIFEST = shards.MANIFEST  # defined once, by the writer


@dataclass(frozen=True)
class SplitInfo:
    data_dir: str
    split: str
    files: tuple[str, ...]  # absolute shard paths
    num_examples: int
    class_names: tuple[str, ...]
    class_counts: dict[str, int]


def read_manifest(data_dir: str) -> dict:
    """The parsed manifest of a complete conversion in ``data_dir``.

    Raises:
      FileNotFoundError: ``data_dir`` or its manifest does not exist (an
        unfinished or interrupted conversion).
      ValueError: the manifest is unreadable, or a shard it lists is missing or
        has a different size.
    """
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"{data_dir}: no such folder (expected the output folder of "
                                "tf_convert_data.py)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{data_dir}: no {MANIFEST} (not a converted dataset, or the "
                                "conversion did not finish; rerun tf_convert_data.py)")
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
        classes, split_table = manifest["classes"], manifest["splits"]
        shard_list = [(name, entry["path"], entry.get("num_bytes"))
                      for name, info in split_table.items() for entry in info["files"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: unreadable manifest ({error})") from None
    if not isinstance(classes, list) or not classes:
        raise ValueError(f"{path}: manifest lists no classes")
    for split, name, num_bytes in shard_list:
        shard = os.path.join(data_dir, name)
        if not os.path.isfile(shard):
            raise ValueError(f"{data_dir}: shard {name} of split {split!r} is missing")
        if num_bytes is not None and os.path.getsize(shard) != num_bytes:
            raise ValueError(f"{data_dir}: shard {name} has {os.path.getsize(shard)} bytes, "
                             f"the manifest says {num_bytes} (incomplete or altered)")
    return manifest


def describe_data_loss(data_dir: str | None, error: Exception) -> str | None:
    """One line for a record TensorFlow could not read (tf.errors.DataLossError names no file):
    the shards whose SHA-256 differs from the manifest's, found only now, on failure, because
    hashing every shard at each start would cost a read of the whole dataset. None when every
    shard matches (the loss was elsewhere: a checkpoint, another file)."""
    if not data_dir:
        return None
    manifest = read_manifest(data_dir)
    altered = []
    for info in manifest["splits"].values():
        for entry in info["files"]:
            if entry.get("sha256") and _sha256(
                    os.path.join(data_dir, entry["path"])) != entry["sha256"]:
                altered.append(entry["path"])
    if not altered:
        return None
    reason = tf_error_reason(error)
    return (f"{data_dir}: corrupt record in {', '.join(altered)} ({reason}; its SHA-256 "
            f"differs from {MANIFEST}'s): rerun tf_convert_data.py")


# TensorFlow wraps an op's message in the graph function's name and the op's:
# "{{function_node __wrapped__IteratorGetNext_..._device_/job:localhost/...}} corrupted record
# at 40 [Op:IteratorGetNext] name: ". Only the middle tells the user anything.
_TF_WRAPPING = re.compile(r"^\{\{[^}]*\}\}\s*|\s*\[Op:[^\]]*\].*$")


# A graph function's error begins "Graph execution error:", then where the op was defined
# (indented stack lines, or "<stack traces unavailable>"), then the op's own message.
_TF_PREAMBLE = re.compile(r"^(Graph execution error:|Detected at node |<stack traces "
                          r"unavailable>|\s|$)")


def tf_error_reason(error: Exception) -> str:
    """The first line of a TensorFlow error's own message, without TensorFlow's wrapping."""
    lines = getattr(error, "message", str(error)).splitlines() or [""]
    reason = next((line for line in lines if not _TF_PREAMBLE.match(line)), lines[0])
    return _TF_WRAPPING.sub("", reason) or reason


def _sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def dicom_rendering(data_dir: str) -> dict | None:
    """How the conversion rendered DICOM files (its --dicom_voi, --dicom_window_*,
    --dicom_bits), from the manifest; the trainer records it in config.json so that prediction
    renders a new DICOM file as the model's training images were. None when the manifest
    does not say (older conversions: the defaults)."""
    return manifest_rendering(read_manifest(data_dir))


def manifest_rendering(manifest: dict) -> dict | None:
    """``dicom_rendering`` of a manifest already read (read_manifest's)."""
    options = manifest.get("flags", {}).get("dicom")
    if not isinstance(options, dict):
        return None
    return {field: options[field] for field in dicom_options.RENDERING_FIELDS
            if field in options}


def split_info(data_dir: str, split: str) -> SplitInfo:
    """Shards, size and classes of one split, or of several named with commas ("train,validation":
    their union, e.g. to train a final model on every labelled image once the settings are chosen).

    Raises:
      ValueError: a split is not in the manifest (the message lists those that are), or is named
        twice.
    """
    manifest = read_manifest(data_dir)
    names = [name.strip() for name in split.split(",")]
    for name in names:
        if name not in manifest["splits"]:
            # The trainer validates on "validation" by default, which a train/test conversion
            # lacks: say which conversion that is, not only what is there.
            why = (" (converted with --need_split=tt_split: no validation split; evaluate "
                   "on test, or convert with tvt_split)"
                   if name == "validation" and set(manifest["splits"]) == {"train", "test"}
                   else "")
            raise ValueError(f"{data_dir}: no split {name!r}; available: "
                             f"{', '.join(manifest['splits'])}{why}")
    if len(set(names)) < len(names):
        raise ValueError(f"{data_dir}: split {split!r} names a split twice")
    root = os.path.abspath(data_dir)
    infos = [manifest["splits"][name] for name in names]
    counts: dict[str, int] = {}
    for info in infos:
        for name, count in info["class_counts"].items():
            counts[name] = counts.get(name, 0) + int(count)
    return SplitInfo(
        data_dir=root, split=",".join(names),
        files=tuple(os.path.join(root, entry["path"]) for info in infos for entry in info["files"]),
        num_examples=sum(int(info["num_examples"]) for info in infos),
        class_names=tuple(manifest["classes"]),
        class_counts=counts)
