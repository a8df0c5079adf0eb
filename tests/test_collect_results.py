"""scripts/collect_results.py's table from run folders written by hand: damaged files marked
unreadable, the events read as TensorBoard draws them (a resumed run's points over a killed
one's), and the newest checkpoint's test report. Its tables from real runs: test_scripts.py
(the sweep) and test_train_logs.py.

The program runs in the test's process, `main(parse_flags(...))`: TensorFlow is imported here
already, and each subprocess spent 3 CPU-seconds importing it again. One test keeps a fresh
process (see there)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time

from scripts import collect_results
from tests.conftest import one_error_line
from tests.test_scripts import SCRIPTS
from tests.trainer_fixtures import trainer_env

PROGRAM = "collect_results.py"


def _collect_results(*args) -> None:
    collect_results.main(collect_results.parse_flags([PROGRAM, *map(str, args)]))


def test_collect_results_marks_unreadable_runs_naming_the_file_and_exits_1(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    files = {"ok/sweep.json": '{"status": "failed", "seconds": 3}',
             "bad_config/config.json": '{"model": {"resnet_size": ',
             "bad_metrics/config.json": '{"model": {"resnet_size": 18}}',
             "bad_metrics/eval_test/metrics.json": '{"accuracy": 0.9}',
             "bad_status/sweep.json": "ok"}
    for name, text in files.items():
        (sweep / name).parent.mkdir(parents=True, exist_ok=True)
        (sweep / name).write_text(text)
    line = one_error_line(capsys, PROGRAM, lambda: _collect_results(sweep))
    assert line == (
        f"collect_results.py: error: 3 run(s) marked unreadable in {sweep / 'results.md'}; "
        f"first: {sweep / 'bad_config' / 'config.json'}: not readable JSON (Expecting value: "
        "line 1 column 27 (char 26))")
    with open(sweep / "results.csv") as f:
        status = {row["run"]: row["status"] for row in csv.DictReader(f)}
    assert status == {
        "ok": "failed",
        "bad_config": f"unreadable: {sweep / 'bad_config' / 'config.json'}: not readable JSON "
                      "(Expecting value: line 1 column 27 (char 26))",
        "bad_metrics": f"unreadable: {sweep / 'bad_metrics' / 'eval_test' / 'metrics.json'}: "
                       "no accuracy and macro_avg.f1 numbers",
        "bad_status": f"unreadable: {sweep / 'bad_status' / 'sweep.json'}: not readable JSON "
                      "(Expecting value: line 1 column 1 (char 0))"}


def _one_row(sweep) -> dict:
    """The results.csv row of a sweep of one run."""
    with open(sweep / "results.csv") as f:
        (row,) = csv.DictReader(f)
    return row


def _run_resumed_once(tmp_path, folder: str, tag: str, runs):
    """sweep/r18, written by two training runs: for each (resumed_from, {step: value}), a
    TensorBoard start mark at resumed_from and `tag`'s points, in an events file of its own
    under `folder`; returns the run folder."""
    import tensorflow as tf

    from official.utils.logs import summaries

    run = tmp_path / "sweep" / "r18"
    run.mkdir(parents=True)
    (run / "config.json").write_text('{"model": {"resnet_size": 18, "version": 2}}')
    for resumed_from, points in runs:
        writer = tf.summary.create_file_writer(str(run / folder))
        summaries.mark_start(writer, resumed_from)
        with writer.as_default():
            for step, value in points.items():
                tf.summary.scalar(tag, value, step=step)
        writer.close()
        time.sleep(1.1)  # the second run's events file is named by a later second
    return run


def test_collect_results_reads_the_events_without_a_deprecation_note(tmp_path):
    import tensorflow as tf

    run = tmp_path / "sweep" / "r18"
    run.mkdir(parents=True)
    (run / "config.json").write_text('{"model": {"resnet_size": 18, "version": 2}}')
    for folder, scalars in (("eval", {"accuracy": (0.5, 0.75), "loss": (1.25, 0.5)}),
                            ("train", {"examples_per_second": (9.0, 100.0, 120.0, 110.0)})):
        writer = tf.summary.create_file_writer(str(run / folder))
        with writer.as_default():
            for tag, values in scalars.items():
                for step, value in enumerate(values, 1):
                    tf.summary.scalar(tag, value, step=step)
        writer.close()
    # A fresh process, and the command line end to end: TensorFlow prints a deprecation note
    # once per process, so in a test worker where anything had called the deprecated function
    # before, an in-process run would pass whether or not the program still calls it.
    result = subprocess.run([sys.executable, str(SCRIPTS / "collect_results.py"),
                             str(run.parent)], capture_output=True, text=True,
                            env=trainer_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    row = _one_row(run.parent)
    # The last evaluation's figures; the median speed without the first (tracing) call.
    assert (row["eval_accuracy"], row["eval_loss"], row["examples_per_second"]) == (
        "0.75", "0.5", "110.0")
    # tf.compat.v1.train.summary_iterator printed "Instructions for updating: Use eager
    # execution and: tf.data.TFRecordDataset(path)" on every run.
    assert "deprecated" not in result.stderr, result.stderr


def test_collect_results_keeps_a_resumed_runs_evaluation_over_a_killed_ones(tmp_path):
    """A run validated steps 4 and 6 and was killed before step 6's checkpoint; resumed from
    step 2's, it stopped at 4 and validated it again. Its start mark orphans the killed run's
    points from step 3 on: the row shows the resumed run's step 4, not the killed run's step 6
    (which no checkpoint kept) nor the higher of the two step-4 figures."""
    run = _run_resumed_once(tmp_path, "eval", "accuracy",
                            ((0, {4: 0.9, 6: 0.95}), (2, {4: 0.6})))
    _collect_results(run.parent)
    row = _one_row(run.parent)
    assert row["eval_accuracy"] == "0.6"


def test_collect_results_reports_the_newest_checkpoints_test_evaluation(tmp_path):
    """Of several dicom_eval.py reports, the row shows the newest checkpoint's on test: folder
    names sorted as text showed eval_validation over eval_test, and ckpt-75 over ckpt-150."""
    sweep = tmp_path / "sweep"

    def report(run, folder, checkpoint, accuracy):
        path = sweep / run / folder / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"accuracy": accuracy, "macro_avg": {"f1": accuracy},
                                    "model": str(sweep / run / checkpoint)}))

    for run in ("both_splits", "checkpoints", "stale"):
        (sweep / run).mkdir(parents=True)
        (sweep / run / "config.json").write_text('{"model": {"resnet_size": 18}}')
    report("both_splits", "eval_test", "ckpt-40", 0.5)
    report("both_splits", "eval_validation", "ckpt-40", 0.25)
    report("checkpoints", "eval_test-ckpt-150", "ckpt-150", 0.75)
    report("checkpoints", "eval_test-ckpt-75", "ckpt-75", 0.125)
    # eval_test scored before the run was resumed to step 170.
    report("stale", "eval_test", "ckpt-150", 0.5)
    report("stale", "eval_test-ckpt-170", "ckpt-170", 0.875)
    # Scored before a resume, and never since: the row says which step it scored.
    (sweep / "resumed").mkdir()
    (sweep / "resumed" / "config.json").write_text('{"model": {"resnet_size": 18}}')
    report("resumed", "eval_test", "ckpt-4", 0.625)
    (sweep / "exported").mkdir()  # a report on the run's export names no checkpoint
    (sweep / "exported" / "config.json").write_text('{"model": {"resnet_size": 18}}')
    report("exported", "eval_test", "export/1796590484", 0.375)
    _collect_results(sweep)
    with open(sweep / "results.csv") as f:
        rows = {row["run"]: (row["split"], row["split_step"], row["split_accuracy"])
                for row in csv.DictReader(f)}
    assert rows == {"both_splits": ("test", "40", "0.5"),
                    "checkpoints": ("test-ckpt-150", "150", "0.75"),
                    "stale": ("test-ckpt-170", "170", "0.875"),
                    "resumed": ("test", "4", "0.625"), "exported": ("test", "", "0.375")}


def test_collect_results_reads_older_runs_top_level_config(tmp_path):
    """Runs from before config.json's "model" kept the network at the top; a Slim run's
    resnet_size/version there are the unused flags' defaults, not its network (its row read
    as a ResNet-50 v2's, and sorted among them)."""
    sweep = tmp_path / "sweep"
    configs = {"r18": {"architecture": "resnet", "resnet_size": 18, "version": 1,
                       "image_size": 32, "batch_size": 16, "dtype": "fp32"},
               "mobilenet": {"architecture": "mobilenet_v3_small", "resnet_size": 50,
                             "version": 2, "image_size": 32, "batch_size": 16,
                             "dtype": "bf16", "slim": {"model_name": "mobilenet_v3_small"}}}
    for run, config in configs.items():
        (sweep / run).mkdir(parents=True)
        (sweep / run / "config.json").write_text(json.dumps(config))
    _collect_results(sweep)
    with open(sweep / "results.csv") as f:
        rows = [(row["run"], row["architecture"], row["resnet_size"], row["version"],
                 row["image_size"], row["dtype"]) for row in csv.DictReader(f)]
    assert rows == [("mobilenet", "mobilenet_v3_small", "", "", "32", "bf16"),
                    ("r18", "resnet", "18", "1", "32", "fp32")]


def test_collect_results_leaves_out_each_runs_tracing_call_from_the_speed(tmp_path):
    """Only the first point overall was left out: a resumed run's first call (its tracing,
    here 8 examples/s) was in the median (110 instead of 115)."""
    run = _run_resumed_once(tmp_path, "train", "examples_per_second",
                            ((0, {1: 9.0, 2: 100.0, 3: 110.0}), (3, {4: 8.0, 5: 120.0, 6: 130.0})))
    _collect_results(run.parent)
    row = _one_row(run.parent)
    assert row["examples_per_second"] == "115.0"
