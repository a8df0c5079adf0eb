"""Which images of a converted dataset look mirrored: scans stored the other way round.

  python benchmarks/mirror_audit.py --data_dir=runs/organ/data --reference_split=validation \\
      --splits=train,validation [--axis=columns]

Why: image datasets without orientation metadata (PNG exports such as MedMNIST) can hold scans
written with one image axis reversed, and a split drawn from fewer scans may hold none. In
OrganAMNIST about a fifth of the training images of the organs whose crops are asymmetric are
mirrored front to back against the validation split, which holds almost none
(benchmarks/RESULTS.md section 21): a validation score then says nothing about such scans,
and a model trained without the matching flip may lean on the orientation.

How: each class's mean image over --reference_split is the orientation called "stored". Each
image is compared (Pearson correlation) with that mean and with the mean mirrored along
--axis; an image whose correlation with the mirrored mean is higher by more than 0.1 counts as
mirrored, lower by more than 0.1 as stored, otherwise undecided. A class whose mean is nearly its
own mirror image (symmetry above 0.75: heart, bladder, kidneys in OrganAMNIST) cannot be told
apart this way: it is listed and left out of the summary. Only a mirror of the whole scan is
meant: use it on the axis that keeps labels true (--axis=columns in OrganAMNIST; see
stress_eval.py --preset=orientation for which axis carries left and right).

Last line: "mirrored share over the asymmetric classes: SPLIT X, ..." so scripts can collect it.
"""

from __future__ import annotations

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from official.utils import cli  # noqa: E402

PROGRAM = "mirror_audit.py"
MARGIN = 0.1  # correlation margin for "mirrored" / "stored"; between them, undecided
MAX_SYMMETRY = 0.75  # a class mean this close to its mirror image tells nothing
AXES = {"columns": 2, "rows": 1}  # mirror across ...: reverses the image's width / height axis

FLAGS = cli.program_flags()
flags.DEFINE_string("data_dir", None, "Folder written by tf_convert_data.py.", flag_values=FLAGS)
flags.DEFINE_string("reference_split", "validation", "Split whose class means define the "
                    "stored orientation.", flag_values=FLAGS)
flags.DEFINE_list("splits", ["train", "validation"], "Splits to audit, comma-separated.",
                  flag_values=FLAGS)
flags.DEFINE_enum("axis", "columns", list(AXES), "Mirror that reverses the columns (a "
                  "left-right flip of the picture) or the rows (up-down).", flag_values=FLAGS)
flags.mark_flags_as_required(["data_dir"], flag_values=FLAGS)
parse_flags = cli.flags_parser(PROGRAM, FLAGS, doc=__doc__)


def _standardised(images: np.ndarray) -> np.ndarray:
    """Each image flattened to zero mean and unit norm, so a dot product is a correlation."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    flat -= flat.mean(axis=1, keepdims=True)
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-9)


def class_means(images: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean image of each class [num_classes, H, W, C] (zeros for an absent class)."""
    means = np.zeros((num_classes,) + images.shape[1:])
    for label in range(num_classes):
        if np.any(labels == label):
            means[label] = images[labels == label].mean(axis=0)
    return means


def mirror_margins(images: np.ndarray, labels: np.ndarray, means: np.ndarray,
                   axis: int) -> np.ndarray:
    """Per image: correlation with its class's mean minus correlation with that mean mirrored
    along `axis` (1: rows reversed, 2: columns reversed); negative: looks mirrored."""
    stored = _standardised(means)
    mirrored = _standardised(np.flip(means, axis=axis))
    flat = _standardised(images)
    return (np.einsum("np,np->n", flat, stored[labels])
            - np.einsum("np,np->n", flat, mirrored[labels]))


def symmetry(means: np.ndarray, axis: int) -> np.ndarray:
    """Correlation of each class mean with its own mirror image (1: symmetric)."""
    return np.einsum("np,np->n", _standardised(means),
                     _standardised(np.flip(means, axis=axis)))


def report(data_dir: str, axis_name: str, reference: str, class_names: list[str],
           class_symmetry: np.ndarray, audited: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """The table (share mirrored / stored per class and split) and the summary line."""
    splits = list(audited)
    lines = [f"{data_dir}: images matching their class's {reference} mean mirrored across "
             f"{axis_name} (margin {MARGIN}; classes with symmetry > {MAX_SYMMETRY} "
             "left out of the summary)",
             f"{'class':<16} {'symmetry':>8}" + "".join(
                 f"  {split + ' mirrored / stored (n)':>36}" for split in splits)]
    for label, name in enumerate(class_names):
        cells = []
        for margins, labels in audited.values():
            mine = margins[labels == label]
            cells.append(f"{np.mean(mine < -MARGIN):.3f} / {np.mean(mine > MARGIN):.3f} "
                         f"({len(mine)})" if len(mine) else "-")
        flag = "" if class_symmetry[label] <= MAX_SYMMETRY else "  (symmetric: left out)"
        lines.append(f"{name:<16} {class_symmetry[label]:8.2f}"
                     + "".join(f"  {cell:>36}" for cell in cells) + flag)
    asymmetric = np.flatnonzero(class_symmetry <= MAX_SYMMETRY)
    shares = []
    for split, (margins, labels) in audited.items():
        chosen = np.isin(labels, asymmetric)
        shares.append(f"{split} {np.mean(margins[chosen] < -MARGIN):.3f}"
                      if chosen.any() else f"{split} -")
    lines.append("mirrored share over the asymmetric classes: " + ", ".join(shares))
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv  # no positional arguments (parse_flags checked)
    from benchmarks import stress_eval_lib
    from dataset import converted

    def run() -> str:
        class_names = list(converted.split_info(FLAGS.data_dir, FLAGS.reference_split).class_names)
        axis = AXES[FLAGS.axis]
        # Each split is read once, the reference too when it is also audited.
        loaded = {split: stress_eval_lib.load_split(FLAGS.data_dir, split, 1)
                  for split in dict.fromkeys([FLAGS.reference_split, *FLAGS.splits])}
        means = class_means(*loaded[FLAGS.reference_split], len(class_names))
        audited = {split: (mirror_margins(*loaded[split], means, axis), loaded[split][1])
                   for split in FLAGS.splits}
        return report(FLAGS.data_dir, FLAGS.axis, FLAGS.reference_split, class_names,
                      symmetry(means, axis), audited)

    cli.print_summary_or_exit(PROGRAM, run)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
