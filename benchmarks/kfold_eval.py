"""Out-of-fold errors: every image of an archive scored by a model that never saw it.

  source scripts/recipe_mednist.sh   # sets MEDNIST_RECIPE_FLAGS, the MedNIST recipe's flags
  python benchmarks/kfold_eval.py --dataset_dir=MedNIST --work_dir=runs/kfold \\
      --train_flags="$MEDNIST_RECIPE_FLAGS" --folds=5 [--holdout_size=23407] [--only_folds=0,1]

Why: a hold-out drawn from the same archive as the training images (MedNIST's hold-out is such
a draw) makes errors at the archive's rate, and a 3,400-image test split sees too few of them
to tell two recipes apart (2 vs 6 errors is counting noise). Here the archive
(DATASET_DIR/<Class>/<file>, MedNIST's public layout) is cut into --folds parts by a hash of
each file's path (of a DICOM file's patient, as the converter groups them; copies under other
names go with their originals); for each fold a model is trained on the others with tf_convert_data.py
(--need_split=predefined), dicom_main.py and --train_flags, exported, and scored on the fold
with dicom_eval.py. With 5 folds each model trains on 4/5 of the archive, as the recipes'
tvt_split training split does (80%), so its error rate is the recipe's. The summary adds the
errors over all scored images, the commonest confusions, and the count that rate predicts for
a hold-out of --holdout_size images, with a 95% interval.

Each fold lives in WORK_DIR/fold_K/ (symlinked images, records, model, export, eval); a
finished step is not redone, so an interrupted run continues where it stopped. A line on
stderr says what each fold still has to do as it starts, and its errors when it ends; the
summary goes to stdout.
WORK_DIR/kfold_settings.json records what the folds are made with (the archive: its path and
file list; --folds, --seed, --train_flags); a rerun with other settings is refused rather than
reporting the old folds.
Slow by design: one full training per fold.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from collections import Counter

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from absl import app, flags  # noqa: E402

from dataset import duplicates, sources  # noqa: E402  (TensorFlow-free)
from dataset.convert import DEFAULT_HASH_KEY  # noqa: E402
from dataset.dicom_options import DicomOptions  # noqa: E402
from dataset.folder_walk import file_kind  # noqa: E402
from official.utils import cli  # noqa: E402

PROGRAM = "kfold_eval.py"
FLAGS = cli.program_flags()
flags.DEFINE_string("dataset_dir", None, "Archive in class folders: DIR/<Class>/<file>.",
                    flag_values=FLAGS)
flags.DEFINE_string("work_dir", None, "Where each fold's records, model and report go.",
                    flag_values=FLAGS)
flags.DEFINE_string("train_flags", "", "dicom_main.py flags for every fold's training (e.g. "
                    "the recipe's).", flag_values=FLAGS)
flags.DEFINE_integer("folds", 5, "Number of folds.", lower_bound=2, flag_values=FLAGS)
flags.DEFINE_list("only_folds", [], "Run only these folds (default: all); the summary covers "
                  "every finished fold.", flag_values=FLAGS)
flags.DEFINE_integer("holdout_size", 0, "Also print the errors expected on a hold-out of this "
                     "many images from the same archive.", lower_bound=0, flag_values=FLAGS)
flags.DEFINE_string("seed", "kfold", "Salt of the fold hash (another salt, other folds).",
                    flag_values=FLAGS)
flags.mark_flags_as_required(["dataset_dir", "work_dir"], flag_values=FLAGS)
parse_flags = cli.flags_parser(PROGRAM, FLAGS, doc=__doc__)


def list_archive(dataset_dir: str) -> list[tuple[str, str]]:
    """(class, path relative to DATASET_DIR) of every image in DATASET_DIR/<Class>/, as the
    converter's class-folder discovery sees them (hidden files skipped, sub-folders walked).

    Raises:
      ValueError: not a folder, fewer than two classes, a class folder without images, or a
        file the converter would refuse (the first such problem).
    """
    if not os.path.isdir(dataset_dir):
        raise ValueError(f"{dataset_dir}: not a folder")
    layout = sources.detect_layout(dataset_dir)
    if layout != "class_folders":
        # Read as class folders, images/+labels/ fails on labels/*.txt as "not a JPEG", and a
        # train/val/test split silently becomes three classes named after the splits.
        shown = "images/ + labels/" if layout == "images_labels" else "train/val/test split"
        raise ValueError(f"{dataset_dir}: the {shown} layout; kfold_eval needs class folders "
                         "(DIR/<Class>/<image>)")
    folders = sorted(entry.name for entry in os.scandir(dataset_dir)
                     if entry.is_dir() and not entry.name.startswith("."))
    if len(folders) < 2:
        raise ValueError(f"{dataset_dir}: expected class folders DIR/<Class>/<file>, found "
                         f"{len(folders)} folder(s)")
    discovery = sources.discover(dataset_dir, "class_folders")
    if discovery.problems:
        raise ValueError(f"{dataset_dir}: {discovery.problems[0].line()}")
    items = [(file.label, file.relpath) for file in discovery.files]
    classes = {label for label, _ in items}
    for name in folders:
        if name not in classes:
            raise ValueError(f"{os.path.join(dataset_dir, name)}: class folder without files")
    return items


SETTINGS_FILE = "kfold_settings.json"


def fold_settings(dataset_dir: str, items: list[tuple[str, str]], folds: int, seed: str,
                  train_flags: list[str], keys: dict[str, str] | None = None) -> dict:
    """What decides a fold's result, as recorded in WORK_DIR/kfold_settings.json (`keys`:
    fold_keys')."""
    listing = "\n".join(f"{label}/{relpath}" for label, relpath in sorted(items))
    settings = {"dataset_dir": os.path.realpath(dataset_dir), "folds": folds, "seed": seed,
                "train_flags": train_flags,
                # Files added, removed or moved between classes change every fold's split.
                "archive": f"{len(items)} files, sha256 "
                           f"{hashlib.sha256(listing.encode()).hexdigest()[:16]}"}
    if any(file_kind(os.path.join(dataset_dir, relpath)) == "dicom" for _, relpath in items):
        # Folds of DICOM files were cut by path before they were cut by patient: a work_dir
        # of such folds (recorded without this) is refused rather than reused.
        settings["dicom_folds_by"] = "patient"
    joined = sum(key.startswith("copies:") for key in (keys or {}).values())
    if joined:  # recorded only then: an archive without copies keeps its work_dirs
        # Folds were cut with each copy by its own path or patient before copies were joined.
        settings["copies_fold_with"] = (f"{joined} file(s) in a fold key joined with copies "
                                        "of their images")
    return settings


def claim_work_dir(work_dir: str, settings: dict) -> None:
    """Records `settings` in a new WORK_DIR, or checks they are the ones its folds were made
    with: finished steps are reused, so folds of other settings would be reported as new.

    Raises:
      ValueError: settings that differ from the recorded ones, or folds without a record
        (made before kfold_eval.py kept one).
    """
    path = os.path.join(work_dir, SETTINGS_FILE)
    if os.path.isfile(path):
        try:
            with open(path) as file:
                recorded = json.load(file)
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: unreadable ({error}); use a new --work_dir") from None
        differing = [f"{key}: {recorded.get(key)!r} recorded, {value!r} now"
                     for key, value in settings.items() if recorded.get(key) != value]
        if differing:
            raise ValueError(f"{work_dir}: its folds were made with other settings ("
                             + "; ".join(differing) + "); use a new --work_dir")
        return
    if os.path.isdir(work_dir) and any(name.startswith("fold_") for name in
                                       os.listdir(work_dir)):
        raise ValueError(f"{work_dir}: has folds but no {SETTINGS_FILE} to tell what they were "
                         "made with; use a new --work_dir")
    os.makedirs(work_dir, exist_ok=True)
    with open(path + ".partial", "w") as file:
        json.dump(settings, file, indent=1)
    os.replace(path + ".partial", path)


def fold_of(key: str, folds: int, seed: str) -> int:
    """The fold of a file's `fold_keys` key (its path, or its DICOM patient): a hash, so it
    does not depend on listing order."""
    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % folds


def fold_keys(dataset_dir: str, items: list[tuple[str, str]]) -> dict[str, str]:
    """{relpath: what decides its fold}: a DICOM file's patient (the converter's group:
    the patient's other images would otherwise train the model that scores it), else the
    file's path; copies of one image (``dataset.duplicates``) take the least key among them,
    marked "copies:".

    Raises:
      ValueError: a DICOM header that cannot be read.
    """
    keys, pixel_data, layouts = {}, {}, {}
    for _, relpath in items:
        path = os.path.join(dataset_dir, relpath)
        patient = None
        if file_kind(path) == "dicom":
            _, patient, _, pixel_data[relpath], layouts[relpath] = sources.read_dicom_header(
                path, DicomOptions(), DEFAULT_HASH_KEY)
        keys[relpath] = f"patient:{patient}" if patient else relpath
    # Copies of one image under other names or patients fold together, as the converter
    # splits them (a copy in another fold would be scored by a model trained on it).
    identical = duplicates.identical_files(
        {relpath: os.path.join(dataset_dir, relpath) for _, relpath in items},
        lambda function, tasks, chunksize: map(function, tasks),
        parts={relpath: part for relpath, part in pixel_data.items() if part},
        layouts={relpath: layout for relpath, layout in layouts.items() if layout})
    joined = duplicates.join_groups(keys, identical)
    # A key that took in another says so (fold_settings counts its files): counting keys that
    # are not their file's own path missed a patient joined into another patient.
    taking = {key for relpath, key in joined.items() if key != keys[relpath]}
    return {relpath: f"copies:{key}" if key in taking else key
            for relpath, key in joined.items()}


def check_folds(dataset_dir: str, keys: dict[str, str], folds: int, seed: str) -> None:
    """Raises ValueError when a fold would hold none or all of the files (`fold_keys`' keys):
    before any fold trains, not when that fold's turn comes."""
    sizes = Counter(fold_of(key, folds, seed) for key in keys.values())
    for fold in range(folds):
        if sizes[fold] in (0, len(keys)):
            raise ValueError(f"{dataset_dir}: fold {fold} of {folds} would hold "
                             f"{'none' if not sizes[fold] else 'all'} of the {len(keys)} files: "
                             f"{len(set(keys.values()))} group(s) (a DICOM file's patient, else "
                             "its path) are too few; a PatientID shared by every file (a "
                             "placeholder) makes one")


def make_fold_layout(dataset_dir: str, items: list[tuple[str, str]], fold: int, folds: int,
                     seed: str, layout_dir: str, keys: dict[str, str] | None = None) -> None:
    """LAYOUT_DIR/{train,val}/<Class>/<file> as symlinks: `fold` is val, the others train.
    Written into a temporary folder and renamed, so a half-made layout is never reused.
    `keys`: fold_keys' (read from the DICOM headers when not given)."""
    if keys is None:
        keys = fold_keys(dataset_dir, items)
        check_folds(dataset_dir, keys, folds, seed)
    partial = layout_dir + ".partial"
    # rmtree removes the symlinks themselves, never the archive files they point to.
    shutil.rmtree(partial, ignore_errors=True)
    for _, relpath in items:
        split = "val" if fold_of(keys[relpath], folds, seed) == fold else "train"
        link = os.path.join(partial, split, relpath)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.abspath(os.path.join(dataset_dir, relpath)), link)
    os.rename(partial, layout_dir)


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ValueError(f"{what} failed (exit {result.returncode}): {last}")


def progress(line: str) -> None:
    """A progress line on stderr, at once: a fold's training takes minutes."""
    print(line, file=sys.stderr, flush=True)


def run_fold(dataset_dir: str, items: list[tuple[str, str]], fold: int, folds: int, seed: str,
             work_dir: str, train_flags: list[str], label: str,
             keys: dict[str, str] | None = None) -> str:
    """Layout, conversion, training, export and evaluation of one fold; returns its eval
    folder. Steps whose output exists are skipped; `label` starts the progress line naming
    the others."""
    fold_dir = os.path.join(work_dir, f"fold_{fold}")
    layout, data = os.path.join(fold_dir, "raw"), os.path.join(fold_dir, "data")
    model, export = os.path.join(fold_dir, "model"), os.path.join(fold_dir, "export")
    report = os.path.join(fold_dir, "eval")
    if not os.path.isdir(layout):
        os.makedirs(fold_dir, exist_ok=True)
        make_fold_layout(dataset_dir, items, fold, folds, seed, layout, keys)
    python = sys.executable
    steps = (  # (step, its output exists, command); no step makes a later one's output
        ("conversion", os.path.isfile(os.path.join(data, "manifest.json")),
         [python, os.path.join(REPO_ROOT, "tf_convert_data.py"), f"--dataset_dir={layout}",
          f"--output_dir={data}", "--need_split=predefined", "--dataset_name=kfold"]),
        ("training", os.path.isdir(export) and bool(os.listdir(export)),
         [python, os.path.join(REPO_ROOT, "networks", "resnet", "dicom_main.py"),
          f"--data_dir={data}", f"--model_dir={model}", f"--export_dir={export}",
          *train_flags]),
        ("evaluation", os.path.isfile(os.path.join(report, "metrics.json")),
         [python, os.path.join(REPO_ROOT, "networks", "resnet", "dicom_eval.py"),
          f"--model={export}", f"--data_dir={data}", "--split=validation",
          f"--output_dir={report}"]))
    todo = [(step, command) for step, done, command in steps if not done]
    progress(f"{label}: " + (", ".join(step for step, _ in todo) + " ..." if todo
                             else "finished in an earlier run"))
    for step, command in todo:
        _run(command, f"fold {fold}: {step}")
    return report


def poisson_interval(count: int) -> tuple[float, float]:
    """Approximate 95% interval of a Poisson mean given one count (Wilson-Hilferty form of
    the exact chi-square interval; within 1% of it from count 1 up)."""
    def quantile(k: float, z: float) -> float:
        return k * (1.0 - 1.0 / (9.0 * k) + z / (3.0 * math.sqrt(k))) ** 3
    low = 0.0 if count == 0 else quantile(count, -1.959964)
    return low, quantile(count + 1, 1.959964)


def read_report(report: str) -> tuple[dict, list[dict]]:
    """A fold's dicom_eval.py report: (metrics.json, misclassified.csv's rows)."""
    metrics = json.load(open(os.path.join(report, "metrics.json")))
    with open(os.path.join(report, "misclassified.csv"), newline="") as file:
        return metrics, list(csv.DictReader(file))


def summarize(reports: dict[int, str], folds: int, holdout_size: int) -> str:
    """The table over finished folds; last line "out-of-fold errors E of N (rate R)"."""
    lines = [f"{'fold':<5} {'images':>7} {'errors':>6}  accuracy"]
    scored = errors = 0
    confusions: Counter = Counter()
    for fold in sorted(reports):
        metrics, rows = read_report(reports[fold])
        confusions.update(f"{row['true']}->{row['predicted']}" for row in rows)
        scored += metrics["num_examples"]
        errors += len(rows)
        lines.append(f"{fold:<5} {metrics['num_examples']:>7} {len(rows):>6}  "
                     f"{metrics['accuracy']:.5f}")
    rate = errors / scored
    lines.append("commonest confusions: " + ", ".join(
        f"{pair} {count}" for pair, count in confusions.most_common(6)))
    if len(reports) < folds:
        lines.append(f"partial: {len(reports)} of {folds} folds finished")
    if holdout_size:
        low, high = (holdout_size / scored * bound for bound in poisson_interval(errors))
        lines.append(f"expected on a hold-out of {holdout_size} images: "
                     f"{rate * holdout_size:.1f} errors (95% interval {low:.1f}-{high:.1f})")
    lines.append(f"out-of-fold errors {errors} of {scored} (rate {rate:.5f})")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv  # no positional arguments (parse_flags checked)

    def run() -> str:
        folds = FLAGS.folds
        try:
            wanted = sorted({int(k) for k in FLAGS.only_folds}) or list(range(folds))
        except ValueError:
            raise ValueError(f"--only_folds={','.join(FLAGS.only_folds)}: not fold numbers")
        if any(not 0 <= k < folds for k in wanted):
            raise ValueError(f"--only_folds: folds are 0 to {folds - 1}")
        work, data = os.path.realpath(FLAGS.work_dir), os.path.realpath(FLAGS.dataset_dir)
        if os.path.commonpath([work, data]) == data:
            # The archive's next listing would take the folds' records and reports for images.
            raise ValueError(f"--work_dir={FLAGS.work_dir} is inside --dataset_dir="
                             f"{FLAGS.dataset_dir}; choose a folder outside the archive")
        items = list_archive(FLAGS.dataset_dir)
        keys = fold_keys(FLAGS.dataset_dir, items)  # (every DICOM header read once)
        check_folds(FLAGS.dataset_dir, keys, folds, FLAGS.seed)
        train_flags = shlex.split(FLAGS.train_flags)
        claim_work_dir(FLAGS.work_dir,
                       fold_settings(FLAGS.dataset_dir, items, folds, FLAGS.seed, train_flags,
                                     keys))
        for position, fold in enumerate(wanted, 1):
            label = f"fold {fold} ({position} of {len(wanted)})"
            metrics, rows = read_report(run_fold(FLAGS.dataset_dir, items, fold, folds,
                                                 FLAGS.seed, FLAGS.work_dir, train_flags, label,
                                                 keys))
            progress(f"{label}: errors {len(rows)} of {metrics['num_examples']}")
        reports = {k: os.path.join(FLAGS.work_dir, f"fold_{k}", "eval") for k in range(folds)}
        reports = {k: path for k, path in reports.items()
                   if os.path.isfile(os.path.join(path, "metrics.json"))}
        return summarize(reports, folds, FLAGS.holdout_size)

    cli.print_summary_or_exit(PROGRAM, run)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
