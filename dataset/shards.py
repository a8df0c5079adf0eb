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

The TFRecord framing (little-endian uint64 length, masked CRC32C of the length,
the data, masked CRC32C of the data) is done here by ``frame_record``, in the
worker processes, with google-crc32c's C implementation: the converter never
imports TensorFlow, so it starts in a fraction of a second and its workers can
be forked. The bytes are identical to ``tf.io.TFRecordWriter``'s (tested).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass

import google_crc32c

STAGING_PREFIX = ".convert-staging-"
MANIFEST = "manifest.json"
LABELS = "labels.txt"
_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_CRC_MASK_DELTA = 0xA282EAD8  # TFRecord's (and LevelDB's) CRC mask constant


def _masked_crc(data: bytes) -> bytes:
    # Masked because a CRC of data that itself embeds CRCs is weak (TFRecord's rule).
    crc = google_crc32c.value(data)
    return _CRC.pack((((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF)


def frame_record(record: bytes) -> bytes:
    """One TFRecord: length, masked CRC32C(length), data, masked CRC32C(data)."""
    length = _LENGTH.pack(len(record))
    return b"".join((length, _masked_crc(length), record, _masked_crc(record)))


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


class SplitWriter:
    """Writes one split's framed records (``frame_record``) into size-limited staged shards,
    hashing each shard as it is written."""

    def __init__(self, staging_dir: str, split: str, shard_bytes: int):
        self._staging_dir = staging_dir
        self._split = split
        self._shard_bytes = shard_bytes
        self._parts = []  # [path, num_records, num_bytes, sha256 digest]
        self._file = None

    def write_framed(self, blob: bytes, sizes: list[int]) -> None:
        """Appends consecutive framed records (``sizes`` bytes each, ``sum(sizes) ==
        len(blob)``), starting a new shard where the next record would overflow this one."""
        if self._file is not None and self._parts[-1][2] + len(blob) <= self._shard_bytes:
            self._append(memoryview(blob), len(sizes))  # the common case: the whole blob fits
            return
        view, offset = memoryview(blob), 0
        for size in sizes:
            if self._file is None or (self._parts[-1][2] + size > self._shard_bytes
                                      and self._parts[-1][1] > 0):
                self._roll()
            self._append(view[offset:offset + size], 1)
            offset += size

    def _append(self, data, records: int) -> None:
        self._file.write(data)
        part = self._parts[-1]
        part[1] += records
        part[2] += len(data)
        part[3].update(data)

    def _close_file(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())  # durable before the commit's rename makes it visible
        self._file.close()
        self._file = None

    def _roll(self) -> None:
        if self._file is not None:
            self._close_file()
        path = os.path.join(self._staging_dir, f"{self._split}.part{len(self._parts):05d}")
        self._file = open(path, "wb", buffering=1 << 20)  # noqa: SIM115  closed in _close_file
        self._parts.append([path, 0, 0, hashlib.sha256()])

    def close(self) -> list[StagedShard]:
        """Closes the last shard; returns the shards with final names and checksums."""
        if self._file is not None:
            self._close_file()
        count = len(self._parts)
        return [StagedShard(path, shard_name(self._split, index, count), records, size,
                            digest.hexdigest())
                for index, (path, records, size, digest) in enumerate(self._parts)]


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
    # Text that cannot be written as UTF-8 must fail the run now, not once the old output
    # is gone (ConvertConfig and discovery refuse such names first; this is the last line).
    for name, text in (("labels.txt", labels_text), (MANIFEST, manifest_text)):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(f"{output_dir}: {name} would hold text that is not UTF-8 "
                             f"({error.reason} at {error.start}); nothing was replaced") from None
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
