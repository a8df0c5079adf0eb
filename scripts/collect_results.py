"""Collect a sweep's runs into one table: results.csv and results.md.

    python scripts/collect_results.py runs/sweep            # -> runs/sweep/results.{csv,md}

Every sub-folder holding a config.json (a trainer --model_dir) is one row. Columns come from:
  config.json                 architecture (resnet, or a Slim network's name), resnet_size,
                              version, image_size (its "model"; the top-level keys of older
                              runs), batch_size, dtype
  the latest checkpoint       step; params (model weights, batch-norm statistics excluded)
  eval/ TensorBoard events    the last evaluation's step, accuracy and loss (on the
                              trainer's --eval_split, validation by default)
  train/ TensorBoard events   median examples_per_second (each run's first call, which
                              traces, left out: a resumed run's too)
  eval_<split>/metrics.json   accuracy and macro F1 on <split>, when dicom_eval.py wrote one
                              (of several: the newest checkpoint's, test's first), and the
                              checkpoint step it scored (split_step: a report from before a
                              resume is older than the row's step; blank for an export's)
  sweep.json                  status and wall-clock seconds, written by sweep_resnet.sh
                              (status "training" for a run whose trainer is running now:
                              its other columns are where it has got to)
Runs that failed before writing config.json are rows too when sweep.json exists. A run whose
config.json, sweep.json, metrics.json or latest checkpoint cannot be read is a row with status
"unreadable: <file>: <problem>"; the tables are still written, and the program exits 1 naming
the file.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import re
import statistics
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from official.core.config import CONFIG_FILE  # noqa: E402  (no TensorFlow)
from official.core.model_paths import checkpoint_step  # noqa: E402  (no TensorFlow)
from official.utils import cli, files  # noqa: E402

PROGRAM = "collect_results.py"
FLAGS = cli.program_flags()
flags.DEFINE_string("output_prefix", None, "The tables go to PREFIX.csv and PREFIX.md "
                    "(default: SWEEP_DIR/results).", flag_values=FLAGS)
# SWEEP_DIR: the folder whose sub-folders are training model_dirs.
parse_flags = cli.flags_parser(PROGRAM, FLAGS, doc=__doc__, arguments=("SWEEP_DIR",))

COLUMNS = ("run", "status", "architecture", "resnet_size", "version", "image_size",
           "batch_size", "dtype", "params", "step", "eval_step", "eval_accuracy", "eval_loss",
           "split", "split_step", "split_accuracy", "split_macro_f1", "examples_per_second",
           "seconds")


def _scalars(folder: str, tag: str, first_of_each_run: bool = True
             ) -> list[tuple[int, float]]:
    """(step, value) of one scalar, in step order, as TensorBoard draws it: a step a killed
    run wrote and its resumed run trained again counts once, the resumed run's (without the
    runs' start marks, a step's two validations were both kept, and the higher reported)."""
    from official.utils.logs import summaries  # TensorFlow: after the flags

    return summaries.read_scalars(folder, tag, first_of_each_run=first_of_each_run)


def _params_and_step(model_dir: str) -> tuple[int | None, int | None]:
    import tensorflow as tf

    checkpoint = tf.train.latest_checkpoint(model_dir)
    if not checkpoint:
        return None, None
    # The trainer's checkpoint stores each trainable weight once, under the path it is first
    # reached by (Keras 3: the optimizer's list of trainable variables); older layouts keep
    # them under model/ next to the batch-norm statistics.
    try:
        variables = tf.train.list_variables(checkpoint)
    except tf.errors.OpError as error:  # a damaged .index or data file
        raise UnreadableFile(f"{checkpoint}: not a readable checkpoint ({error.message})"
                             ) from None
    trainable = [shape for name, shape in variables
                 if re.fullmatch(r"optimizer/_trainable_variables/\d+/\.ATTRIBUTES/"
                                 r"VARIABLE_VALUE", name)]
    if not trainable:
        trainable = [shape for name, shape in variables
                     if name.startswith("model/") and "moving_" not in name]
    return sum(math.prod(shape) for shape in trainable), checkpoint_step(checkpoint)


def _report_step(metrics: dict) -> int:
    """The checkpoint step a dicom_eval.py report scored (its "model" is .../ckpt-N), or -1."""
    found = re.search(r"ckpt-(\d+)$", str(metrics.get("model", "")))
    return int(found.group(1)) if found else -1


class UnreadableFile(ValueError):
    """A run's JSON file or checkpoint is damaged or lacks a field; the message names the
    file."""


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            content = json.load(f)
    except (OSError, ValueError) as error:  # ValueError: JSONDecodeError, bad UTF-8
        raise UnreadableFile(f"{path}: not readable JSON ({error})") from None
    if not isinstance(content, dict):
        raise UnreadableFile(f"{path}: not a JSON object")
    return content


def collect_run(run_dir: str) -> dict:
    """One run's row; a damaged JSON file makes it {"run", "status": "unreadable: ..."}."""
    # One run's damaged file (a run killed while writing it, a hand edit) marks that row
    # rather than stopping the table: the other runs of a long sweep are still reported, and
    # none of the damaged run's figures is shown half-read.
    name = os.path.basename(run_dir.rstrip("/"))
    try:
        return _collect_run(run_dir, name)
    except UnreadableFile as error:
        return {"run": name, "status": f"unreadable: {error}"}


def _collect_run(run_dir: str, name: str) -> dict:
    row = {"run": name}
    status_path = os.path.join(run_dir, "sweep.json")
    if os.path.isfile(status_path):
        status = _read_json(status_path)
        row.update(status=status.get("status"), seconds=status.get("seconds"))
    if files.in_use(run_dir):  # sweep.json, if any, is an earlier attempt's
        row["status"] = "training"
    config_path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(config_path):
        return row
    config = _read_json(config_path)
    model = config.get("model", config)  # runs before "model" kept its fields at the top
    if not isinstance(model, dict):
        raise UnreadableFile(f"{config_path}: \"model\" is not a JSON object")
    # A Slim-style network's name (mobilenet_v3_small, ...): without it such runs had only
    # their folder's name to tell them apart. Runs from before "model" were ResNets.
    row["architecture"] = model.get("architecture", "resnet")
    # A Slim run (its "slim" entry) from before "model" kept the unused --resnet_size and
    # --version defaults (50, 2) at the top: shown, they made its row a ResNet-50 v2's.
    leftovers = ("resnet_size", "version") if "model" not in config and "slim" in config else ()
    for key in ("resnet_size", "version", "image_size"):
        row[key] = None if key in leftovers else model.get(key)
    for key in ("batch_size", "dtype"):
        row[key] = config.get(key)
    # Before the checkpoint and events: a damaged file ends the row before TensorFlow loads.
    reports = []
    for path in glob.glob(os.path.join(run_dir, "eval_*", "metrics.json")):
        metrics = _read_json(path)
        try:
            figures = (round(metrics["accuracy"], 4), round(metrics["macro_avg"]["f1"], 4))
        except (KeyError, TypeError):
            raise UnreadableFile(f"{path}: no accuracy and macro_avg.f1 numbers") from None
        split = os.path.basename(os.path.dirname(path))[len("eval_"):]
        reports.append((_report_step(metrics), split == "test", split, figures))
    if reports:
        # One report per row: the newest checkpoint's (a report from before a resume, or of an
        # earlier --checkpoint, is not the run's), the test split's among those. Folder names
        # sorted as text chose eval_validation over eval_test and ckpt-75 over ckpt-150.
        step, _, row["split"], (row["split_accuracy"], row["split_macro_f1"]) = max(reports)
        row["split_step"] = step if step >= 0 else None
    row["params"], row["step"] = _params_and_step(run_dir)
    for tag in ("accuracy", "loss"):
        values = _scalars(os.path.join(run_dir, "eval"), tag)
        if values:
            # The last validation's step: a killed or running run's checkpoint ("step") can
            # be past it.
            row["eval_step"], row[f"eval_{tag}"] = values[-1][0], round(values[-1][1], 4)
    # Each run's first call (a resumed run's too) includes tracing: left out when there are
    # others.
    train = os.path.join(run_dir, "train")
    speeds = ([value for _, value in _scalars(train, "examples_per_second", False)]
              or [value for _, value in _scalars(train, "examples_per_second")])
    if speeds:
        row["examples_per_second"] = round(statistics.median(speeds), 1)
    return row


def _sort_key(row: dict):
    return (row.get("resnet_size") or 0, row.get("version") or 0, row["run"])


def write_tables(rows: list[dict], prefix: str) -> tuple[str, str]:
    """results.csv and results.md, both or neither (each is written whole, and the .csv is
    moved in only once the .md is written)."""
    csv_path, md_path = prefix + ".csv", prefix + ".md"
    with files.written_atomically(csv_path) as csv_tmp, \
            files.written_atomically(md_path) as md_tmp:
        with open(csv_tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        with open(md_tmp, "w") as f:
            f.write("| " + " | ".join(COLUMNS) + " |\n")
            f.write("|" + "|".join("---" for _ in COLUMNS) + "|\n")
            for row in rows:
                cells = ["" if row.get(column) is None else str(row[column])
                         for column in COLUMNS]
                f.write("| " + " | ".join(cells) + " |\n")
    return csv_path, md_path


def main(argv: list[str]) -> None:
    sweep_dir = argv[1]  # parse_flags checked there is exactly one
    if not os.path.isdir(sweep_dir):
        cli.exit_with_error(PROGRAM, f"{sweep_dir}: " + ("not a folder" if os.path.exists(
            sweep_dir) else "no such folder"))
    runs = [os.path.join(sweep_dir, name) for name in sorted(os.listdir(sweep_dir))
            if os.path.isfile(os.path.join(sweep_dir, name, CONFIG_FILE))
            or os.path.isfile(os.path.join(sweep_dir, name, "sweep.json"))]
    if not runs:
        cli.exit_with_error(PROGRAM, f"{sweep_dir} has no run folders (with config.json or "
                            "sweep.json)")
    rows = sorted((collect_run(run) for run in runs), key=_sort_key)
    try:
        csv_path, md_path = write_tables(rows, FLAGS.output_prefix
                                         or os.path.join(sweep_dir, "results"))
    except OSError as error:  # a missing or read-only folder, a full disk
        cli.exit_with_error(PROGRAM, f"{error.filename}: cannot write the table "
                            f"({error.strerror})")
    print(f"{len(rows)} run(s) -> {csv_path}, {md_path}")
    unreadable = [row["status"] for row in rows
                  if str(row.get("status")).startswith("unreadable: ")]
    if unreadable:
        cli.exit_with_error(PROGRAM, f"{len(unreadable)} run(s) marked unreadable in "
                            f"{md_path}; first: {unreadable[0][len('unreadable: '):]}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
