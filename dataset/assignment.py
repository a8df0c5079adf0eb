"""Which class, group and split each file of a conversion gets (the validation pass's
decisions; library of dataset.convert): labels from label files, folders or DICOM tags,
groups (a DICOM patient, a --groups_csv row, else the file stem) and seeded splits, with
the problems and warnings found on the way.
"""

from __future__ import annotations

import collections
import os

from dataset import sources, splits
from dataset.body_parts import (canonical_body_part, class_name, normalize_body_part,
                                 not_anatomy)
from dataset.conversion_plan import Plan
from dataset.folder_walk import split_suffix
from dataset.tasks import FileTask


def assign(config, discovery, headers, problems) -> Plan:
    """Labels, groups and splits for every usable file; appends problems found.

    Args:
      config: the ``dataset.convert.ConvertConfig``.
      discovery: ``dataset.sources.discover``'s result.
      headers: the DICOM headers read (``values``: relpath -> (body part, patient key,
        modality); ``errors``: relpaths whose header could not be read).
      problems: found so far; appended to, and returned in the Plan.
    """
    files = [f for f in discovery.files if f.relpath not in headers.errors]
    raw_labels = [f.label for f in files if f.label is not None]
    named_by_label_files = bool(raw_labels)
    if config.label_source == "tag" and not raw_labels:  # classes: the defined terms seen
        # (a value that is no body part names no class: its files could never be in it)
        raw_labels = [class_name(term) for h in headers.values.values()
                      if h[0] and (term := canonical_body_part(h[0]))]
    names, canonical, variants = sources.canonical_classes(raw_labels)
    labelled, agreement = [], collections.defaultdict(collections.Counter)
    for item in files:
        label = canonical.get(item.label.casefold()) if item.label is not None else None
        body_part, patient, modality = headers.values.get(item.relpath, (None, None, None))
        tag_class = (normalize_body_part(body_part, names, modality=modality)
                     if body_part else None)
        if label is not None and body_part:
            agreement[label][tag_class or f"unmatched: {body_part}"] += 1
        if config.label_source == "tag" and item.kind == "dicom":
            if tag_class is None:
                # An object that is no image (a SEG mask, a dose grid) usually has no body
                # part either; what it is says more than that the tag is missing.
                reason = (not_anatomy(modality) or _no_class_reason(body_part, modality, names))
                problems.append(sources.Problem(item.relpath, reason))
                continue
            label = tag_class
        labelled.append((item, label, patient))
    left_out = _classes_no_tag_gave(config, names, labelled, named_by_label_files)
    names = [name for name in names if name not in left_out]
    groups_csv = sources.read_groups_csv(config.groups_csv) if config.groups_csv else {}
    problems.extend(sources.unmatched_group_rows(config.groups_csv, groups_csv, discovery))
    total = len(labelled)
    try:
        fractions = splits.split_fractions(config.need_split, config.validation_size,
                                           config.test_size, total)
    except ValueError as error:
        problems.append(sources.Problem("--need_split", str(error), fatal=True))
        fractions = {}
    group_of = _groups(labelled, groups_csv)
    tasks, files_by_class = [], collections.defaultdict(dict)
    for item, label, _ in labelled:
        group = group_of[item.relpath]
        files_by_class[label][item.relpath] = group
        if config.need_split == "predefined":
            split = item.split
        elif config.need_split == "None":
            split = config.output_name
        else:
            split = splits.assign_split(config.seed, group, fractions)
        tasks.append(FileTask(item.path, item.relpath, item.kind, names.index(label), label,
                              split, splits.order_key(config.seed, item.relpath)))
    num_splits = len(fractions) + 1 if fractions else 0
    rare = _rare_classes(labelled)
    if num_splits:
        problems.extend(sources.Problem("--need_split", message, fatal=True) for message in
                        splits.small_classes(files_by_class, num_splits, notes=rare))
    agreement = {label: dict(sorted(row.items())) for label, row in sorted(agreement.items())}
    groups = {relpath: group for files in files_by_class.values()
              for relpath, group in files.items()}
    notes = [f"class {name!r} has {note}" for name, note in rare.items()]
    notes += [f"class {name!r} is named by label files, but no file's BodyPartExamined maps "
              "to it: left out of the classes (--label_source=tag)" for name in left_out]
    if num_splits:
        notes += splits.subfolder_note(discovery.layout, groups)
    if config.need_split == "predefined":
        notes += _groups_across_given_splits(tasks, groups)
    return Plan(names, variants, tasks, agreement, problems, groups, num_splits, notes)


def _groups(labelled, groups_csv: dict[str, str]) -> dict[str, str]:
    """{relpath: group}: files linked by a --groups_csv group or by a DICOM patient share one
    group (a CSV of studies keeps a patient's studies together; a file missing from the CSV
    stays with its patient's other files); a file with neither is grouped by its stem.

    A group is named by the least of its keys, so a group that gains files keeps its name
    (and split) unless the new files join it to another group.
    """
    keys = {}  # relpath -> the file's keys
    for item, _, patient in labelled:
        csv_group = sources.csv_group(groups_csv, item.relpath)
        keys[item.relpath] = [key for key in (csv_group and f"csv:{csv_group}",
                                              patient and f"patient:{patient}") if key] or [
            f"stem:{split_suffix(os.path.basename(item.relpath))[0]}"]
    parent = {}

    def root(key: str) -> str:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for first, *others in keys.values():
        for other in others:
            a, b = root(first), root(other)
            parent[max(a, b)] = min(a, b)  # the root is always its group's least key
    return {relpath: root(file_keys[0]) for relpath, file_keys in keys.items()}


def _groups_across_given_splits(tasks, groups: dict[str, str]) -> list[str]:
    """A warning when a predefined layout puts one group (a --groups_csv group, a DICOM
    patient) in more than one given split: the split is kept as given, but an evaluation on
    it then scores patients the model was trained on."""
    splits_of = collections.defaultdict(dict)  # group -> {split: first file}
    for task in sorted(tasks, key=lambda task: task.relpath):
        if not groups[task.relpath].startswith("stem:"):  # a file name says nothing of this
            splits_of[groups[task.relpath]].setdefault(task.split, task.relpath)
    spanning = [files for files in splits_of.values() if len(files) > 1]
    if not spanning:
        return []
    example = " and ".join(spanning[0].values())
    return [f"{len(spanning)} group(s) (a --groups_csv group or a DICOM patient) lie in more "
            f"than one of the given splits (e.g. {example}); the predefined split is kept as "
            "given, so its evaluation scores groups the model trained on"]


def _no_class_reason(body_part, modality, names) -> str:
    """Why a DICOM file's tag gives it no class (--label_source=tag)."""
    if not body_part:
        return "no BodyPartExamined tag (--label_source=tag)"
    by_name = normalize_body_part(body_part, names)  # the modality set aside
    if by_name is not None and modality:
        return (f"BodyPartExamined {body_part!r} matches {by_name!r}, a class of another "
                f"modality than this {modality} image")
    return f"BodyPartExamined {body_part!r} matches no class"


def _classes_no_tag_gave(config, names, labelled, named_by_label_files: bool) -> list[str]:
    """With --label_source=tag the label files only name the classes; one that no file's tag
    (or, for a JPEG or PNG, label) gave would be a model output no image ever trained (it
    was kept with 0 examples, e.g. when --on_error=skip dropped its untagged files). Without
    label files the tags seen name the classes, so none is left out."""
    if config.label_source != "tag" or not named_by_label_files:
        return []
    given = {label for _, label, _ in labelled}
    return [name for name in names if name not in given]


# A class this small beside one this many times larger is more likely a misspelt label than a
# class: said (a warning, or beside a split's error), never refused (there is no list of
# known classes to check against).
RARE_CLASS_FILES = 3
RARE_CLASS_RATIO = 50


def _rare_classes(labelled) -> dict[str, str]:
    """{class: note} for the classes with very few files beside a large one, naming the
    label files (or the images, where the label is a folder's or a tag's name)."""
    by_class = collections.defaultdict(list)
    for item, label, _ in labelled:
        by_class[label].append(item.label_file or item.relpath)
    largest = max((len(files) for files in by_class.values()), default=0)
    notes = {}
    for name, files in sorted(by_class.items()):
        if len(files) <= RARE_CLASS_FILES and len(files) * RARE_CLASS_RATIO <= largest:
            notes[name] = (f"only {len(files)} file(s) against {largest} in the largest: a "
                           f"misspelt label? ({', '.join(sorted(files))})")
    return notes
