"""The converter's encode pass as a Beam pipeline: its options, its construction, and the
functions it runs on each element (in Beam's workers, which import this module by name).

  tasks.jsonl (in the staging folder) -> Reshuffle -> EncodeFile (``dataset.tasks.encode_file``,
  the local pool's per-file function; the records go to a spill file per bundle) -> where
  each record is + an ``errors`` side output.
  records -> bytes per split -> shard count n = ceil(bytes / shard size) -> record to
  shard floor(order_key * n) -> GroupByKey -> one staged shard per key, sorted by order
  key, its records copied from the spill files. Order keys are uniform, so concatenating
  a split's shards gives exactly the local converter's record order; only the shard
  boundaries differ.

The records themselves never travel as elements: Beam's local runner keeps every
element between stages in the driver's memory (the records twice: before the shard
assignment, which needs the bytes per split, and in the GroupByKey), and a worker holds a
whole shard's records as one grouped element, so the run's memory grew with the dataset
(35,107 MedNIST images, 54 MB of records: 1.45 GB summed over the driver and two workers;
0.69 GB with spill files, of which ~0.4 GB is three imports of Beam; the local pool 0.14 GB).
Elements are now ~100 bytes per record; the staging folder holds the records twice until
the commit (spill files and shards).

The pipeline's results are files in the staging folder (shards, counts, errors), which
``dataset.beam_convert`` (the driver) reads.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import io
import json
import logging
import os
import uuid


def _not_apitools_warning(record: logging.LogRecord) -> bool:
    return "apitools not found" not in record.getMessage()


# Importing Beam warns on the root logger that Google's apitools (BigQuery only) is
# missing; nothing here uses GCP, and the line would precede every error and summary.
logging.root.addFilter(_not_apitools_warning)
try:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
except ImportError:  # raised as a one-line user error by beam_convert.convert_dataset_beam
    beam = None
finally:
    logging.root.removeFilter(_not_apitools_warning)

from dataset.tasks import FileTask, encode_file
from official.utils import files

TASKS, SHARDS, COUNTS, ERRORS = "tasks.jsonl", "shards.json", "counts.json", "errors.json"
# Runners that run in this process, lower case without "Runner" (Beam accepts both): an
# option they do not know is read by nothing. Other runners are sent the options Beam does
# not know (e.g. a Flink option the Python SDK does not define), so only they can judge them.
_IN_PROCESS_RUNNERS = {"direct", "fnapi", "bundlebaseddirect", "switchingdirect"}
_OPEN_SPILLS = 64  # spill files a shard writer keeps open at once


def check_pipeline_args(beam_args: list[str]) -> None:
    """Refuses, before any work, Beam arguments that Beam would only reject once the pipeline
    starts (a bad value: argparse's whole usage text) or log and drop (an unknown option).

    Raises:
      ValueError: (one line) a value Beam cannot parse, or, on an in-process runner, an
        option Beam does not know.
    """
    argparse_output = io.StringIO()
    try:
        with contextlib.redirect_stderr(argparse_output):
            options = PipelineOptions(beam_args).get_all_options(retain_unknown_options=True)
    except SystemExit:  # argparse printed its usage, then "<prog>: error: <problem>"
        lines = argparse_output.getvalue().strip().splitlines() or ["cannot parse them"]
        raise ValueError(f"--beam_pipeline_options: {lines[-1].split(' error: ', 1)[-1]}"
                         ) from None
    except ValueError as error:  # e.g. an empty option name
        raise ValueError(f"--beam_pipeline_options: {error}") from None
    if not _runs_here(options):
        return
    known = PipelineOptions([]).get_all_options()
    unknown = [f"--{name}" for name in options if name not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0][2:], known, n=1)
        hint = f" (did you mean --{close[0]}?)" if close else ""
        raise ValueError(f"--beam_pipeline_options: Beam has no option {', '.join(unknown)}"
                         f"{hint}")


def runs_here(beam_args: list[str]) -> bool:
    """Whether ``beam_args`` name an in-process runner (one whose workers are local)."""
    return _runs_here(PipelineOptions(beam_args).get_all_options(retain_unknown_options=True))


def _runs_here(options: dict) -> bool:
    return (options.get("runner") or "direct").lower().removesuffix("runner") \
        in _IN_PROCESS_RUNNERS


def write_tasks(path: str, tasks: list[FileTask]) -> None:
    """Writes ``tasks`` as the pipeline's input: one JSON line each."""
    with open(path, "w", encoding="utf-8") as stream:
        stream.writelines(_task_to_json(task) + "\n" for task in tasks)


def build_and_run(beam_args: list[str], tasks_path: str, staging: str, dicom_options,
                  shard_bytes: int) -> None:
    """Builds the encode pipeline and runs it to its end (when the `with` block exits); its
    results are the files it writes into ``staging``; shard_bytes 0 only collects errors.

    Raises:
      OSError: a worker could not write into ``staging`` (a full disk, a quota, a read-only
        file system, no permission), naming the output folder, as the local run does.
      RuntimeError: any other failure of the pipeline, its first line saying what (a
        worker's exception, not the first line of its traceback).
    """
    try:
        _build_and_run(beam_args, tasks_path, staging, dicom_options, shard_bytes)
    except RuntimeError as error:
        # A worker's exception reaches here as a RuntimeError whose text is its traceback
        # ("Traceback (most recent call last): ... OSError: [Errno 28] No space left on
        # device [while running 'EncodeFile/...']"): the user saw its first line only.
        storage = files.storage_error(error, os.path.dirname(staging))
        if storage is not None:
            raise storage from error
        lines = [line for line in str(error).splitlines() if line.strip()]
        if lines and lines[0].startswith("Traceback (most recent call last)"):
            raise RuntimeError(lines[-1].removeprefix("RuntimeError: ")) from error
        raise


def _build_and_run(beam_args: list[str], tasks_path: str, staging: str, dicom_options,
                   shard_bytes: int) -> None:
    with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
        results = (pipeline
                   | "ReadTasks" >> beam.io.ReadFromText(tasks_path)
                   | "ParseTasks" >> beam.Map(_task_from_json)
                   # One text file reads as few bundles: spread the files over workers.
                   | "Spread" >> beam.Reshuffle()
                   | "EncodeFile" >> beam.ParDo(_EncodeFile(dicom_options,
                                                            staging if shard_bytes else None))
                   .with_outputs("errors", main="records"))
        _save(results.errors, os.path.join(staging, ERRORS), "Errors")
        if shard_bytes:
            records = results.records
            _save(records | "ClassOfRecord" >> beam.Map(lambda r: ((r[0], r[3]), 1))
                  | "CountClasses" >> beam.CombinePerKey(sum)
                  | "CountRows" >> beam.Map(lambda kv: [kv[0][0], kv[0][1], kv[1]]),
                  os.path.join(staging, COUNTS), "Counts")
            split_bytes = (records | "SizeOfRecord" >> beam.Map(lambda r: (r[0], r[6]))
                           | "BytesPerSplit" >> beam.CombinePerKey(sum))
            staged = (records
                      | "AssignShard" >> beam.Map(_shard_of, shard_bytes,
                                                  beam.pvalue.AsDict(split_bytes))
                      | "GroupShards" >> beam.GroupByKey()
                      | "WriteShard" >> beam.Map(_write_shard, staging))
            _save(staged, os.path.join(staging, SHARDS), "Shards")


def load(path: str) -> list:
    """One of the pipeline's results (``staging``/SHARDS, COUNTS or ERRORS)."""
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


# --- what Beam's workers run on each element ----------------------------------------


def _task_to_json(task: FileTask) -> str:
    return json.dumps([task.path, task.relpath, task.kind, task.label, task.text, task.split,
                       task.order.hex()], ensure_ascii=False)


def _task_from_json(line: str) -> FileTask:
    path, relpath, kind, label, text, split, order = json.loads(line)
    return FileTask(path, relpath, kind, label, text, split, bytes.fromhex(order))


if beam is not None:

    class _EncodeFile(beam.DoFn):
        """``encode_file`` on one task: the task's records appended to this bundle's spill
        file in ``spill_dir`` and (split, order key, frame, class, spill file name, offset,
        length) per record, or (relpath, reason) on the ``errors`` output. ``spill_dir``
        None: errors only."""

        def __init__(self, dicom_options, spill_dir: str | None):
            super().__init__()
            self._dicom_options = dicom_options
            self._spill_dir = spill_dir
            self._spill = None

        def start_bundle(self):
            self._spill = None  # opened with the bundle's first record

        def process(self, task: FileTask):
            records, error = encode_file(task, self._dicom_options)
            if error:
                yield beam.pvalue.TaggedOutput("errors", [task.relpath, error])
            elif self._spill_dir is not None:
                if self._spill is None:
                    # A name of its own per bundle attempt: a retried bundle writes a new
                    # file, and the runner keeps only the successful attempt's elements.
                    self._spill = open(os.path.join(
                        self._spill_dir, f"spill-{uuid.uuid4().hex}"), "wb")
                name = os.path.basename(self._spill.name)
                for frame, record in enumerate(records):
                    offset = self._spill.tell()
                    self._spill.write(record)
                    yield task.split, task.order, frame, task.text, name, offset, len(record)

        def finish_bundle(self):
            # Complete before the bundle's elements reach the next stage: every reader of
            # this file (WriteShard, after the GroupByKey) runs after it.
            if self._spill is not None:
                self._spill.close()
                self._spill = None


def _shard_of(record: tuple, shard_bytes: int, split_bytes: dict):
    split, order, frame, _, spill, offset, length = record
    count = max(1, -(-split_bytes[split] // shard_bytes))
    # The order key is uniform: shard i gets the keys in [i/n, (i+1)/n), so shards of
    # about equal size, each a contiguous run of the local converter's record order.
    index = int.from_bytes(order[:8], "big") * count >> 64
    return (split, index), (order, frame, spill, offset, length)


def _write_shard(keyed: tuple, staging: str) -> dict:
    (split, index), records = keyed
    path = os.path.join(staging, f"{split}.bucket{index:05d}")
    digest, num_bytes, num_records = hashlib.sha256(), 0, 0
    # Rewritten whole (same bytes) if the runner retries the bundle.
    with open(path, "wb") as stream, contextlib.ExitStack() as spills:
        opened = {}
        for _, _, spill, offset, length in sorted(records, key=lambda r: (r[0], r[1])):
            if spill not in opened:
                if len(opened) == _OPEN_SPILLS:  # a bundle per few files: stay under ulimit -n
                    spills.close()
                    opened.clear()
                opened[spill] = spills.enter_context(open(os.path.join(staging, spill), "rb"))
            opened[spill].seek(offset)
            framed = opened[spill].read(length)
            if len(framed) != length:  # a spill file cut short: never a short shard
                raise OSError(f"{opened[spill].name}: {len(framed)} bytes at {offset}, "
                              f"not {length}")
            stream.write(framed)
            digest.update(framed)
            num_bytes += length
            num_records += 1
        stream.flush()
        os.fsync(stream.fileno())  # durable before the commit's rename makes it visible
    return {"split": split, "index": index, "path": path, "num_records": num_records,
            "num_bytes": num_bytes, "sha256": digest.hexdigest()}


def _save(collection, path: str, name: str) -> None:
    """Writes a small PCollection as one JSON list at ``path`` (for the driver to read)."""
    (collection | f"{name}ToList" >> beam.combiners.ToList()
     | f"Write{name}" >> beam.Map(_write_json, path))


def _write_json(rows: list, path: str) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as stream:
        json.dump(rows, stream, ensure_ascii=False)
    os.replace(path + ".tmp", path)
