"""Sharded TFRecord writing with an all-or-nothing commit.

Protocol (so a process killed at any instant never leaves output that looks
complete but is not; the reader trusts only ``manifest.json``):

1. Records are written into ``<output_dir>/.convert-staging-<random>/`` under
   provisional names; shard boundaries are fixed by size while writing, so the
   ``-of-MMMMM`` total is only known at the end.
2. Commit: the old ``manifest.json`` is removed first (from then on the folder
   does not look complete), the old shards are deleted, the new shards are
   renamed into place, ``labels.txt`` and finally ``manifest.json`` are written
   to temporary files in the staging folder, fsynced and renamed.
3. Staging folders left by a killed run are deleted by the next run.

TensorFlow's ``TFRecordWriter`` does the record framing (length + masked
CRC32C); only this module, in the main process, imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass

STAGING_PREFIX = ".convert-staging-"
MANIFEST = "manifest.json"
LABELS = "labels.txt"
_RECORD_OVERHEAD = 16  # TFRecord framing: uint64 length + two uint32 CRCs


def shard_pattern(split: str) -> re.Pattern:
    return re.compile(re.escape(split) + r"-\d{5}-of-\d{5}\.tfrecord")


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


@dataclass(frozen=True)
class StagedShard:
    staged_path: str
    final_name: str
    num_records: int
    num_bytes: int
    sha256: str

    def manifest_entry(self) -> dict:
        return {"path": self.final_name, "num_records": self.num_records,
                "num_bytes": self.num_bytes, "sha256": self.sha256}


def _sha256_and_sync(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        os.fsync(handle.fileno())  # durable before the rename makes it visible
    return digest.hexdigest()


class SplitWriter:
    """Writes one split's serialized examples into size-limited staged shards."""

    def __init__(self, staging_dir: str, split: str, shard_bytes: int):
        import tensorflow as tf  # deferred: validation failures exit without the TF start-up cost

        self._tf = tf
        self._staging_dir = staging_dir
        self._split = split
        self._shard_bytes = shard_bytes
        self._parts = []  # [path, num_records, num_bytes]
        self._writer = None

    def write(self, record: bytes) -> None:
        size = len(record) + _RECORD_OVERHEAD
        if self._writer is None or (self._parts[-1][2] + size > self._shard_bytes
                                    and self._parts[-1][1] > 0):
            self._roll()
        self._writer.write(record)
        self._parts[-1][1] += 1
        self._parts[-1][2] += size

    def _roll(self) -> None:
        if self._writer is not None:
            self._writer.close()
        path = os.path.join(self._staging_dir, f"{self._split}.part{len(self._parts):05d}")
        self._writer = self._tf.io.TFRecordWriter(path)
        self._parts.append([path, 0, 0])

    def close(self) -> list[StagedShard]:
        """Closes the last shard; returns the shards with final names and checksums."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        count = len(self._parts)
        return [StagedShard(path, shard_name(self._split, index, count), records,
                            os.path.getsize(path), _sha256_and_sync(path))
                for index, (path, records, _) in enumerate(self._parts)]


def clean_stale_staging(output_dir: str) -> None:
    """Deletes staging folders left behind by killed runs."""
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        if name.startswith(STAGING_PREFIX):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def make_staging_dir(output_dir: str) -> str:
    os.makedirs(output_dir, exist_ok=True)
    return tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=output_dir)


def _write_atomically(path: str, text: str, temp_dir: str) -> None:
    # The temporary file lives in the staging folder (same file system, so the
    # rename is atomic), which the next run deletes if this one is killed.
    handle, temp_path = tempfile.mkstemp(prefix=os.path.basename(path) + ".", dir=temp_dir)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fchmod(stream.fileno(), 0o666 & ~_umask())  # mkstemp's 0600 is too private
            os.fsync(stream.fileno())
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sync_dir(folder: str) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _old_shards(output_dir: str, splits) -> list[str]:
    """Shards of the previous output: those its manifest lists, and any files
    named like a shard of a split written now (left by an interrupted commit)."""
    names = set()
    try:
        with open(os.path.join(output_dir, MANIFEST), encoding="utf-8") as handle:
            old = json.load(handle)
        for info in old.get("splits", {}).values():
            names.update(os.path.basename(f["path"]) for f in info.get("files", []))
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        pass
    patterns = [shard_pattern(split) for split in splits]
    names.update(n for n in os.listdir(output_dir) if any(p.fullmatch(n) for p in patterns))
    return sorted(n for n in names if os.path.isfile(os.path.join(output_dir, n)))


def commit(output_dir: str, staging_dir: str, shards: list[StagedShard], splits,
           labels_text: str, manifest_text: str) -> None:
    """Replaces the output in ``output_dir`` by the staged shards; manifest last."""
    old = _old_shards(output_dir, splits)
    manifest_path = os.path.join(output_dir, MANIFEST)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)
        _sync_dir(output_dir)
    for name in old:
        os.remove(os.path.join(output_dir, name))
    for shard in shards:
        os.replace(shard.staged_path, os.path.join(output_dir, shard.final_name))
    _write_atomically(os.path.join(output_dir, LABELS), labels_text, staging_dir)
    _sync_dir(output_dir)
    _write_atomically(manifest_path, manifest_text, staging_dir)
    _sync_dir(output_dir)
    shutil.rmtree(staging_dir, ignore_errors=True)
