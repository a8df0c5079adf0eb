"""Seeded, grouped, stable train/validation/test assignment.

Scheme: every group (a user-given group, else a DICOM patient, else the file stem;
``dataset.assignment``) gets a uniform number ``u = H(seed, group)``
in [0, 1) from SHA-256, and lands in ``test`` if ``u < test_fraction``, in ``validation`` if
``u < test_fraction + validation_fraction``, else in ``train``.

Why this scheme:

* Stable by construction: a group's split depends only on the seed, its own
  name and the fractions, so rerunning gives the same assignment and adding
  files never moves an existing file (unless sizes were given as counts: a
  count is turned into a fraction of the total, which changes as files are
  added; give fractions for datasets that grow; or a new --groups_csv row gives a
  DICOM patient a lesser group, which the patient's files without a row then join).
* Grouped: all files of a group share ``u``, so no group spans two splits.
* Stratified in expectation: ``u`` is independent of the class, so every class
  is split with the same fractions on average. The trade-off: per-class counts
  are binomial rather than exact (standard deviation ``sqrt(n p (1-p))`` groups,
  e.g. +-7 for 500 groups at 10%). Exact per-class counts need a ranking of
  the groups within each class, and a new group would then shift the rank
  boundary and move existing groups; stability was judged more important for
  a dataset that grows (a radiology archive), so exactness is the cost. The
  summary table shows the realised counts.

Records within a split are ordered by ``H(seed, relative path)``, a fixed
pseudo-random order that mixes classes in every shard.
"""

from __future__ import annotations

import hashlib
import math

SPLIT_MODES = ("None", "tt_split", "tvt_split", "predefined")
SPLIT_NAMES = ("train", "validation", "test")


def unit_hash(seed: int, key: str) -> float:
    """A uniform number in [0, 1) fixed by ``seed`` and ``key``."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def order_key(seed: int, relpath: str) -> bytes:
    """Sort key giving the seeded pseudo-random record order within a split."""
    return hashlib.sha256(f"order\x00{seed}\x00{relpath}".encode("utf-8")).digest()[:16]


def resolve_size(value: float, total: int, flag: str) -> float:
    """A split size flag as a fraction of ``total``: counts if >= 1, fractions if < 1.

    Raises:
      ValueError: not a finite number, negative, a non-integer count, or a count larger
        than ``total``.
    """
    if not math.isfinite(value):
        raise ValueError(f"{flag} must be a fraction < 1 or a count >= 1; got {value}")
    if value < 0:
        raise ValueError(f"{flag} must be >= 0 (a fraction < 1 or a count >= 1); got {value}")
    if value < 1:
        return float(value)
    if value != int(value):
        raise ValueError(f"{flag}={value}: a size >= 1 is a count and must be a whole number")
    return float(value) / total if total else 1.0


def split_fractions(need_split: str, validation_size: float, test_size: float,
                    total: int) -> dict[str, float]:
    """The fractions of ``validation`` and ``test`` for ``need_split``.

    Raises:
      ValueError: unknown mode, or sizes that leave nothing for train.
    """
    if need_split not in SPLIT_MODES:
        raise ValueError(f"--need_split must be one of {', '.join(SPLIT_MODES)}; "
                         f"got {need_split!r}")
    if need_split not in ("tt_split", "tvt_split"):
        return {}
    fractions = {"test": resolve_size(test_size, total, "--test_size")}
    if need_split == "tvt_split":
        fractions["validation"] = resolve_size(validation_size, total, "--validation_size")
    for split, fraction in fractions.items():
        if fraction <= 0:
            flag = f"--{split}_size"
            raise ValueError(f"{flag} must be > 0 for --need_split={need_split}")
    if sum(fractions.values()) >= 1:
        # As the user gave each size (a fraction or a count), with the inputs it stands for.
        given = {"test": test_size, "validation": validation_size}
        sizes = " + ".join(f"--{split}_size={given[split]:g} ({fraction * total:.0f})"
                           for split, fraction in fractions.items())
        raise ValueError(f"--validation_size/--test_size don't fit: {sizes} of {total} "
                         "inputs leave nothing for train")
    return fractions


def assign_split(seed: int, group: str, fractions: dict[str, float]) -> str:
    """The split of ``group`` for fractions from :func:`split_fractions`."""
    u = unit_hash(seed, group)
    test = fractions.get("test", 0.0)
    if u < test:
        return "test"
    if u < test + fractions.get("validation", 0.0):
        return "validation"
    return "train"


def small_classes(files_by_class: dict[str, dict[str, str]], num_splits: int,
                  notes: dict[str, str] | None = None) -> list[str]:
    """One message per class with fewer groups than splits (cannot appear in each),
    naming its first files.

    Args:
      files_by_class: class name -> {relative path: group}.
      notes: class name -> what else to say of it (e.g. a likely misspelt label).
    """
    messages = []
    for name, groups in sorted(files_by_class.items()):
        count = len(set(groups.values()))
        if count < num_splits:
            files = sorted(groups)
            listed = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if files[3:] else "")
            messages.append(f"class {name!r} has {count} group(s), fewer than the {num_splits} "
                            "splits requested" + (f" ({listed})" if files else "")
                            + (f"; it has {notes[name]}" if name in (notes or {}) else ""))
    return messages


# Folders above a file that the layout gives a meaning (images/, a class, a split and a class).
LAYOUT_DEPTH = {"images_labels": 1, "class_folders": 1, "predefined": 2}


def subfolder_note(layout: str, groups: dict[str, str]) -> list[str]:
    """A warning when files grouped by their stem lie in subfolders the layout does not name
    (images/patient7/slice3.png): such a folder is often a patient or a study, and grouping by
    stem puts its files in different splits (and the same slice name of every folder in one)."""
    depth = LAYOUT_DEPTH.get(layout, 1)
    nested = sorted(relpath for relpath, group in groups.items()
                    if group.startswith("stem:") and relpath.count("/") > depth)
    if not nested:
        return []
    return [f"{len(nested)} file(s) lie in subfolders (e.g. {nested[0]}) and are grouped by "
            "their file stem, not their folder, so one folder's files can be in different "
            "splits; if a folder is a patient or a study, give it as their group with "
            "--groups_csv ('file,group' rows)"]
