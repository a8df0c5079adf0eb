"""The converter's encode pass as an Apache Beam pipeline (``tf_convert_data.py --runner=beam``).

The driver (this process) runs the validation pass of ``dataset.convert`` unchanged:
it lists the inputs, reads DICOM headers in its local pool, and assigns every file its
label, split and order key with the same hashes as the local run. Split assignment stays
here on purpose: it needs the keyed patient hash, which thereby never leaves this
process, and the hash needs no global shuffle. The pipeline then does the heavy part:

  tasks.jsonl (in the staging folder) -> Reshuffle -> EncodeFile (``dataset.tasks.encode_file``,
  the local pool's per-file function) -> records + an ``errors`` side output.
  records -> bytes per split -> shard count n = ceil(bytes / shard size) -> record to
  shard floor(order_key * n) -> GroupByKey -> one staged shard per key, sorted by order
  key. Order keys are uniform, so concatenating a split's shards gives exactly the local
  converter's record order; only the shard boundaries differ.

The driver reads the results the pipeline leaves in the staging folder (shards, counts,
errors), applies ``--on_error`` like the local run and commits: shards, labels.txt,
manifest.json last. Runners on several machines therefore need the dataset and output
folders on a file system every worker mounts at the same path, and this repository
importable on every worker.
"""

from __future__ import annotations

import collections
import contextlib
import difflib
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import threading
import time
import weakref


def _not_apitools_warning(record: logging.LogRecord) -> bool:
    return "apitools not found" not in record.getMessage()


# Importing Beam warns on the root logger that Google's apitools (BigQuery only) is
# missing; nothing here uses GCP, and the line would precede every error and summary.
logging.root.addFilter(_not_apitools_warning)
try:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
except ImportError:  # raised as a one-line user error by convert_dataset_beam
    beam = None
finally:
    logging.root.removeFilter(_not_apitools_warning)

from dataset import beam_workers, conversion_plan, convert, shards, sources
from dataset.dicom_options import DicomOptions
from dataset.tasks import FileTask, encode_file, init_worker
from dataset.workers import WorkerPool

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TASKS, _SHARDS, _COUNTS, _ERRORS = "tasks.jsonl", "shards.json", "counts.json", "errors.json"
# Runners that run in this process, lower case without "Runner" (Beam accepts both): an
# option they do not know is read by nothing. Other runners are sent the options Beam does
# not know (e.g. a Flink option the Python SDK does not define), so only they can judge them.
_IN_PROCESS_RUNNERS = {"direct", "fnapi", "bundlebaseddirect", "switchingdirect"}


def pipeline_args(options_text: str, num_workers: int) -> list[str]:
    """Beam arguments from ``--beam_pipeline_options`` (TensorFlow Datasets' format:
    ``"runner=FlinkRunner,flink_master=host:8081"``; a leading ``--`` is allowed).

    Without a runner, Beam's local runner runs one worker process per core
    (``num_workers``; 0: all cores). Beam's own default, the DirectRunner, would first
    try to download the Prism runner from GitHub.
    """
    args = [f"--{item.strip().lstrip('-')}" for item in options_text.split(",") if item.strip()]
    if not any(arg.split("=")[0] == "--runner" for arg in args):
        args = ["--runner=FnApiRunner", "--direct_running_mode=multi_processing",
                f"--direct_num_workers={num_workers or os.cpu_count() or 1}",
                "--default_sdk_harness_log_level=WARNING", *args]
    return args


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


def _runs_here(options: dict) -> bool:
    """Whether ``options`` (``PipelineOptions.get_all_options``) name an in-process runner."""
    return (options.get("runner") or "direct").lower().removesuffix("runner") \
        in _IN_PROCESS_RUNNERS


def convert_dataset_beam(config: convert.ConvertConfig, beam_args: list[str]) -> dict:
    """``dataset.convert.convert_dataset`` with the encode pass on Apache Beam.

    Same inputs, outputs, problems and ``on_error`` behaviour as the local run; the set
    of records in each split and the record order are identical, shard boundaries differ.

    Args:
      beam_args: Beam pipeline arguments (see ``pipeline_args``).

    Raises:
      ConversionError: as ``convert_dataset``.
      ValueError: invalid configuration or Beam arguments (``check_pipeline_args``), or
        apache-beam is not installed.
    """
    if beam is None:
        raise ValueError("--runner=beam needs the apache-beam package: "
                         "pip install -r requirements-beam.txt")
    check_pipeline_args(beam_args)
    with contextlib.ExitStack() as hold:  # the output folder's lock, from the planning on
        workers = WorkerPool(config.num_workers or os.cpu_count() or 1, init_worker,
                             (config.dicom, convert.hash_key(config)))
        try:
            plan = convert.plan_conversion(config, workers, hold)
        finally:
            workers.close()  # the cores are the pipeline's from here on
        return _encode_and_commit(config, beam_args, plan)


def _encode_and_commit(config: convert.ConvertConfig, beam_args: list[str], plan) -> dict:
    dicom = config.dicom if config.dicom is not None else _default_dicom_options()
    problems = list(plan.problems)
    if plan.failing(config.on_error):
        # Failing anyway: decode the rest too (writing no shard) so that one run lists
        # every problem, as the local run does. An unusable --output_dir has no room for
        # the pipeline's results; its problem is reported without the decode pass.
        if not any(p.path == "--output_dir" for p in problems):
            with convert.staging_area(config.output_dir) as staging:
                errors = _run(beam_args, staging, plan.tasks, dicom, 0)[2]
            problems += _ordered_problems(errors)
    # Raises when failing.
    skipped = conversion_plan.fail_or_skip(config.on_error, config.dataset_dir, plan, problems)
    tasks = conversion_plan.write_order(plan.tasks, skipped)
    with convert.staging_area(config.output_dir) as staging:
        staged_rows, count_rows, errors = _run(beam_args, staging, tasks, dicom,
                                               int(config.shard_size_mb * 2**20))
        skipped = conversion_plan.fail_or_skip(config.on_error, config.dataset_dir, plan,
                                               _ordered_problems(errors), skipped)
        split_order = list(dict.fromkeys(task.split for task in tasks))
        staged = {split: _final_names(split, [r for r in staged_rows if r["split"] == split])
                  for split in split_order}
        counts = {split: collections.Counter() for split in split_order}
        for split, text, count in count_rows:
            counts[split][text] += count
        return convert.commit(config, staging, plan, staged, counts, skipped)


def _default_dicom_options():
    return DicomOptions()


def _ordered_problems(errors: list[list[str]]) -> list[sources.Problem]:
    # The pipeline returns errors in no particular order: list them by path, as the local
    # run does (not in task order: a skip run's tasks are in record order, a hash).
    return [sources.Problem(relpath, reason) for relpath, reason in sorted(errors)]


def _final_names(split: str, rows: list[dict]) -> list[shards.StagedShard]:
    rows = sorted(rows, key=lambda row: row["index"])  # empty shard indices leave gaps
    return [shards.StagedShard(row["path"], shards.shard_name(split, number, len(rows)),
                               row["num_records"], row["num_bytes"], row["sha256"])
            for number, row in enumerate(rows)]


# --- the pipeline ----------------------------------------------------------------


def _run(beam_args: list[str], staging: str, tasks: list[FileTask], dicom_options,
         shard_bytes: int) -> tuple[list[dict], list[list], list[list[str]]]:
    """Runs the encode pipeline over ``tasks``; shard_bytes 0 only collects errors.

    Returns (staged shard rows, [split, class, examples] rows, [relpath, reason] rows).
    """
    tasks_path = os.path.join(staging, _TASKS)
    with open(tasks_path, "w", encoding="utf-8") as stream:
        stream.writelines(_task_to_json(task) + "\n" for task in tasks)
    # Local worker processes import this module by name: make sure they can find it
    # whatever the current folder is.
    path = os.environ.get("PYTHONPATH", "")
    if REPO_ROOT not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, path) if p)
    log_path = None
    if _runs_here(PipelineOptions(beam_args).get_all_options(retain_unknown_options=True)):
        log_handle, log_path = tempfile.mkstemp(prefix="beam-workers-", suffix=".log")
        os.close(log_handle)
    keep_log = False
    try:
        # One Ctrl-C could leave Beam's local runner waiting for ever (dataset.beam_workers).
        with _stderr_to(log_path), beam_workers.ended_on_interrupt():
            _build_and_run(beam_args, tasks_path, staging, dicom_options, shard_bytes)
    except RuntimeError as error:
        # A runner that cannot start or a job that failed on the cluster (e.g. "Unable to
        # fetch remote job server jar"): Beam's traceback is pages of its own frames. The
        # files' own problems never get here: the DoFn returns them as "errors" rows.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        keep_log = bool(log_path and os.path.getsize(log_path))
        raise ValueError(f"--runner=beam: the pipeline failed: {reason}" + (
            f" (the local workers' log: {log_path})" if keep_log else "")) from error
    finally:
        if log_path and not keep_log:
            os.remove(log_path)
    return (_load(os.path.join(staging, _SHARDS)) if shard_bytes else [],
            _load(os.path.join(staging, _COUNTS)) if shard_bytes else [],
            _load(os.path.join(staging, _ERRORS)))


def _silence_thread_ends(threads: set[threading.Thread]) -> None:
    """From now on, an exception that ends one of ``threads`` is not printed.

    After an interrupt, Beam's threads (run_worker, beam_control_read,
    read_grpc_client_inputs) each print a traceback once they notice their worker's end,
    which can come after standard error is back: _stderr_to waits for them at most 10 s.
    Their join could not: a thread whose join the signal interrupted (Beam's, as it stops
    its workers) is marked ended while it runs (CPython 3.11's Thread._wait_for_tstate_lock).
    Seen above the one line in 8 of 14 SIGTERMs sent as the run ended (4 of 14 group
    Ctrl-Cs).
    """
    quiet = weakref.WeakSet(threads)
    previous = threading.excepthook

    def hook(args):
        if args.thread not in quiet:
            previous(args)

    threading.excepthook = hook


@contextlib.contextmanager
def _stderr_to(log_path: str | None):
    """Sends this process's standard error (file descriptor 2) to ``log_path`` for the block;
    None: leaves it as it is.

    Beam's local runner starts its worker processes with this process's standard error, and
    they print to it whatever Beam's log level: their start-up and shutdown (about 20 INFO
    lines each, as Beam's import warning gives them a handler at INFO, and the runner does not
    pass them --default_sdk_harness_log_level), and on Ctrl-C (which a terminal sends them
    too) a traceback each. The runner's own relays of their lines would bury the summary too.
    """
    if log_path is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    before = set(threading.enumerate())
    reporting = {"run_worker"}
    try:
        with open(log_path, "ab") as log:
            os.dup2(log.fileno(), 2)
        yield
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (official.utils.cli): the run is given up
        # Beam's threads in this process go on logging its workers' ends (the workers'
        # relayed tracebacks, the data plane's broken streams) for a while yet.
        logging.getLogger("apache_beam").setLevel(logging.CRITICAL + 1)
        _silence_thread_ends(set(threading.enumerate()) - before)
        reporting |= {"beam_control_read", "read_grpc_client_inputs"}  # their streams broke
        raise
    finally:
        try:
            # After a Ctrl-C, the runner's thread per worker process (Beam names them
            # run_worker) reports the worker's end, a traceback, once the worker is gone,
            # as do a killed worker's stream readers: into the log (or nowhere), not below
            # the one line that says what happened. Its workers are gone by now. A thread
            # leaves threading.enumerate() after its report; its join() is not enough, as
            # one whose join the signal interrupted is marked ended while it runs (CPython
            # 3.11): its report began in the log and went on below the line.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(
                    thread.name in reporting for thread in threading.enumerate()):
                time.sleep(0.01)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _build_and_run(beam_args: list[str], tasks_path: str, staging: str, dicom_options,
                   shard_bytes: int) -> None:
    """Builds the encode pipeline and runs it to its end (when the `with` block exits); its
    results are the files it writes into ``staging``."""
    with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
        results = (pipeline
                   | "ReadTasks" >> beam.io.ReadFromText(tasks_path)
                   | "ParseTasks" >> beam.Map(_task_from_json)
                   # One text file reads as few bundles: spread the files over workers.
                   | "Spread" >> beam.Reshuffle()
                   | "EncodeFile" >> beam.ParDo(_EncodeFile(dicom_options, bool(shard_bytes)))
                   .with_outputs("errors", main="records"))
        _save(results.errors, os.path.join(staging, _ERRORS), "Errors")
        if shard_bytes:
            records = results.records
            _save(records | "ClassOfRecord" >> beam.Map(lambda r: ((r[0], r[3]), 1))
                  | "CountClasses" >> beam.CombinePerKey(sum)
                  | "CountRows" >> beam.Map(lambda kv: [kv[0][0], kv[0][1], kv[1]]),
                  os.path.join(staging, _COUNTS), "Counts")
            split_bytes = (records | "SizeOfRecord" >> beam.Map(lambda r: (r[0], len(r[4])))
                           | "BytesPerSplit" >> beam.CombinePerKey(sum))
            staged = (records
                      | "AssignShard" >> beam.Map(_shard_of, shard_bytes,
                                                  beam.pvalue.AsDict(split_bytes))
                      | "GroupShards" >> beam.GroupByKey()
                      | "WriteShard" >> beam.Map(_write_shard, staging))
            _save(staged, os.path.join(staging, _SHARDS), "Shards")


def _task_to_json(task: FileTask) -> str:
    return json.dumps([task.path, task.relpath, task.kind, task.label, task.text, task.split,
                       task.order.hex()], ensure_ascii=False)


def _task_from_json(line: str) -> FileTask:
    path, relpath, kind, label, text, split, order = json.loads(line)
    return FileTask(path, relpath, kind, label, text, split, bytes.fromhex(order))


if beam is not None:

    class _EncodeFile(beam.DoFn):
        """``encode_file`` on one task: (split, order key, frame, class, framed record) per
        image, or (relpath, reason) on the ``errors`` output."""

        def __init__(self, dicom_options, keep_records: bool):
            super().__init__()
            self._dicom_options = dicom_options
            self._keep_records = keep_records

        def process(self, task: FileTask):
            records, error = encode_file(task, self._dicom_options)
            if error:
                yield beam.pvalue.TaggedOutput("errors", [task.relpath, error])
            elif self._keep_records:
                for frame, record in enumerate(records):
                    yield task.split, task.order, frame, task.text, record


def _shard_of(record: tuple, shard_bytes: int, split_bytes: dict):
    split, order, frame, _, framed = record
    count = max(1, -(-split_bytes[split] // shard_bytes))
    # The order key is uniform: shard i gets the keys in [i/n, (i+1)/n), so shards of
    # about equal size, each a contiguous run of the local converter's record order.
    index = int.from_bytes(order[:8], "big") * count >> 64
    return (split, index), (order, frame, framed)


def _write_shard(keyed: tuple, staging: str) -> dict:
    (split, index), records = keyed
    path = os.path.join(staging, f"{split}.bucket{index:05d}")
    digest, num_bytes, num_records = hashlib.sha256(), 0, 0
    # Rewritten whole (same bytes) if the runner retries the bundle.
    with open(path, "wb") as stream:
        for _, _, framed in sorted(records, key=lambda r: (r[0], r[1])):
            stream.write(framed)
            digest.update(framed)
            num_bytes += len(framed)
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


def _load(path: str) -> list:
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)
