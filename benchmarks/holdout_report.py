"""Accuracy on held-out groups with an interval that knows errors come by scan, and paired
differences between models scored on the same images.

  python benchmarks/holdout_report.py --data_dir=W/holdout_data --split=test \\
      --groups_csv=W/holdout_groups.csv --eval_dirs=W/holdout_eval,W2/holdout_eval \\
      [--reference_recall=kidney-left=0.784,spleen=0.935,...]

Why: a hold-out of whole scans fails scan by scan (OrganAMNIST's slice-group hold-out: 424
errors of the 8-epoch recipe in 64 of 281 groups, 122 in three), so an interval that treats
images as independent is several times too narrow, and two models compared on different
draws differ by the draw. Resampling the held-out groups with replacement (a cluster
bootstrap) gives the interval; resampling the same groups for two models scored on the same
images gives the interval of their difference.

--eval_dirs are dicom_eval.py --output_dir folders (metrics.json, misclassified.csv) of the same
--split of --data_dir; the first is the one the others are compared with. --groups_csv is the
converter's (file,group rows; a file not in it is its own group here, where the converter
groups it by its DICOM patient or file stem: name every file to resample as it split).
--reference_recall adds the Spearman rank correlation of each model's per-class recall with
given figures (e.g. a held-back test's), the agreement RESULTS.md section 22 reports.
--worst_groups=N lists the first model's N groups with the most errors and what it called them;
--contact_sheet=PNG shows up to 10 images of each of those groups, to look for what no model
can read (OrganAMNIST's labels come from boxes; RESULTS.md section 24: more than half the
recipe's held-out errors are in groups whose crops show none of their organ).
"""

from __future__ import annotations

import csv
import json
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from dataset import groups_csv  # noqa: E402
from official.utils import cli  # noqa: E402
from official.utils.files import written_atomically  # noqa: E402

PROGRAM = "holdout_report.py"
SHEET_COLUMNS = 10
SHEET_TILE = 48  # pixels a side: a 28-px crop's structures stay visible
SHEET_LABEL_WIDTH = 170

FLAGS = cli.program_flags()
flags.DEFINE_string("data_dir", None, "Folder written by tf_convert_data.py.", flag_values=FLAGS)
flags.DEFINE_string("split", "test", "The held-out split the evaluations scored.",
                    flag_values=FLAGS)
flags.DEFINE_string("groups_csv", None, "The --groups_csv the split was made with.",
                    flag_values=FLAGS)
flags.DEFINE_list("eval_dirs", None, "dicom_eval.py output folders, comma-separated; the "
                  "first is the baseline of the paired differences.", flag_values=FLAGS)
flags.DEFINE_list("reference_recall", [], "class=recall,... to rank-correlate each model's "
                  "per-class recall with.", flag_values=FLAGS)
flags.DEFINE_integer("resamples", 4000, "Bootstrap resamples of the groups.", lower_bound=100,
                     flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Seed of the resampling.", flag_values=FLAGS)
flags.DEFINE_float("shared_failure", 0.9, "List the groups every model gets at least this "
                   "share of wrong (scans no model reads: look at them for box or label "
                   "errors), and each accuracy without them.", lower_bound=0.0, upper_bound=1.0,
                   flag_values=FLAGS)
flags.DEFINE_integer("worst_groups", 0, "List the first model's N groups with the most "
                     "errors, with its commonest wrong answers there (0: none).", lower_bound=0,
                     flag_values=FLAGS)
flags.DEFINE_string("contact_sheet", None, "Write a PNG of the --worst_groups: a row of up to "
                    f"{SHEET_COLUMNS} images per group, evenly spaced through it, a red bar over "
                    "the first model's errors. Its folder must exist.", flag_values=FLAGS)
flags.mark_flags_as_required(["data_dir", "groups_csv", "eval_dirs"], flag_values=FLAGS)
parse_flags = cli.flags_parser(PROGRAM, FLAGS, doc=__doc__)


def group_counts(group_of_image: list[str], wrong: list, filenames: list[str]
                 ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Group names [G] (sorted), images per group [G] and errors per model and group [M, G].

    `wrong`: per model, the misclassified file names (a set, or a dict keyed by them)."""
    names = sorted(set(group_of_image))
    index = {name: number for number, name in enumerate(names)}
    groups = np.array([index[name] for name in group_of_image])
    sizes = np.bincount(groups, minlength=len(names))
    errors = np.stack([np.bincount(groups, weights=[name in mine for name in filenames],
                                   minlength=len(names)) for mine in wrong])
    return names, sizes, errors


def cluster_bootstrap(sizes: np.ndarray, errors: np.ndarray, resamples: int, seed: int
                      ) -> np.ndarray:
    """Accuracy of each model [M] over `resamples` draws of the groups with replacement:
    [resamples, M]. Every model sees the same draws, so differences are paired."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(sizes), (resamples, len(sizes)))
    return 1.0 - errors[:, draws].sum(axis=2).T / sizes[draws].sum(axis=1, keepdims=True)


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties); nan when either side is constant."""
    def ranks(values):
        values = np.asarray(values, float)
        order = values.argsort(kind="stable")
        result = np.empty(len(values))
        result[order] = np.arange(len(values))
        for value in np.unique(values):  # ties share their mean rank
            result[values == value] = result[values == value].mean()
        return result
    ranked_a, ranked_b = ranks(a), ranks(b)
    if np.ptp(ranked_a) == 0 or np.ptp(ranked_b) == 0:
        return float("nan")
    return float(np.corrcoef(ranked_a, ranked_b)[0, 1])


def parse_reference(items: list[str]) -> dict[str, float]:
    reference = {}
    for item in items:
        name, _, value = item.rpartition("=")
        try:
            reference[name] = float(value)
        except ValueError:
            raise ValueError(f"--reference_recall: {item!r} is not class=recall") from None
    return reference


def shared_failures(sizes: np.ndarray, errors: np.ndarray, share: float) -> np.ndarray:
    """Indices of the groups that every model [M, G] gets at least `share` of wrong."""
    return np.flatnonzero(np.all(errors >= share * sizes, axis=0) & (errors.min(axis=0) > 0))


def worst_groups(group_names: list[str], sizes: np.ndarray, errors: np.ndarray,
                 group_of_image: list[str], predicted: dict[str, str], filenames: list[str],
                 count: int) -> tuple[list[int], list[str]]:
    """The `count` groups with most errors [G] (ties: the larger share wrong, then the name)
    and a line for each: "name: E of N wrong (called X e1, Y e2)"."""
    order = sorted((g for g in range(len(sizes)) if errors[g] > 0),
                   key=lambda g: (-errors[g], -errors[g] / sizes[g], group_names[g]))[:count]
    answers: dict[str, dict[str, int]] = {group_names[g]: {} for g in order}
    for name, group in zip(filenames, group_of_image):
        if group in answers and name in predicted:
            answers[group][predicted[name]] = answers[group].get(predicted[name], 0) + 1
    lines = []
    for g in order:
        called = sorted(answers[group_names[g]].items(),
                        key=lambda item: (-item[1], item[0]))[:3]
        lines.append(f"  {group_names[g]}: {int(errors[g])} of {int(sizes[g])} wrong (called "
                     + ", ".join(f"{answer} {number}" for answer, number in called) + ")")
    return order, lines


def groups_of_files(groups: dict[str, str], filenames: list[str]) -> list[str]:
    """Each file's group in a read_groups_csv mapping; a file the CSV does not name is its own
    group (the converter would group it by its patient or stem)."""
    return [groups_csv.csv_group(groups, name) or f"file:{name}" for name in filenames]


def check_scored(folder: str, metrics: dict, num_images: int, what: str) -> None:
    """Raises ValueError unless the report in `folder` scored `num_images` images (`what`
    names the split that has them)."""
    if metrics.get("num_examples") != num_images:
        raise ValueError(f"{folder}: scored {metrics.get('num_examples')} images, {what} has "
                         f"{num_images}")


def images_by_group(wanted, group_of_image: list[str], images, marked: list[bool]
                    ) -> dict[str, list[tuple[np.ndarray, bool]]]:
    """The (image, mark) pairs of the `wanted` groups, in file order, for `contact_sheet`.

    `images`: the split's (image, label) pairs in file order (one pass; only the wanted ones
    are kept); `marked`: per image, whether its tile gets the red bar."""
    kept: dict[str, list] = {group: [] for group in wanted}
    for group, mark, (image, _) in zip(group_of_image, marked, images):
        if group in kept:
            kept[group].append((image, mark))
    return kept


def contact_sheet(rows: list[tuple[str, list[tuple[np.ndarray, bool]]]]) -> Image.Image:
    """One row per (caption, [(uint8 image [H, W, C], wrong), ...]): the caption, then up to
    SHEET_COLUMNS images evenly spaced through the list, each scaled to SHEET_TILE pixels,
    a red bar over those marked wrong."""
    bar, gap = 4, 2
    row_height = SHEET_TILE + bar + gap
    sheet = Image.new("RGB", (SHEET_LABEL_WIDTH + SHEET_COLUMNS * (SHEET_TILE + gap),
                              max(1, len(rows)) * row_height), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    for number, (caption, images) in enumerate(rows):
        top = number * row_height
        draw.text((4, top + SHEET_TILE // 3), caption, fill=(255, 255, 0))
        picks = np.linspace(0, len(images) - 1, min(SHEET_COLUMNS, len(images))).round()
        for column, index in enumerate(picks.astype(int)):
            image, wrong = images[index]
            left = SHEET_LABEL_WIDTH + column * (SHEET_TILE + gap)
            tile = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
            sheet.paste(tile.convert("RGB").resize((SHEET_TILE, SHEET_TILE), Image.BICUBIC),
                        (left, top + bar))
            if wrong:
                draw.rectangle([left, top, left + SHEET_TILE - 1, top + bar - 1],
                               fill=(255, 0, 0))
    return sheet


def report(eval_dirs: list[str], metrics: list[dict], sizes: np.ndarray, errors: np.ndarray,
           draws: np.ndarray, reference: dict[str, float], group_names: list[str],
           share: float) -> str:
    lines = [f"{len(sizes)} held-out groups, {int(sizes.sum())} images; 95% intervals from "
             f"{len(draws)} resamples of the groups"]
    for number, (name, m) in enumerate(zip(eval_dirs, metrics)):
        low, high = np.percentile(draws[:, number], [2.5, 97.5])
        recall = {c: m["per_class"][c]["recall"] for c in m["class_names"]}
        worst = sorted(recall, key=recall.get)[:3]
        line = (f"{name}: accuracy {m['accuracy']:.4f} (95% {low:.4f}-{high:.4f}), errors in "
                f"{np.count_nonzero(errors[number])} groups; worst "
                + ", ".join(f"{c} {recall[c]:.3f}" for c in worst))
        if reference:
            rho = spearman([recall[c] for c in reference], list(reference.values()))
            line += "; rank correlation with the reference recall " + (
                f"{rho:+.2f}" if np.isfinite(rho) else "undefined (equal recalls)")
        lines.append(line)
        if number:
            difference = draws[:, number] - draws[:, 0]
            low, high = np.percentile(difference, [2.5, 97.5])
            lines.append(f"  minus {eval_dirs[0]}: {m['accuracy'] - metrics[0]['accuracy']:+.4f} "
                         f"(95% {low:+.4f} to {high:+.4f})")
    failed = shared_failures(sizes, errors, share)
    if len(failed):
        kept = sizes.sum() - sizes[failed].sum()
        lines.append(f"groups every model gets >= {share:.0%} wrong: {len(failed)} "
                     f"({int(sizes[failed].sum())} images: "
                     + ", ".join(group_names[g] for g in failed[np.argsort(-sizes[failed])][:5])
                     + (", ..." if len(failed) > 5 else "") + "); accuracy without them: "
                     + ", ".join(f"{1 - (errors[m].sum() - errors[m, failed].sum()) / kept:.4f}"
                                 for m in range(len(errors))))
    return "\n".join(lines)


def read_eval(folder: str) -> tuple[dict, dict[str, str]]:
    """metrics.json, and each misclassified file's predicted class."""
    try:
        with open(os.path.join(folder, "metrics.json"), encoding="utf-8") as handle:
            metrics = json.load(handle)
        with open(os.path.join(folder, "misclassified.csv"), newline="", encoding="utf-8") as h:
            wrong = {row["file"]: row["predicted"] for row in csv.DictReader(h)}
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{folder}: not a dicom_eval.py report ({error})") from None
    return metrics, wrong


def main(argv: list[str]) -> None:
    del argv  # no positional arguments (parse_flags checked)
    from dataset import converted, reader  # TensorFlow, after the flags

    def run() -> str:
        if FLAGS.contact_sheet and not FLAGS.worst_groups:
            raise ValueError("--contact_sheet shows the --worst_groups: set --worst_groups=N")
        if FLAGS.contact_sheet:  # its folder checked before the work, not after it
            sheet_folder = os.path.dirname(os.path.abspath(FLAGS.contact_sheet))
            if not os.path.isdir(sheet_folder):
                raise ValueError(f"--contact_sheet: folder {sheet_folder} does not exist")
        groups = groups_csv.read_groups_csv(FLAGS.groups_csv)
        reference = parse_reference(FLAGS.reference_recall)
        evaluations = [read_eval(folder) for folder in FLAGS.eval_dirs]
        filenames = reader.split_filenames(FLAGS.data_dir, FLAGS.split)
        for folder, (metrics, _) in zip(FLAGS.eval_dirs, evaluations):
            check_scored(folder, metrics, len(filenames),
                         f"the {FLAGS.split} split of {FLAGS.data_dir}")
            unknown = set(reference) - set(metrics["class_names"])
            if unknown:
                raise ValueError(f"--reference_recall: {sorted(unknown)[0]!r} is not a class "
                                 f"of {folder}")
        group_of_image = groups_of_files(groups, filenames)
        names, sizes, errors = group_counts(group_of_image,
                                            [wrong for _, wrong in evaluations], filenames)
        draws = cluster_bootstrap(sizes, errors, FLAGS.resamples, FLAGS.seed)
        summary = report(FLAGS.eval_dirs, [metrics for metrics, _ in evaluations], sizes,
                         errors, draws, reference, names, FLAGS.shared_failure)
        if not FLAGS.worst_groups:
            return summary
        first_wrong = evaluations[0][1]
        order, lines = worst_groups(names, sizes, errors[0], group_of_image, first_wrong,
                                    filenames, FLAGS.worst_groups)
        summary += (f"\n{FLAGS.eval_dirs[0]}: the {len(order)} groups with most errors\n"
                    + "\n".join(lines))
        if FLAGS.contact_sheet:
            images = reader.make_dataset(converted.split_info(FLAGS.data_dir, FLAGS.split).files,
                                         channels=3, deterministic=True)
            wanted = images_by_group({names[g] for g in order}, group_of_image,
                                     images.as_numpy_iterator(),
                                     [name in first_wrong for name in filenames])
            sheet = contact_sheet([(f"{names[g]}\n{int(errors[0][g])} of {int(sizes[g])} wrong",
                                    wanted[names[g]]) for g in order])
            with written_atomically(FLAGS.contact_sheet) as tmp:
                sheet.save(tmp, format="PNG")
            summary += f"\ncontact sheet of those groups: {FLAGS.contact_sheet}"
        return summary

    cli.print_summary_or_exit(PROGRAM, run)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
