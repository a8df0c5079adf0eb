"""Finds the input files of a dataset folder and reads their labels.

Three layouts (``--layout``; ``auto`` picks one from what is on disk):

* ``images_labels`` (the original): ``DIR/images/<stem>.<ext>`` with
  ``DIR/labels/<stem>.txt``; the label is its one non-empty line, stripped.
  Chosen by ``auto`` when ``DIR/images`` exists.
* ``predefined``: ``DIR/{train,val|validation,test}/<Class>/<file>``, a dataset
  that arrives split (e.g. by patient); the split is kept as given. Chosen by
  ``auto`` when every sub-folder is a split name and ``train`` is one of them.
* ``class_folders``: ``DIR/<Class>/<file>`` (MedNIST's public layout). When labels
  come from DICOM tags, DICOM files may also lie directly in ``DIR`` (a flat folder).

Class names match case-insensitively; the canonical spelling is the most
frequent one (ties: the alphabetically first), and the other spellings seen are
reported. Nothing here opens image pixels; problems are collected, not raised,
so the validation pass can list every one of them.
"""

from __future__ import annotations

import collections
import os
import re
import unicodedata
from dataclasses import dataclass, field

from dataset.folder_walk import file_kind, special_file, split_suffix, visible, visible_files

LAYOUTS = ("auto", "images_labels", "class_folders", "predefined")
SPLIT_FOLDERS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}


@dataclass(frozen=True)
class InputFile:
    path: str  # absolute
    relpath: str  # relative to the dataset folder, '/'-separated; stored as image/filename
    kind: str  # "image" (JPEG/PNG, sniffed later) or "dicom"
    label: str | None  # raw label text from the label file or class folder
    split: str | None = None  # given split for the predefined layout
    label_file: str | None = None  # relative path of its label file (images/ + labels/)


@dataclass(frozen=True)
class Problem:
    path: str  # relative file path, or a flag name for dataset-wide problems
    reason: str
    fatal: bool = False  # dataset-wide: --on_error=skip cannot skip it

    def line(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Discovery:
    layout: str
    files: list[InputFile] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


# Whitespace and the invisible characters (zero-width space/joiners, left-to-right and
# right-to-left marks, word joiner, BOM, soft hyphen) that text pasted from a web page or a
# word processor carries at its ends.
_INVISIBLE = "\u200b\u200c\u200d\u200e\u200f\u2060\ufeff\u00ad"
_LABEL_ENDS = re.compile(rf"^[\s{_INVISIBLE}]+|[\s{_INVISIBLE}]+$")


def clean_label(text: str) -> str:
    """A class name as a person reads it: Unicode NFC (macOS file names and some editors
    write "Å" as "A" + a combining ring, which compares unequal to the same name typed
    elsewhere: two classes that print alike) without whitespace or invisible characters at
    its ends."""
    return _LABEL_ENDS.sub("", unicodedata.normalize("NFC", text))


# Unicode's explicit direction embeddings, overrides and isolates (and the two marks).
_DIRECTION_CONTROLS = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                                "\u2066\u2067\u2068\u2069")


def refused_character(name: str) -> str | None:
    """The first character a class name (a label file's line, a class folder's name) may not
    hold, or None: a C0/C1 control (Unicode Cc) or a direction control.

    A NUL, an escape sequence or a direction override became a class name of its own, which
    prints like another (or rewrites the terminal) in the summary, labels.txt and reports.
    Joiners inside a name (Persian, Hindi and emoji text need them) are left alone."""
    return next(filter(_refused, name), None)


def escape_refused(text: str) -> str:
    """``text`` with each ``refused_character`` escaped (``\\x1b``, ``\\u202e``): a problem line
    naming a folder shows the character instead of acting on it (or breaking the line)."""
    return "".join(c.encode("unicode_escape").decode("ascii") if _refused(c) else c
                   for c in text)


def _refused(character: str) -> bool:
    return unicodedata.category(character) == "Cc" or character in _DIRECTION_CONTROLS


# A label file holds one class name. Anything larger is another file under a .txt name, and
# was read whole: 1 GB of it took 5 GB and ended in a MemoryError traceback.
LABEL_FILE_MAX_BYTES = 64 * 1024


def read_label_file(path: str) -> tuple[str | None, str | None]:
    """``(label, None)`` or ``(None, reason)`` for an empty, non-UTF-8, multi-line or
    oversized file, one that is not a regular file, or a name holding control characters."""
    if special_file(path):  # a pipe hung the run, a link to /dev/zero filled the memory
        return None, "label file is not a regular file (a pipe, socket or device)"
    try:
        with open(path, "rb") as handle:
            raw = handle.read(LABEL_FILE_MAX_BYTES + 1)
    except OSError as error:
        return None, f"cannot read label file: {error.strerror}"
    if len(raw) > LABEL_FILE_MAX_BYTES:
        return None, (f"label file is larger than {LABEL_FILE_MAX_BYTES // 1024} KB, expected "
                      "one class name")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None, "label file is not UTF-8"
    lines = [line for line in map(clean_label, text.splitlines()) if line]
    control = next(filter(None, map(refused_character, lines)), None)
    if control is not None:
        return None, (f"label file holds control character U+{ord(control):04X}"
                      + (" (UTF-16? label files are UTF-8)" if control == "\0" else ""))
    if len(lines) > 1:
        # Two class names (a multi-label note, or two files pasted together): taking the
        # first would silently label the image with what may be the wrong one.
        return None, f"label file has {len(lines)} non-empty lines, expected one class name"
    return (lines[0], None) if lines else (None, "empty label file")


def detect_layout(dataset_dir: str) -> str:
    if os.path.isdir(os.path.join(dataset_dir, "images")):
        return "images_labels"
    folders = [d for d in os.listdir(dataset_dir)
               if visible(d) and os.path.isdir(os.path.join(dataset_dir, d))]
    if folders and "train" in folders and all(d in SPLIT_FOLDERS for d in folders):
        return "predefined"
    return "class_folders"


def discover(dataset_dir: str, layout: str = "auto", *, need_labels: bool = True,
             dicom_force: bool = False) -> Discovery:
    """Lists the dataset's input files with their raw labels and all problems found.

    Args:
      need_labels: False when labels come from DICOM tags, so a DICOM file
        without a label file or class folder is not a problem.
      dicom_force: --dicom_force: a file without suffix is DICOM even without the preamble.

    Raises:
      ValueError: unknown layout, or ``dataset_dir`` is not a folder.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"--layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    if not os.path.isdir(dataset_dir):
        raise ValueError(f"--dataset_dir {dataset_dir!r} is not a folder")
    dataset_dir = os.path.abspath(dataset_dir)
    if layout == "auto":
        layout = detect_layout(dataset_dir)
    discovery = Discovery(layout)
    if layout == "images_labels":
        _discover_images_labels(dataset_dir, discovery, need_labels, dicom_force)
    elif layout == "class_folders":
        _discover_class_folders(dataset_dir, dataset_dir, None, discovery, need_labels,
                                dicom_force)
    else:
        _discover_predefined(dataset_dir, discovery, need_labels, dicom_force)
    _refuse_non_utf8_names(discovery)
    if not discovery.files and not discovery.problems:
        discovery.problems.append(Problem("--dataset_dir", f"no images found in {dataset_dir} "
                                          f"(layout {layout})", fatal=True))
    return discovery


def _refuse_non_utf8_names(discovery: Discovery) -> None:
    """Makes a file whose name is not UTF-8 a problem (skip-able), and escapes such names
    (``x\\xe9.jpg``) in every problem line.

    Python gives such a name surrogate characters, which UTF-8 text cannot hold. The name
    is stored in every record (image/filename) and in the manifest as UTF-8 text, where it
    must name the file on disk; an escaped or lossy spelling would not, so the file is
    refused (renaming it fixes that) rather than stored under a name that is not its own.
    """
    kept = []
    for item in discovery.files:
        if is_utf8(item.relpath):
            kept.append(item)
        else:
            discovery.problems.append(Problem(item.relpath, "file name is not valid UTF-8 "
                                              "(image/filename stores it as UTF-8 text)"))
    discovery.files = kept
    discovery.problems = [
        p if is_utf8(p.path + p.reason)
        else Problem(escape_non_utf8(p.path), escape_non_utf8(p.reason), p.fatal)
        for p in discovery.problems]


def is_utf8(text: str) -> bool:
    """True unless ``text`` holds the surrogates Python gives a name that is not UTF-8."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def escape_non_utf8(text: str) -> str:
    """``text`` with the bytes of a non-UTF-8 file name as ``\\xNN`` (bytes' repr)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _rel(path: str, dataset_dir: str) -> str:
    # Paths come from walking dataset_dir itself, so a prefix cut is exact (and
    # much cheaper than os.path.relpath on 500,000 files).
    return path[len(dataset_dir.rstrip(os.sep)) + 1:].replace(os.sep, "/")


def _discover_images_labels(dataset_dir: str, discovery: Discovery, need_labels: bool,
                            dicom_force: bool) -> None:
    images_dir = os.path.join(dataset_dir, "images")
    labels_dir = os.path.join(dataset_dir, "labels")
    if not os.path.isdir(images_dir):
        discovery.problems.append(Problem("--dataset_dir", f"{images_dir} is not a folder", True))
        return
    labels = {}  # stem (relative, no suffix) -> label file path
    if os.path.isdir(labels_dir):
        for path in visible_files(labels_dir, dataset_dir):
            stem, suffix = os.path.splitext(_rel(path, labels_dir))  # _rel: no abspath calls
            if suffix.lower() == ".txt":
                labels[stem] = path
    by_stem = collections.defaultdict(list)
    for path in visible_files(images_dir, dataset_dir):
        kind = file_kind(path, dicom_force)
        if kind is None:
            discovery.problems.append(Problem(_rel(path, dataset_dir),
                                              "not a JPEG, PNG or DICOM file"))
            continue
        stem = split_suffix(_rel(path, images_dir))[0]
        by_stem[stem].append((path, kind))
    for stem in sorted(by_stem):
        entries = by_stem[stem]
        if len(entries) > 1:
            names = ", ".join(_rel(p, dataset_dir) for p, _ in entries)
            for path, _ in entries:
                discovery.problems.append(Problem(_rel(path, dataset_dir),
                                                  f"duplicate stem {stem!r} ({names})"))
            continue
        path, kind = entries[0]
        relpath = _rel(path, dataset_dir)
        label = None
        if stem in labels:
            label, reason = read_label_file(labels[stem])
            if reason:
                discovery.problems.append(Problem(relpath, f"{reason} "
                                                  f"({_rel(labels[stem], dataset_dir)})"))
                continue
        elif need_labels or kind != "dicom":
            discovery.problems.append(Problem(relpath, "image without label file "
                                              f"(expected labels/{stem}.txt)"))
            continue
        discovery.files.append(InputFile(path, relpath, kind, label, label_file=(
            _rel(labels[stem], dataset_dir) if stem in labels else None)))
    for stem in sorted(set(labels) - set(by_stem)):
        discovery.problems.append(Problem(_rel(labels[stem], dataset_dir),
                                          "label file without image"))


def _discover_class_folders(dataset_dir: str, root: str, split: str | None,
                            discovery: Discovery, need_labels: bool, dicom_force: bool) -> None:
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if not visible(name):
            continue
        if os.path.isfile(path):
            kind = file_kind(path, dicom_force)
            if kind == "dicom" and not need_labels:  # labelled by its tag alone
                discovery.files.append(InputFile(path, _rel(path, dataset_dir), kind, None,
                                                 split))
            elif kind is not None:  # README/CSV files beside the folders are fine
                reason = "image outside a class folder" + (
                    " (--label_source=tag labels DICOM files by their BodyPartExamined)"
                    if need_labels and kind == "dicom" else "" if need_labels
                    else " (--label_source=tag labels DICOM files only)")
                discovery.problems.append(Problem(_rel(path, dataset_dir), reason))
            continue
        label = clean_label(name)
        if not label:  # a name of spaces or invisible characters only: no class to name
            discovery.problems.append(Problem(_rel(path, dataset_dir) + "/", (
                "class folder without a name once whitespace and invisible characters are "
                "removed")))
            continue
        if (control := refused_character(label)) is not None:  # the rule of a label file's
            discovery.problems.append(Problem(  # text; the folder named as it prints
                escape_refused(_rel(path, dataset_dir)) + "/",
                f"class folder name holds control character U+{ord(control):04X}"))
            continue
        for file_path in visible_files(path, dataset_dir):
            kind = file_kind(file_path, dicom_force)
            if kind is None:
                discovery.problems.append(Problem(_rel(file_path, dataset_dir),
                                                  "not a JPEG, PNG or DICOM file"))
            else:
                discovery.files.append(InputFile(file_path, _rel(file_path, dataset_dir),
                                                 kind, label, split))


def _discover_predefined(dataset_dir: str, discovery: Discovery, need_labels: bool,
                         dicom_force: bool) -> None:
    folders = {}
    for name in sorted(os.listdir(dataset_dir)):
        if not (visible(name) and os.path.isdir(os.path.join(dataset_dir, name))):
            continue
        split = SPLIT_FOLDERS.get(name)
        if split is None:
            discovery.problems.append(Problem(name, "folder is not a split name (expected "
                                              f"{', '.join(SPLIT_FOLDERS)})", True))
        elif split in folders:
            discovery.problems.append(Problem(name, f"both {folders[split]}/ and {name}/ "
                                              f"give the {split} split", True))
        else:
            folders[split] = name
    if "train" not in folders:
        discovery.problems.append(Problem("--dataset_dir", "predefined layout needs a "
                                          "train/ folder", True))
    for split, name in sorted(folders.items()):
        _discover_class_folders(dataset_dir, os.path.join(dataset_dir, name), split, discovery,
                                need_labels, dicom_force)


def canonical_classes(labels) -> tuple[list[str], dict[str, str], dict[str, list[str]]]:
    """Case-insensitive class names from raw label strings.

    Returns:
      (sorted canonical names, casefolded label -> canonical name,
       canonical name -> every spelling seen, for names seen in more than one).
    """
    spellings = collections.defaultdict(collections.Counter)
    for label in labels:
        spellings[label.casefold()][label] += 1
    canonical, variants = {}, {}
    for key, counter in spellings.items():
        best = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        canonical[key] = best
        if len(counter) > 1:
            variants[best] = sorted(counter)
    names = sorted(canonical.values(), key=lambda n: (n.casefold(), n))
    return names, canonical, variants


def read_dicom_header(path: str, options, hash_key: bytes
                      ) -> tuple[str | None, str | None, str | None, tuple | None, tuple | None]:
    """``(BodyPartExamined, keyed patient hash, Modality)``, each stripped or None, where the
    pixel data's value is (``DicomInfo.pixel_data``) and a compressed one's layout
    (``DicomInfo.pixel_layout``): ``dataset.duplicates`` compares files by them.

    Reads the header only (no pixel data), so splits can be grouped by patient
    before any pixel is decoded. The patient key is ``dataset.dicom_header``'s keyed
    hash; it is used in memory for grouping and never written anywhere.

    Raises:
      ValueError: (a DicomError) not a readable DICOM file; the message names
        the file, never a tag value.
    """
    from dataset.dicom_header import read_dicom_info

    info = read_dicom_info(path, options, hash_key=hash_key)
    return info.body_part, info.patient_key, info.modality, info.pixel_data, info.pixel_layout
