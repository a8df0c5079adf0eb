"""Which class, group and split each file of a conversion gets (the validation pass's
decisions; library of dataset.convert): labels from label files, folders or DICOM tags,
groups (a DICOM patient, a --groups_csv row, else the file stem) and seeded splits, with
the problems and warnings found on the way.
"""

from __future__ import annotations

import collections
import os

from dataset import duplicates, sources, splits
from dataset.body_parts import (canonical_body_part, class_name, normalize_body_part,
                                 not_anatomy)
from dataset.conversion_plan import Plan
from dataset.folder_walk import split_suffix
from dataset.groups_csv import csv_group, row_problems, unmatched_group_rows
from dataset.tasks import FileTask


def assign(config, discovery, headers, problems, identical=(), groups_rows=({}, [])) -> Plan:
    """Labels, groups and splits for every usable file; appends problems found.

    Args:
      config: the ``dataset.convert.ConvertConfig``.
      discovery: ``dataset.sources.discover``'s result.
      headers: the DICOM headers read (``values``: relpath -> (body part, patient key,
        modality); ``errors``: relpaths whose header could not be read).
      problems: found so far; appended to, and returned in the Plan.
      identical: sets of relpaths that are copies of one image (``dataset.duplicates``):
        each set is kept in one split, unless it is a placeholder (in many groups).
      groups_rows: ``dataset.groups_csv.read_groups_rows(config.groups_csv)``: its bad rows
        become problems here, listed with the rest.
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
    groups_csv, bad_rows = groups_rows
    problems.extend(row_problems(config.groups_csv, bad_rows))
    problems.extend(unmatched_group_rows(config.groups_csv, groups_csv, discovery))
    total = len(labelled)
    try:
        fractions = splits.split_fractions(config.need_split, config.validation_size,
                                           config.test_size, total)
    except ValueError as error:
        problems.append(sources.Problem("--need_split", str(error), fatal=True))
        fractions = {}
    label_of = {item.relpath: label for item, label, _ in labelled}
    identical = [same for same in ([r for r in same if r in label_of] for same in identical)
                 if len(same) > 1]
    base_groups = _groups(labelled, groups_csv)
    copies, placeholders = duplicates.copies_and_placeholders(identical, base_groups)
    # Copies' groups joined (into their least), so that no image is both trained on and
    # scored; not in a predefined layout, whose splits are given (a joined group there would
    # be warned of as a --groups_csv group across splits that the CSV never made).
    group_of = (base_groups if config.need_split == "predefined"
                else duplicates.join_groups(base_groups, identical))
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
    if config.need_split != "None":
        notes += _across_splits(tasks, groups, {item.relpath: patient
                                                for item, _, patient in labelled},
                                predefined=config.need_split == "predefined")
    notes += _identical_notes(copies, placeholders, label_of,
                              {task.relpath: task.split for task in tasks}, config.need_split)
    return Plan(names, variants, tasks, agreement, problems, groups, num_splits, notes)


def _groups(labelled, groups_csv: dict[str, str]) -> dict[str, str]:
    """{relpath: group}: a --groups_csv row decides its file's group (the user's word: it is
    also the way out when every file carries one placeholder PatientID); a file without a row
    goes with its DICOM patient's files that have one (their least group: it was the patient's
    own group, and could land in another split than the rest of that patient), else with its
    patient, else its file stem."""
    csv_groups = {item.relpath: csv_group(groups_csv, item.relpath)
                  for item, _, _ in labelled}
    patient_group = {}  # patient -> the least CSV group among its files
    for item, _, patient in labelled:
        if patient and (row_group := csv_groups[item.relpath]):
            patient_group[patient] = min(patient_group.get(patient, f"csv:{row_group}"),
                                         f"csv:{row_group}")
    groups = {}
    for item, _, patient in labelled:
        if row_group := csv_groups[item.relpath]:
            groups[item.relpath] = f"csv:{row_group}"
        elif patient:
            groups[item.relpath] = patient_group.get(patient, f"patient:{patient}")
        else:
            groups[item.relpath] = f"stem:{split_suffix(os.path.basename(item.relpath))[0]}"
    return groups


def _identical_notes(copies: list[list[str]], placeholders: list[list[str]],
                     label_of: dict[str, str], split_of: dict[str, str], need_split: str
                     ) -> list[str]:
    """Warnings about copies of one image (``dataset.duplicates``): labelled differently
    (whatever the split), in more than one given split (predefined), kept together by a drawn
    split, or left apart as placeholders."""
    notes = []
    every = copies + placeholders
    conflicting = [same for same in every if len({label_of[r] for r in same}) > 1]
    if conflicting:
        example = ", ".join(f"{r} ({label_of[r]})" for r in conflicting[0][:4])
        notes.append(f"{len(conflicting)} image(s) have copies (the same bytes, or DICOM pixel "
                     f"data) with different labels (e.g. {example}): one image taught as two "
                     "classes; check their labels")
    if need_split == "predefined":
        spanning = [same for same in every if len({split_of[r] for r in same}) > 1]
        if spanning:
            first = {split_of[r]: r for r in reversed(spanning[0])}  # one file per split
            example = " and ".join(f"{r} ({split})" for split, r in sorted(first.items()))
            notes.append(f"{len(spanning)} image(s) have copies in more than one of the given "
                         f"splits (e.g. {example}); the predefined split is kept as given, so "
                         "its evaluation scores images the model trained on")
    elif need_split != "None":
        if copies:
            notes.append(f"{sum(len(same) - 1 for same in copies)} file(s) are copies of "
                         "another's image (the same bytes, or DICOM pixel data; e.g. "
                         f"{_two_of(copies)}): each set is kept in one split")
        if placeholders:
            notes.append(f"{len(placeholders)} image(s) recur in more than "
                         f"{duplicates.MAX_GROUPS_JOINED} groups each (e.g. "
                         f"{_two_of(placeholders)}): a blank or placeholder image? Its copies "
                         "stay in their groups' splits")
    return notes


def _two_of(sets: list[list[str]]) -> str:
    """Two files of the largest set, and its size when larger."""
    largest = max(sets, key=len)
    return " and ".join(largest[:2]) + (f", one of {len(largest)} alike"
                                        if len(largest) > 2 else "")


def _across_splits(tasks, groups: dict[str, str], patients: dict[str, str | None],
                   predefined: bool) -> list[str]:
    """A warning when one DICOM patient (or, in a predefined layout, one --groups_csv group)
    has files in more than one split: an evaluation on one of them then scores a patient the
    model trained on. Split by groups, that happens only where a --groups_csv puts one
    patient's files in several groups (a CSV of studies), which is right only when the
    PatientID is a placeholder shared by different people."""
    splits_of = collections.defaultdict(dict)  # patient or group -> {split: first file}
    for task in sorted(tasks, key=lambda task: task.relpath):
        keys = [f"patient:{patients[task.relpath]}"] if patients[task.relpath] else []
        if predefined and groups[task.relpath].startswith("csv:"):  # (a file name says
            keys.append(groups[task.relpath])  # nothing of this)
        for key in keys:
            splits_of[key].setdefault(task.split, task.relpath)
    spanning = [files for files in splits_of.values() if len(files) > 1]
    if not spanning:
        return []
    example = " and ".join(f"{relpath} ({split})" for split, relpath in spanning[0].items())
    if predefined:
        return [f"{len(spanning)} DICOM patient(s) or --groups_csv group(s) lie in more than "
                f"one of the given splits (e.g. {example}); the predefined split is kept as "
                "given, so its evaluation scores patients the model trained on"]
    return [f"{len(spanning)} DICOM patient(s) lie in more than one split (e.g. {example}): "
            "--groups_csv puts their files in different groups, and its groups decide; unless "
            "their PatientID is a placeholder shared by different people, give the CSV one "
            "group per patient, or an evaluation scores patients the model trained on"]


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
