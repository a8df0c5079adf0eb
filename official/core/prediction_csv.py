"""The prediction CSV on disk (library of official/core/prediction.py): its columns, and the
partial file a run grows a batch at a time beside it, locked while the run writes it, left
with complete rows when the run stops early, reused by --resume, renamed into the output
when every file has its row.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from dataset import sources
from official.utils.files import open_locked, written_atomically

CSV_COLUMNS = ("file", "status", "predicted_class", "probability", "top_k", "body_part_tag",
               "tag_agrees", "error")
STATUSES = ("ok", "uncertain", "error")
PARTIAL_SUFFIX = ".partial.csv"
ANOTHER_RUN = ("--output_csv={}: another dicom_predict.py run is writing it (its {} is locked); "
               "wait for it to end, or give another --output_csv")


def partial_path(output_csv: str) -> str:
    """predictions.csv -> predictions.partial.csv: the rows of a run that did not finish (never
    the output's or its .json's name; check_output_paths refuses an output named so)."""
    return os.path.splitext(output_csv)[0] + PARTIAL_SUFFIX


def partial_record_path(output_csv: str) -> str:
    """predictions.csv -> predictions.partial.json: what wrote the partial file's rows."""
    return os.path.splitext(output_csv)[0] + ".partial.json"


def _changed(key: str, was, now) -> str:
    """How a record's ``key`` changed: of the models (model_paths.member_records), said as
    their weights when only those differ, the same path now holding another model."""
    if key == "members" and isinstance(was, list) and len(was) == len(now):
        pairs = [(old, new) for old, new in zip(was, now) if old != new]
        if all(isinstance(old, dict) and "weights" in old
               and {**old, "weights": new["weights"]} == new for old, new in pairs):
            models = ", ".join(new["model"] for _, new in pairs)
            return f"other weights in {models} (trained or exported again since)"
    return f"{key} {was!r}, now {now!r}"


@dataclass
class Kept:
    """How many of a run's ``total`` files have their rows in its partial file ``path``."""
    path: str = ""
    rows: int = 0
    total: int = 0


def _csv_bytes(rows: list[dict], *, header: bool) -> bytes:
    # A name that is not UTF-8 (os.walk's surrogates) is written as the converter's messages
    # spell it, "x\\xe9.jpeg": the CSV stays valid UTF-8, that one name not the exact bytes.
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS)
    if header:
        writer.writeheader()
    writer.writerows({key: sources.escape_non_utf8(value) if isinstance(value, str) else value
                      for key, value in row.items()} for row in rows)
    return text.getvalue().encode("utf-8")


def _complete_rows(data: bytes) -> tuple[dict[str, list[str]], int]:
    """A partial file's rows by file, and the bytes they fill: a run killed in a write (SIGKILL,
    a power cut) can leave half a row at the end, not counted, cut off before more rows."""
    text = data.decode("utf-8", "surrogateescape")
    read = {"size": 0, "whole": True}

    def lines():  # csv.reader takes a line at a time: what it has taken, in bytes
        for line in io.StringIO(text, newline=""):
            read["size"] += len(line.encode("utf-8", "surrogateescape"))
            read["whole"] = line.endswith("\n")
            yield line

    rows, size, reader = {}, 0, csv.reader(lines())
    with contextlib.suppress(csv.Error):
        if next(reader, None) != list(CSV_COLUMNS) or not read["whole"]:
            return {}, 0
        size = read["size"]
        for row in reader:
            if not read["whole"] or len(row) != len(CSV_COLUMNS) or row[1] not in STATUSES:
                break
            rows[row[0]], size = row, read["size"]
    return rows, size


class PartialFile:
    """partial_path(output_csv), locked by this run from its start to its end (two runs into
    one output appended to one partial file, and the later one's CSV replaced the other's).
    Rows are appended a batch at a time; a write that fails is cut off again."""

    def __init__(self, output_csv: str, record: dict):
        """``record``: what makes two runs' rows interchangeable (models, settings)."""
        self.output_csv, self.path, self.record = output_csv, partial_path(output_csv), record
        self.record_path = partial_record_path(output_csv)
        self.made = not os.path.exists(self.path)
        self.size, self.finished = None, False  # size: of the complete rows; None: none yet
        try:
            self.handle = open_locked(self.path, ANOTHER_RUN.format(output_csv, self.path))
        except OSError as error:  # e.g. no permission: the folder's, said as the output's
            if self.made and error.filename == self.path and error.errno:
                raise type(error)(error.errno, error.strerror, output_csv) from None
            raise

    def reusable(self) -> dict[str, list[str]]:
        """Its complete rows by file; ValueError when this run's record did not write them."""
        rows, size = _complete_rows(Path(self.path).read_bytes())
        if not rows:
            return {}
        written = None
        with contextlib.suppress(OSError, ValueError):
            written = json.loads(Path(self.record_path).read_text())
        wanted = json.loads(json.dumps(self.record))  # tuples as lists, as read back
        differ = (f"{self.record_path}, its record, is missing or unreadable"
                  if not isinstance(written, dict) else "; ".join(
                      _changed(key, written.get(key), value)
                      for key, value in wanted.items() if written.get(key) != value))
        if differ:
            raise ValueError(f"--resume: {self.path} is not this run's to resume ({differ}); "
                             "without --resume every file is predicted again")
        self._cut(size)  # a killed run's half row
        return rows

    def append(self, rows: list[dict]) -> None:
        """Appends ``rows`` whole. A fresh run's first rows replace an earlier run's, only
        now: a run stopped before its first batch leaves those as they were."""
        try:
            if self.size is None:
                self._cut(0)  # emptied first: the new record never describes the old rows
                with written_atomically(self.record_path) as tmp, open(tmp, "w") as handle:
                    json.dump(self.record, handle, indent=2)
            data = _csv_bytes(rows, header=self.size == 0)
            os.lseek(self.handle, self.size, os.SEEK_SET)
            done = 0
            while done < len(data):
                done += os.write(self.handle, data[done:])
        except OSError as error:  # a full disk's names no file
            if error.filename or not error.errno:
                raise
            raise type(error)(error.errno, error.strerror, self.path) from None
        self.size += len(data)

    def _cut(self, size: int) -> None:
        os.ftruncate(self.handle, size)
        self.size = size

    def finish(self, files: list[str], *, in_order: bool, run_info) -> None:
        """The rows become the output, in ``files``' order (a resumed run's are rewritten in
        it), after ``run_info()``. The partial file goes: a complete run also removes the
        partial file an earlier run of the same output left, as it is this run's own."""
        if in_order:
            if self.size is None:  # no files: the header alone
                self.append([])
            if run_info:
                run_info()
            os.replace(self.path, self.output_csv)
        else:
            rows, _ = _complete_rows(Path(self.path).read_bytes())
            with written_atomically(self.output_csv) as tmp, open(
                    tmp, "w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerows([CSV_COLUMNS] + [
                    rows[sources.escape_non_utf8(path)] for path in files])
                handle.flush()
                if run_info:
                    run_info()
            os.remove(self.path)
        self.finished = True
        with contextlib.suppress(OSError):
            os.remove(self.record_path)

    def leave(self) -> bool:
        """After a failure: whether a partial file with this run's complete rows is left."""
        if self.finished:
            return False
        with contextlib.suppress(OSError):
            if self.size:
                self._cut(self.size)  # a batch cut short by the failure
                return True
            if self.size == 0 or self.made:  # emptied or made by this run: nothing in it
                os.remove(self.path)
                os.remove(self.record_path)
        return False
