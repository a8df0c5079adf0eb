"""A blind look at held-out groups: do the crops a model fails on show their labelled organ?

  # 1. sheets for a reader: the failing groups and as many controls, shuffled, unmarked
  python benchmarks/blind_review.py --data_dir=W/holdout_data --split=test \\
      --groups_csv=W/holdout_groups.csv --eval_dir=W/holdout_eval --output_dir=REVIEW
  # 2. the reader writes REVIEW/verdicts.json: {"G00": {"verdict": "visible"}, ...}
  #    (visible | absent | unsure: is the labelled organ in most of the row's crops?)
  # 3. the verdicts against the key
  python benchmarks/blind_review.py --output_dir=REVIEW --verdicts=REVIEW/verdicts.json

Why: OrganAMNIST's labels come from 3-D boxes, not from the pixels; where a box missed its
organ, the crop shows other anatomy under the organ's name, and a model's error there says
nothing about the model. Looking at only the failing groups finds what one looks for; so the
failing groups (at least --min_errors errors and --min_share of the group wrong) are mixed
with controls (per failing group, one random group of the same class with under 5% wrong and
at least 5 images) and shuffled, and the reader sees an ID, the class label and up to 10 of
the group's images: no errors, no model, no group name. REVIEW/key.json holds the answers;
don't show it to the reader.

The score prints, for failing groups and controls, how many the reader called visible,
absent or unsure, their images and the model's errors in them, and the held-out accuracy if
every error outside the groups called absent were gone (a ceiling for a model that can only
read organs that are there). --compare_eval_dirs (with --groups_csv) splits other models'
errors on the same split the same way: what a change of model fixes, and where.
"""

from __future__ import annotations

import json
import os
import random
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import holdout_report  # noqa: E402
from dataset import groups_csv  # noqa: E402
from official.utils import cli  # noqa: E402
from official.utils.files import written_atomically  # noqa: E402

PROGRAM = "blind_review.py"
VERDICTS = ("visible", "absent", "unsure")
KEY_ENTRY = {"group", "kind", "errors", "images"}  # a key.json row (choose)
ROWS_PER_SHEET = 13
CONTROL_MAX_SHARE = 0.05  # a control group: under 5% of it wrong ...
CONTROL_MIN_SIZE = 5  # ... and at least 5 images

FLAGS = cli.program_flags()
flags.DEFINE_string("output_dir", None, "Where the sheets and key.json go (made if missing; "
                    "its parent must exist), or are read from with --verdicts.",
                    flag_values=FLAGS)
flags.DEFINE_string("verdicts", None, "The reader's JSON: score it against output_dir's key "
                    "instead of making sheets.", flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "Folder written by tf_convert_data.py.", flag_values=FLAGS)
flags.DEFINE_string("split", "test", "The held-out split the evaluation scored.",
                    flag_values=FLAGS)
flags.DEFINE_string("groups_csv", None, "The --groups_csv the split was made with.",
                    flag_values=FLAGS)
flags.DEFINE_string("eval_dir", None, "dicom_eval.py output folder of that split.",
                    flag_values=FLAGS)
flags.DEFINE_string("second_verdicts", None, "With --verdicts: another reader's JSON of the "
                    "same sheets, for the readers' agreement.", flag_values=FLAGS)
flags.DEFINE_list("compare_eval_dirs", [], "With --verdicts and --groups_csv: more "
                  "dicom_eval.py reports of the same split, whose errors are split the same way "
                  "(in groups called absent, elsewhere).", flag_values=FLAGS)
flags.DEFINE_integer("min_errors", 3, "A failing group has at least this many errors ...",
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_float("min_share", 0.25, "... and at least this share of its images wrong.",
                   lower_bound=0.0, upper_bound=1.0, flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Seed of the controls' draw and the shuffle.", flag_values=FLAGS)
flags.mark_flags_as_required(["output_dir"], flag_values=FLAGS)
parse_flags = cli.flags_parser(PROGRAM, FLAGS, doc=__doc__)


def class_of(group: str) -> str:
    """The converter's group names are "<class>-<number>"."""
    return group.rsplit("-", 1)[0]


def choose(names: list[str], sizes: np.ndarray, errors: np.ndarray, min_errors: int,
           min_share: float, seed: int) -> dict[str, dict]:
    """The key: "G00", ... -> {"group", "kind": "failing" | "control", "errors", "images"}.

    Failing groups and one control each (same class, drawn without replacement; none when
    the class has no group left that qualifies), in a shuffled order."""
    rng = random.Random(seed)
    failing = [g for g in range(len(names))
               if errors[g] >= min_errors and errors[g] >= min_share * sizes[g]]
    candidates = [g for g in range(len(names)) if errors[g] < CONTROL_MAX_SHARE * sizes[g]
                  and sizes[g] >= CONTROL_MIN_SIZE]
    chosen = [(g, "failing") for g in failing]
    for g in failing:
        same = [c for c in candidates if class_of(names[c]) == class_of(names[g])]
        if same:
            pick = rng.choice(same)
            candidates.remove(pick)
            chosen.append((pick, "control"))
    rng.shuffle(chosen)
    return {f"G{number:02d}": {"group": names[g], "kind": kind, "errors": int(errors[g]),
                               "images": int(sizes[g])}
            for number, (g, kind) in enumerate(chosen)}


def score(key: dict[str, dict], verdicts: dict[str, dict], total_images: int,
          total_errors: int) -> str:
    missing = sorted(set(key) - set(verdicts))
    if missing:
        raise ValueError(f"verdicts: no verdict for {', '.join(missing[:5])}"
                         + (" ..." if len(missing) > 5 else ""))
    lines = [f"{'kind':<9} {'verdict':<8} {'groups':>6} {'images':>6} {'errors':>6}"]
    absent_errors = 0
    for kind in ("failing", "control"):
        for verdict in VERDICTS:
            rows = [entry for name, entry in key.items() if entry["kind"] == kind
                    and _verdict(verdicts, name) == verdict]
            errors = sum(entry["errors"] for entry in rows)
            lines.append(f"{kind:<9} {verdict:<8} {len(rows):>6} "
                         f"{sum(entry['images'] for entry in rows):>6} {errors:>6}")
            if verdict == "absent":
                absent_errors += errors
    lines.append(f"errors in groups called absent: {absent_errors} of {total_errors}; accuracy "
                 f"{1 - total_errors / total_images:.4f}, {1 - absent_errors / total_images:.4f} "
                 "if every other error were gone")
    return "\n".join(lines)


def agreement(key: dict[str, dict], first: dict, second: dict) -> str:
    """How often two readers give a row the same verdict, and the rows both call absent."""
    missing = sorted(set(key) - set(second))
    if missing:
        raise ValueError(f"second verdicts: no verdict for {', '.join(missing[:5])}")
    same = [name for name in key if _verdict(first, name) == _verdict(second, name)]
    both = [key[name] for name in same if _verdict(first, name) == "absent"]
    failing = [entry for entry in both if entry["kind"] == "failing"]
    return (f"the readers agree on {len(same)} of {len(key)} rows; both call {len(both)} "
            f"absent, {len(failing)} of them failing groups "
            f"({sum(entry['errors'] for entry in failing)} errors)")


def check_key(path: str, key) -> None:
    """A key.json this program wrote: a ValueError naming the file otherwise (a key from
    another tool or version would fail later with a bare KeyError)."""
    entries = key.get("groups") if isinstance(key, dict) else None
    if not (isinstance(entries, dict) and isinstance(key.get("images"), int)
            and isinstance(key.get("errors"), int)
            and all(isinstance(entry, dict) and KEY_ENTRY <= set(entry)
                    for entry in entries.values())):
        raise ValueError(f"{path}: not a key written by blind_review.py (needs \"images\", "
                         f"\"errors\" and \"groups\" of rows with {', '.join(sorted(KEY_ENTRY))})")


def _verdict(verdicts: dict, name: str) -> str:
    entry = verdicts[name]
    verdict = entry.get("verdict") if isinstance(entry, dict) else entry
    if verdict not in VERDICTS:
        raise ValueError(f"verdicts: {name}: {verdict!r} is not one of {', '.join(VERDICTS)}")
    return verdict


def main(argv: list[str]) -> None:
    del argv  # no positional arguments (parse_flags checked)
    from dataset import converted, reader  # TensorFlow, after the flags

    def make() -> str:
        for name in ("data_dir", "groups_csv", "eval_dir"):
            if not FLAGS[name].value:
                raise ValueError(f"--{name} is needed to make the sheets")
        parent = os.path.dirname(os.path.abspath(FLAGS.output_dir))
        if not os.path.isdir(parent):
            raise ValueError(f"--output_dir: folder {parent} does not exist")
        if os.path.exists(FLAGS.output_dir) and not os.path.isdir(FLAGS.output_dir):
            raise ValueError(f"--output_dir: {FLAGS.output_dir} is a file, not a folder")
        if os.path.exists(os.path.join(FLAGS.output_dir, "key.json")):
            raise ValueError(f"{FLAGS.output_dir} holds a key already: a new draw would not "
                             "match its sheets (use another --output_dir)")
        groups = groups_csv.read_groups_csv(FLAGS.groups_csv)
        metrics, wrong = holdout_report.read_eval(FLAGS.eval_dir)
        filenames = reader.split_filenames(FLAGS.data_dir, FLAGS.split)
        holdout_report.check_scored(FLAGS.eval_dir, metrics, len(filenames),
                                    f"the {FLAGS.split} split of {FLAGS.data_dir}")
        group_of_image = holdout_report.groups_of_files(groups, filenames)
        names, sizes, errors = holdout_report.group_counts(group_of_image, [wrong], filenames)
        key = choose(names, sizes, errors[0], FLAGS.min_errors, FLAGS.min_share, FLAGS.seed)
        if not key:
            raise ValueError(f"{FLAGS.eval_dir}: no group has {FLAGS.min_errors} errors and "
                             f"{FLAGS.min_share:.0%} of its images wrong")
        dataset = reader.make_dataset(converted.split_info(FLAGS.data_dir, FLAGS.split).files,
                                      channels=3, deterministic=True)
        images = holdout_report.images_by_group(  # the reader is not shown the errors
            {entry["group"] for entry in key.values()}, group_of_image,
            dataset.as_numpy_iterator(), [False] * len(filenames))
        os.makedirs(FLAGS.output_dir, exist_ok=True)
        ids = list(key)
        for number, start in enumerate(range(0, len(ids), ROWS_PER_SHEET)):
            rows = [(f"{name}\nlabel: {class_of(key[name]['group'])}",
                     images[key[name]["group"]]) for name in ids[start:start + ROWS_PER_SHEET]]
            with written_atomically(os.path.join(FLAGS.output_dir,
                                                 f"sheet{number}.png")) as tmp:
                holdout_report.contact_sheet(rows).save(tmp, format="PNG")
        # The key last: its presence says the sheets beside it are complete.
        with written_atomically(os.path.join(FLAGS.output_dir, "key.json")) as tmp, open(
                tmp, "w", encoding="utf-8") as handle:
            json.dump({"images": len(filenames), "errors": len(wrong), "groups": key}, handle,
                      indent=1)
        failing = sum(entry["kind"] == "failing" for entry in key.values())
        return (f"{failing} failing groups and {len(key) - failing} controls on "
                f"{number + 1} sheets in {FLAGS.output_dir} (key.json: not for the reader)")

    def run_score() -> str:
        key_path = os.path.join(FLAGS.output_dir, "key.json")
        try:
            with open(key_path, encoding="utf-8") as handle:
                key = json.load(handle)
            with open(FLAGS.verdicts, encoding="utf-8") as handle:
                verdicts = json.load(handle)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read the key or the verdicts: {error}") from None
        check_key(key_path, key)
        if not isinstance(verdicts, dict):
            raise ValueError(f"{FLAGS.verdicts}: not a JSON object of row -> verdict")
        summary = score(key["groups"], verdicts, key["images"], key["errors"])
        if FLAGS.second_verdicts:
            try:
                with open(FLAGS.second_verdicts, encoding="utf-8") as handle:
                    second = json.load(handle)
            except (OSError, ValueError) as error:
                raise ValueError(f"cannot read the second verdicts: {error}") from None
            summary += "\n" + agreement(key["groups"], verdicts, second)
        if not FLAGS.compare_eval_dirs:
            return summary
        if not FLAGS.groups_csv:
            raise ValueError("--compare_eval_dirs needs the --groups_csv the split was made with")
        groups = groups_csv.read_groups_csv(FLAGS.groups_csv)
        absent = {entry["group"] for name, entry in key["groups"].items()
                  if _verdict(verdicts, name) == "absent"}
        lines = [summary]
        for folder in FLAGS.compare_eval_dirs:
            metrics, wrong = holdout_report.read_eval(folder)
            holdout_report.check_scored(folder, metrics, key["images"], "the reviewed split")
            inside = sum(groups_csv.csv_group(groups, name) in absent for name in wrong)
            lines.append(f"{folder}: {len(wrong)} errors, {inside} in groups called absent, "
                         f"{len(wrong) - inside} elsewhere")
        return "\n".join(lines)

    cli.print_summary_or_exit(PROGRAM, run_score if FLAGS.verdicts else make)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
