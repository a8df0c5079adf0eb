"""The converter's encode pass on Apache Beam (``tf_convert_data.py --runner=beam``): the driver.

The driver (this process) runs the validation pass of ``dataset.convert`` unchanged:
it lists the inputs, reads DICOM headers in its local pool, and assigns every file its
label, split and order key with the same hashes as the local run. Split assignment stays
here on purpose: it needs the keyed patient hash, which thereby never leaves this
process, and the hash needs no global shuffle. The pipeline (``dataset.beam_pipeline``)
then does the heavy part, decoding and encoding every file and writing staged shards.

The driver reads the results the pipeline leaves in the staging folder (shards, counts,
errors), applies ``--on_error`` like the local run and commits: shards, labels.txt,
manifest.json last. Runners on several machines therefore need the dataset and output
folders on a file system every worker mounts at the same path, and this repository
importable on every worker.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
import weakref

from dataset import beam_pipeline, beam_workers, conversion_plan, convert, shards, sources
from dataset.dicom_options import DicomOptions
from dataset.tasks import FileTask, init_worker
from dataset.workers import WorkerPool

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def convert_dataset_beam(config: convert.ConvertConfig, beam_args: list[str]) -> dict:
    """``dataset.convert.convert_dataset`` with the encode pass on Apache Beam.

    Same inputs, outputs, problems and ``on_error`` behaviour as the local run; the set
    of records in each split and the record order are identical, shard boundaries differ.

    Args:
      beam_args: Beam pipeline arguments (see ``pipeline_args``).

    Raises:
      ConversionError: as ``convert_dataset``.
      ValueError: invalid configuration or Beam arguments
        (``beam_pipeline.check_pipeline_args``), or
        apache-beam is not installed.
    """
    if beam_pipeline.beam is None:
        raise ValueError("--runner=beam needs the apache-beam package: "
                         "pip install -r requirements-beam.txt")
    beam_pipeline.check_pipeline_args(beam_args)
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


# --- running it ------------------------------------------------------------------


def _run(beam_args: list[str], staging: str, tasks: list[FileTask], dicom_options,
         shard_bytes: int) -> tuple[list[dict], list[list], list[list[str]]]:
    """Runs the encode pipeline over ``tasks``; shard_bytes 0 only collects errors.

    Returns (staged shard rows, [split, class, examples] rows, [relpath, reason] rows).
    """
    tasks_path = os.path.join(staging, beam_pipeline.TASKS)
    beam_pipeline.write_tasks(tasks_path, tasks)
    # Local worker processes import dataset.beam_pipeline by name: make sure they can find
    # it whatever the current folder is.
    path = os.environ.get("PYTHONPATH", "")
    if REPO_ROOT not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, path) if p)
    log_path = None
    if beam_pipeline.runs_here(beam_args):
        log_handle, log_path = tempfile.mkstemp(prefix="beam-workers-", suffix=".log")
        os.close(log_handle)
    keep_log = False
    try:
        # One Ctrl-C could leave Beam's local runner waiting for ever (dataset.beam_workers).
        with _stderr_to(log_path), beam_workers.ended_on_interrupt():
            beam_pipeline.build_and_run(beam_args, tasks_path, staging, dicom_options,
                                        shard_bytes)
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
    shard_rows, count_rows = [], []
    if shard_bytes:
        shard_rows = beam_pipeline.load(os.path.join(staging, beam_pipeline.SHARDS))
        count_rows = beam_pipeline.load(os.path.join(staging, beam_pipeline.COUNTS))
    return shard_rows, count_rows, beam_pipeline.load(os.path.join(staging, beam_pipeline.ERRORS))


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
