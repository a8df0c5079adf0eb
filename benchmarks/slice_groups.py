"""Groups of neighbouring slices for a dataset without patient IDs, as a --groups_csv.

  python benchmarks/slice_groups.py --dataset_dir=DIR --output_csv=groups.csv
  python tf_convert_data.py --dataset_dir=DIR --output_dir=OUT --need_split=tt_split \\
      --groups_csv=groups.csv

Why: a split drawn image by image from slices of the same scans puts a slice in the test split
and its neighbour, nearly the same picture, in the training split, so the test score measures
recall of seen scans. DICOM files carry their patient and the converter groups by it; PNG or
JPEG exports (MedMNIST, MedNIST) carry nothing. Neighbouring slices of one organ in one scan
are each other's nearest pictures, so they can be found again and kept on one side of a split.

How: within each class (and each given split of a predefined layout), every image, shrunk to at
most 32x32 grey, is linked to its nearest image of the class, and to each of its --neighbours
nearest that has it among its own --neighbours nearest too, when their root-mean-square
difference is under --max_distance (grey levels 0-1). Linked images form one group, named
`<class>-<n>`. The single nearest link means no image is left alone: an odd slice joins the
run it is closest to, which errs towards larger groups (less leakage, lumpier splits).
Defaults: on OrganAMNIST's 16-scan validation split they find 16 liver groups, 17 spleen and
20 and 25 kidney groups (benchmarks/RESULTS.md section 22).

What it cannot do: a scan's different organs are different classes, so they fall in different
groups and can land on both sides of a split; the test side then still shares scanner, contrast
phase and patient with the training side, and its score is still somewhat optimistic. Classes
whose images look alike across patients (femur crops) merge into a few large groups.

Cost: all pairs within a class, in blocks (memory ~ block x class size): seconds for
OrganAMNIST's 6,164 livers, about n^2 x 1,000 multiply-adds for a class of n.
Last line: "wrote N rows (G groups) to CSV" so scripts can collect it.
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402

from dataset import sources  # noqa: E402
from official.utils import cli  # noqa: E402

PROGRAM = "slice_groups.py"
SIDE = 32  # images are compared at most this size: enough to tell slices apart, and cheap
BLOCK = 2048  # rows of the distance matrix held at once

FLAGS = cli.program_flags()
flags.DEFINE_string("dataset_dir", None, "Dataset folder, as tf_convert_data.py reads it "
                    "(images/ + labels/, class folders, or predefined splits).",
                    flag_values=FLAGS)
flags.DEFINE_string("output_csv", None, "CSV to write ('file,group' rows, file relative to "
                    "--dataset_dir); its folder must exist.", flag_values=FLAGS)
flags.DEFINE_integer("neighbours", 5, "Nearest images each image may link to, when the link "
                     "is mutual.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_float("max_distance", 0.15, "Largest root-mean-square grey difference (0-1) of a "
                   "mutual link.", lower_bound=0.0, flag_values=FLAGS)
flags.mark_flags_as_required(["dataset_dir", "output_csv"], flag_values=FLAGS)
parse_flags = cli.flags_parser(PROGRAM, FLAGS, doc=__doc__)


def nearest(images: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest other images of each of `images` [n, pixels] (grey 0-1), nearest first.

    Returns (indices [n, k'], root-mean-square distances [n, k']), k' = min(k, n - 1).
    """
    n, pixels = images.shape
    k = min(k, n - 1)
    flat = images.astype(np.float32)
    squares = np.einsum("np,np->n", flat, flat)
    indices = np.zeros((n, k), np.int64)
    distances = np.zeros((n, k), np.float32)
    for start in range(0, n, BLOCK):
        rows = slice(start, min(start + BLOCK, n))
        block = squares[rows, None] + squares[None] - 2 * flat[rows] @ flat.T
        block[np.arange(rows.stop - start), np.arange(start, rows.stop)] = np.inf  # not itself
        # k <= n - 1 and the diagonal is infinite, so an image is never its own neighbour.
        part = np.argpartition(block, k - 1, axis=1)[:, :k]
        chosen = np.take_along_axis(block, part, axis=1)
        order = np.argsort(chosen, axis=1, kind="stable")
        indices[rows] = np.take_along_axis(part, order, axis=1)
        distances[rows] = np.sqrt(np.maximum(np.take_along_axis(chosen, order, axis=1), 0)
                                  / pixels)
    return indices, distances


def slice_groups(images: np.ndarray, neighbours: int, max_distance: float) -> np.ndarray:
    """A group number per image [n], 0.. in order of first appearance: connected runs of
    mutually near images (see the doc)."""
    n = len(images)
    if n < 2:
        return np.zeros(n, np.int64)
    indices, distances = nearest(images.reshape(n, -1), neighbours)
    near = {(i, int(j)) for i, row in enumerate(indices)
            for j, distance in zip(row, distances[i]) if distance < max_distance}
    links = [(i, j) for i, j in near if (j, i) in near]  # mutual near neighbours
    links += [(i, int(indices[i, 0])) for i in range(n)]  # and each image's nearest, always
    parent = list(range(n))  # union-find over the links

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in links:
        parent[root(i)] = root(j)
    roots = [root(i) for i in range(n)]
    numbers: dict[int, int] = {}
    return np.array([numbers.setdefault(r, len(numbers)) for r in roots], np.int64)


def load_grey(path: str) -> np.ndarray:
    """One JPEG/PNG as grey 0-1, squeezed to SIDE x SIDE when larger (no padding: slices of
    one series share their size, so squeezing them alike keeps them alike)."""
    try:
        with Image.open(path) as image:
            grey = image.convert("L")
            if max(grey.size) > SIDE:
                grey = grey.resize((SIDE, SIDE), Image.BILINEAR)
            return np.asarray(grey, np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"{path}: cannot read the image ({error})") from None


def group_dataset(dataset_dir: str, neighbours: int, max_distance: float
                  ) -> tuple[list[tuple[str, str]], list[str]]:
    """Rows (relpath, group) for every image of the dataset, and a report line per class."""
    discovery = sources.discover(dataset_dir)
    fatal = [problem for problem in discovery.problems if problem.fatal]
    if fatal:
        raise ValueError(f"{dataset_dir}: {fatal[0].path}: {fatal[0].reason}")
    dicoms = [item.relpath for item in discovery.files if item.kind == "dicom"]
    if dicoms:
        raise ValueError(f"{os.path.join(dataset_dir, dicoms[0])}: a DICOM file; the converter "
                         "groups DICOMs by their patient already (slice groups are for "
                         "JPEG/PNG exports)")
    by_class: dict[tuple[str, str], list] = {}
    for item in discovery.files:
        by_class.setdefault((item.split or "", item.label or ""), []).append(item)
    rows, lines = [], []
    for (split, label), items in sorted(by_class.items()):
        images = [load_grey(item.path) for item in items]
        shapes = {image.shape for image in images}
        if len(shapes) > 1:
            raise ValueError(f"{dataset_dir}: class {label!r} mixes image sizes {sorted(shapes)} "
                             f"under {SIDE}x{SIDE}; slice groups need one size per class")
        groups = slice_groups(np.stack(images), neighbours, max_distance)
        prefix = f"{split}-{label}" if split else label
        rows.extend((item.relpath, f"{prefix}-{group}") for item, group in zip(items, groups))
        sizes = np.bincount(groups)
        lines.append(f"{prefix:<24} {len(items):7d} {len(sizes):7d} {np.median(sizes):8.0f} "
                     f"{sizes.max() / len(items):8.2f}")
    if not rows:
        raise ValueError(f"{dataset_dir}: no images found")
    return rows, lines


def write_csv(path: str, rows: list[tuple[str, str]]) -> None:
    """Writes the CSV whole or not at all (a temporary file renamed into place)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{path}: its folder {folder} does not exist")
    handle, temporary = tempfile.mkstemp(dir=folder, suffix=".csv.tmp")
    try:
        with os.fdopen(handle, "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(["file", "group"])
            writer.writerows(rows)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def main(argv: list[str]) -> None:
    del argv  # no positional arguments (parse_flags checked)

    def run() -> str:
        rows, lines = group_dataset(FLAGS.dataset_dir, FLAGS.neighbours, FLAGS.max_distance)
        write_csv(FLAGS.output_csv, rows)
        header = f"{'class':<24} {'images':>7} {'groups':>7} {'median':>8} {'largest':>8}"
        groups = len({group for _, group in rows})
        return "\n".join([header, *lines,
                          f"wrote {len(rows)} rows ({groups} groups) to {FLAGS.output_csv}"])

    cli.print_summary_or_exit(PROGRAM, run)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
