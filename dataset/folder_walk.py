"""Which files under a folder are inputs: the walk (links followed, hidden files and
folders left out) and the file-kind detection, shared by the converter (dataset/sources.py)
and prediction (official/core/prediction.py) so both accept the same files. No pixels are
read here: at most a file's first 132 bytes."""

from __future__ import annotations

import contextlib
import os
import stat

from dataset.images import DICOM_SUFFIXES, IMAGE_SUFFIXES

# DICOMDIR: the index every DICOM CD or DVD carries (PS3.10 fixes its name); it holds no
# image, and it failed a conversion of a CD's folders as "no pixel data".
_IGNORED_NAMES = {"thumbs.db", "desktop.ini", "dicomdir"}


def visible(name: str) -> bool:
    """Not hidden, and not a file that is never an input (Thumbs.db, a CD's DICOMDIR)."""
    return not name.startswith(".") and name.lower() not in _IGNORED_NAMES


def walk_folders(root: str, tree: str | None = None, onerror=None):
    """os.walk(root) that follows links to folders outside ``tree`` (default: ``root``; the
    converter gives the dataset's folder): a linked subfolder was passed over without a word.
    A link into ``tree`` is not followed (that folder is read under its own name, with its
    own class, split and label files), nor one to a folder above it (a loop); each real
    folder is read once. Subfolders in sorted order. ``onerror`` is os.walk's: called with
    the OSError of a folder that cannot be listed (without it, such a folder is passed over
    in silence)."""
    top = os.path.realpath(tree or root)
    seen = set()
    for folder, dirs, files in os.walk(root, followlinks=True, onerror=onerror):
        real = os.path.realpath(folder)
        if real in seen:  # a second link to the same folder
            dirs[:] = []
            continue
        seen.add(real)
        kept = []
        for name in sorted(dirs):
            path = os.path.join(folder, name)
            if os.path.islink(path):
                target = os.path.realpath(path)
                if (target == top or target.startswith(top + os.sep)
                        or top.startswith(target.rstrip(os.sep) + os.sep)):
                    continue
            kept.append(name)
        dirs[:] = kept
        yield folder, dirs, files


def visible_files(root: str, tree: str) -> list[str]:
    """Every visible file under ``root`` (in the dataset ``tree``) as a sorted list of
    absolute paths."""
    found = []
    for folder, dirs, files in walk_folders(root, tree):
        dirs[:] = [d for d in dirs if visible(d)]
        found.extend(os.path.join(folder, f) for f in files if visible(f))
    return sorted(found)


def _has_dicm_preamble(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def is_dicomdir(path: str) -> bool:
    """A DICOM medium's index file (named DICOMDIR by the standard), not an image."""
    return os.path.basename(path).lower() == "dicomdir"


def split_suffix(path: str) -> tuple[str, str]:
    """``os.path.splitext``, except that a numeric "suffix" is none: a DICOM file named by its
    SOP Instance UID (``1.2.840.113619.2.55.3.604688119.868``, as PACS exports name them) was
    read as a ``.868`` file, and passed over without a word."""
    stem, suffix = os.path.splitext(path)
    return (path, "") if suffix[1:].isdigit() else (stem, suffix)


def special_file(path: str) -> bool:
    """A pipe, socket or device: no image, and opening a pipe to read it (or to sniff an
    extension-less name for DICOM) waits for a writer, so the run hung. False for a path that
    cannot be stat'ed (a broken link: its suffix decides, and its read fails)."""
    with contextlib.suppress(OSError):
        return not stat.S_ISREG(os.stat(path).st_mode)
    return False


def file_kind(path: str, dicom_force: bool = False) -> str | None:
    """The converter's file-kind detection, shared with prediction so both accept the
    same files: ``"image"`` for a ``.jpg``/``.jpeg``/``.png`` suffix (the format is
    sniffed from the bytes later), ``"dicom"`` for ``.dcm``/``.dicom`` or no suffix with
    the DICM marker at byte 128 (with ``dicom_force``, --dicom_force: with or without it,
    as a CD's IM0001 files may lack it), None for anything else (a DICOMDIR too). Reads at
    most 132 bytes and never raises for an unreadable file (None)."""
    if is_dicomdir(path) or special_file(path):
        return None
    suffix = split_suffix(path)[1].lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in DICOM_SUFFIXES or (suffix == "" and (dicom_force
                                                      or _has_dicm_preamble(path))):
        return "dicom"
    return None
