"""What a training run writes for the user to read afterwards (hooks' log lines, TensorBoard
events) and what reads it back (official/utils/logs/summaries.py)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from networks.resnet import train_steps
from official.core import steps, train_lib
from official.core.config import TrainConfig
from official.utils import files
from official.utils.logs import hooks as hooks_lib
from official.utils.logs import summaries
from scripts import collect_results
from tests.conftest import one_error_line
from tests.trainer_fixtures import REPO_ROOT, tiny_dataset, trainer_env

DICOM_EVAL = REPO_ROOT / "networks" / "resnet" / "dicom_eval.py"

ONE_DEVICE = tf.distribute.OneDeviceStrategy("/cpu:0")


class Recorder(hooks_lib.Hook):
    def __init__(self):
        self.metrics = []

    def after_step(self, step, metrics):
        self.metrics.append((step, dict(metrics)))


def test_examples_per_second_hook_counts_the_train_calls_time_not_the_validations(
        tmp_path, monkeypatch):
    """2 steps an epoch, validated after each; every validation takes 100 s more on the
    clock. The hook logged examples over the wall clock since its last line, validations
    included: 0.16 examples/s where the steps ran at hundreds (the examples_per_second scalar
    and the final line said so)."""
    offset = [0.0]
    clock = time.perf_counter
    monkeypatch.setattr(time, "perf_counter", lambda: clock() + offset[0])
    evaluate = steps.evaluate

    def slow_evaluate(*args):
        offset[0] += 100.0
        return evaluate(*args)

    monkeypatch.setattr(steps, "evaluate", slow_evaluate)
    speed, recorder = hooks_lib.ExamplesPerSecondHook(every_n_steps=2), Recorder()
    monkeypatch.setattr(hooks_lib, "get_train_hooks", lambda *args, **kwargs: [speed, recorder])
    config = TrainConfig(model_dir=str(tmp_path / "model"),
                         data_dir=str(tiny_dataset(tmp_path / "data")), image_size=32,
                         batch_size=8, train_epochs=3, num_parallel_calls=2, seed=1,
                         checkpoint_every_steps=0)
    train_lib.train(config, ONE_DEVICE,
                    train_steps.ResNetNetwork(resnet_size=18, small_input=False))
    # The last line covers steps 5 and 6 (after the warm-up calls and step 4's validation).
    window = [metrics for step, metrics in recorder.metrics if step in (5, 6)]
    assert speed.examples_per_second == pytest.approx(
        sum(m["examples"] for m in window) / sum(m["seconds"] for m in window))
    for _, metrics in recorder.metrics:  # the seconds are those of the scalar's
        assert metrics["examples"] / metrics["seconds"] == pytest.approx(
            metrics["examples_per_second"])
    assert speed.examples_per_second > 1.0


def test_a_record_cut_short_ends_its_file_as_in_tensorboard(tmp_path):
    """A run still training, or killed, can leave half an event record at the end of its
    file: collect_results.py stopped with DataLossError's traceback (no table) where
    TensorBoard shows the points before it."""
    run = tmp_path / "sweep" / "r18"
    writer = tf.summary.create_file_writer(str(run / "eval"))
    with writer.as_default():
        for step, accuracy in ((2, 0.5), (4, 0.75)):
            tf.summary.scalar("accuracy", accuracy, step=step)
            writer.flush()
    writer.close()
    (path,) = (run / "eval").iterdir()
    os.truncate(path, path.stat().st_size - 5)  # step 4's record loses its end
    assert summaries.read_scalars(str(run / "eval"), "accuracy") == [(2, 0.5)]
    (run / "config.json").write_text('{"model": {"resnet_size": 18, "version": 2}}')
    _collect_results(run.parent)
    with open(run.parent / "results.csv") as f:
        (row,) = csv.DictReader(f)
    assert row["eval_accuracy"] == "0.5"


def _collect_results(*args) -> None:
    """collect_results.py in this process (TensorFlow is imported here already; its command
    line runs end to end in test_collect_results.py)."""
    collect_results.main(collect_results.parse_flags(["collect_results.py", *map(str, args)]))


def _rows(sweep) -> dict[str, dict]:
    """{run: its row} of `sweep`'s results.csv."""
    with open(sweep / "results.csv") as f:
        return {row["run"]: row for row in csv.DictReader(f)}


def test_a_damaged_checkpoint_or_config_model_is_an_unreadable_row(tmp_path, capsys):
    """A checkpoint whose index is damaged, and a config.json whose "model" is no object,
    stopped collect_results.py with a traceback (OpError 'not an sstable', AttributeError)
    and no table; they are rows marked unreadable, naming the file, like a damaged JSON."""
    sweep = tmp_path / "sweep"
    for run in ("damaged", "model_text", "fine"):
        (sweep / run).mkdir(parents=True)
        (sweep / run / "config.json").write_text('{"model": {"resnet_size": 18}}')
    (sweep / "model_text" / "config.json").write_text('{"model": "resnet18"}')
    checkpoint = tf.train.Checkpoint(weights=tf.Variable([1.0, 2.0]))
    prefix = checkpoint.save(str(sweep / "damaged" / "ckpt"))
    os.truncate(prefix + ".index", 10)
    line = one_error_line(capsys, "collect_results.py", lambda: _collect_results(sweep))
    rows = _rows(sweep)
    assert rows["damaged"]["status"].startswith(f"unreadable: {prefix}: not a readable "
                                                "checkpoint (")
    assert rows["model_text"]["status"] == (
        f'unreadable: {sweep / "model_text" / "config.json"}: "model" is not a JSON object')
    assert rows["fine"]["resnet_size"] == "18" and rows["fine"]["status"] == ""
    assert line.startswith("collect_results.py: error: 2 run(s) marked unreadable in ")


def test_a_slim_runs_row_names_its_network(tmp_path):
    """Slim-style runs had blank resnet_size and version and no other column: only their
    folder's name told a MobileNet from an Inception."""
    sweep = tmp_path / "sweep"
    configs = {"slim": {"model": {"architecture": "mobilenet_v3_small", "image_size": 96}},
               "resnet": {"model": {"architecture": "resnet", "resnet_size": 18}},
               "older": {"resnet_size": 50}}  # before config.json kept a "model"
    for run, config in configs.items():
        (sweep / run).mkdir(parents=True)
        (sweep / run / "config.json").write_text(json.dumps(config))
    _collect_results(sweep)
    rows = _rows(sweep)
    assert {run: rows[run]["architecture"] for run in configs} == {
        "slim": "mobilenet_v3_small", "resnet": "resnet", "older": "resnet"}
    assert rows["slim"]["resnet_size"] == "" and rows["older"]["resnet_size"] == "50"


def test_tables_that_cannot_be_written_are_one_line_and_neither_is_half_replaced(tmp_path,
                                                                                  capsys):
    """An --output_prefix in a missing folder stopped with FileNotFoundError's traceback; a
    results.md that could not be written left a new results.csv beside the old .md."""
    sweep = tmp_path / "sweep"
    (sweep / "r18").mkdir(parents=True)
    (sweep / "r18" / "config.json").write_text('{"model": {"resnet_size": 18}}')
    (sweep / "results.csv").write_text("the previous table\n")
    (sweep / "results.md").mkdir()  # cannot be replaced by a file
    line = one_error_line(capsys, "collect_results.py", lambda: _collect_results(sweep))
    assert line.startswith(
        f"collect_results.py: error: {sweep / 'results.md'}: cannot write the table (")
    assert (sweep / "results.csv").read_text() == "the previous table\n"
    assert sorted(path.name for path in sweep.iterdir()) == ["r18", "results.csv",
                                                             "results.md"]
    missing = tmp_path / "missing" / "table"
    line = one_error_line(capsys, "collect_results.py", lambda: _collect_results(
        f"--output_prefix={missing}", sweep))
    assert line == (f"collect_results.py: error: {missing}.csv: cannot write the table (No "
                    "such file or directory)")
    line = one_error_line(capsys, "collect_results.py", lambda: _collect_results(
        sweep / "r18" / "config.json"))
    assert line == f"collect_results.py: error: {sweep / 'r18' / 'config.json'}: not a folder"


def test_a_run_being_trained_now_is_marked_training(tmp_path):
    """A sweep rerun that resumes a failed run: while it trains, its row showed sweep.json's
    earlier "failed" (a first attempt: no status at all) beside its latest figures."""
    sweep = tmp_path / "sweep"
    for run in ("resumed", "idle"):
        (sweep / run).mkdir(parents=True)
        (sweep / run / "config.json").write_text('{"model": {"resnet_size": 18}}')
        (sweep / run / "sweep.json").write_text('{"status": "failed", "seconds": 3}')
    # flock: the lock held here refuses collect_results' own shared lock on the folder (a
    # descriptor of its own) in this process as it would in another.
    with files.folder_held(str(sweep / "resumed"), "training"):
        _collect_results(sweep)
    rows = _rows(sweep)
    assert {run: row["status"] for run, row in rows.items()} == {"resumed": "training",
                                                                 "idle": "failed"}
    assert not files.in_use(str(sweep / "resumed"))  # let go


def test_a_saved_models_report_is_drawn_at_the_step_it_was_exported_at(tmp_path):
    """dicom_eval.py on an export wrote its TensorBoard point at step 0, whatever the step
    of the model it scored (config.json's exported_step)."""
    data = tiny_dataset(tmp_path / "data")
    config = TrainConfig(model_dir=str(tmp_path / "model"), data_dir=str(data), image_size=32,
                         batch_size=8, train_epochs=1, num_parallel_calls=2, seed=1,
                         hooks=(), export_dir=str(tmp_path / "export"))
    result = train_lib.train(config, ONE_DEVICE,
                             train_steps.ResNetNetwork(resnet_size=18, small_input=False))
    assert result.step == 2
    evaluated = subprocess.run([sys.executable, str(DICOM_EVAL), f"--model={tmp_path / 'export'}",
                                f"--data_dir={data}", "--split=validation"],
                               capture_output=True, text=True, env=trainer_env(), timeout=120)
    assert evaluated.returncode == 0, evaluated.stderr
    version = os.path.basename(result.export_path)
    report = tmp_path / "export" / f"eval-{version}-validation"
    assert summaries.read_scalars(str(report), "accuracy") == [(2, pytest.approx(
        result.eval_accuracy))]
