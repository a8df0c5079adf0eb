"""The --groups_csv file (file,group rows: a patient, a scan or any unit kept in one split)
read and matched to the files a dataset folder holds: used by dataset/assignment.py's splits
and the hold-out benchmarks."""

from __future__ import annotations

import csv
import os

from dataset.folder_walk import special_file, split_suffix
from dataset.sources import Discovery, Problem


def read_groups_csv(path: str) -> dict[str, str]:
    """``read_groups_rows``'s mapping, for a reader that takes the CSV whole or not at all.

    Raises:
      ValueError: the file cannot be read (``read_groups_rows``), or a row it cannot take
        (the first one's line, and how many more there are).
    """
    mapping, bad_rows = read_groups_rows(path)
    if bad_rows:
        raise ValueError(f"--groups_csv {path}: {bad_rows[0]}" + (
            f" (and {len(bad_rows) - 1} more row(s) it cannot take)" if bad_rows[1:] else ""))
    return mapping


def read_groups_rows(path: str) -> tuple[dict[str, str], list[str]]:
    """Reads ``file,group`` rows (a header row naming ``file`` is skipped).

    ``file`` is a path relative to the dataset folder or a bare file stem.

    Returns:
      (file -> group, the rows it cannot take: one reason each, e.g. "line 3 needs
      'file,group'", or a row giving a file another group than an earlier row did, which
      leaves the earlier row's group in the mapping). The converter lists those rows with the
      dataset's other problems (``row_problems``).

    Raises:
      ValueError: the file cannot be read at all: unreadable, not a regular file, not UTF-8,
        or a line or cell past the bounds below.
    """
    if special_file(path):  # a pipe hung the run, a link to /dev/zero filled the memory
        raise ValueError(f"--groups_csv {path}: not a regular file (a pipe, socket or device)")
    mapping, bad_rows = {}, []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(_bounded_lines(handle, path))
            for number, row in enumerate(reader, start=1):
                if not row or not "".join(row).strip():
                    continue
                if len(row) < 2 or not row[0].strip() or not row[1].strip():
                    bad_rows.append(f"line {number} needs 'file,group'")
                    continue
                if number == 1 and row[0].strip().lower() in ("file", "path", "filename"):
                    continue
                file, group = row[0].strip().replace("\\", "/"), row[1].strip()
                if mapping.get(file, group) != group:  # the later row won in silence
                    bad_rows.append(f"line {number} puts {file!r} in group {group!r}, an "
                                    f"earlier row in {mapping[file]!r}")
                    continue
                mapping[file] = group
    except csv.Error as error:  # a cell past csv's field limit (128 KB) was a traceback
        raise ValueError(f"--groups_csv {path}: cannot read line {reader.line_num} "
                         f"({error})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--groups_csv {path}: cannot read ({error})") from None
    return mapping, bad_rows


# A CSV of another shape (semicolons, or two files pasted together) has a bad row on every
# line: the first few say what is wrong, a line for each of 100,000 would bury the rest.
MAX_ROWS_LISTED = 10


def row_problems(path: str, bad_rows: list[str]) -> list[Problem]:
    """Fatal problems for ``read_groups_rows``'s bad rows: one line each, up to
    MAX_ROWS_LISTED, then one line counting the rest. Fatal: --on_error=skip cannot tell
    which of two rows was meant, nor what a row of another shape meant."""
    problems = [Problem(f"--groups_csv {path}", reason, fatal=True)
                for reason in bad_rows[:MAX_ROWS_LISTED]]
    if bad_rows[MAX_ROWS_LISTED:]:
        problems.append(Problem(f"--groups_csv {path}", (
            f"{len(bad_rows) - MAX_ROWS_LISTED} more row(s) it cannot take (the first "
            f"{MAX_ROWS_LISTED} are listed above)"), fatal=True))
    return problems


# csv bounds a field (128 KB), not the line it reads first: a 1 GB file without a line break
# took 2 GB before csv refused it.
CSV_LINE_MAX_CHARS = 1 << 20


def _bounded_lines(handle, path: str):
    """``handle``'s lines; ValueError for one past CSV_LINE_MAX_CHARS."""
    for number, line in enumerate(iter(lambda: handle.readline(CSV_LINE_MAX_CHARS + 1), ""),
                                  start=1):
        if len(line) > CSV_LINE_MAX_CHARS:
            raise ValueError(f"--groups_csv {path}: line {number} is longer than "
                             f"{CSV_LINE_MAX_CHARS:,} characters")
        yield line


def csv_group(groups_csv: dict[str, str], relpath: str) -> str | None:
    """The group ``read_groups_csv`` gives a file: its row by path, else by bare stem."""
    stem = split_suffix(os.path.basename(relpath))[0]
    return groups_csv.get(relpath) or groups_csv.get(stem)


def unmatched_group_rows(path: str | None, groups_csv: dict[str, str], discovery: Discovery
                         ) -> list[Problem]:
    """A fatal problem when rows of ``read_groups_csv(path)`` name no file found.

    Rows are matched against every file found, problem files included, so the row of a
    file left out by --on_error=skip still matches; a row matching nothing is a typo or a
    CSV meant for another folder, and ignoring it would silently leave its files ungrouped.
    """
    found = {item.relpath for item in discovery.files}
    found.update(p.path for p in discovery.problems if not p.fatal)
    found.update([split_suffix(os.path.basename(relpath))[0] for relpath in found])
    unmatched = [key for key in groups_csv if key not in found]
    if not unmatched:
        return []
    listed = ", ".join(unmatched[:3]) + (f" and {len(unmatched) - 3} more"
                                         if unmatched[3:] else "")
    return [Problem(f"--groups_csv {path}", f"{len(unmatched)} of {len(groups_csv)} row(s) "
                    f"match no file in --dataset_dir ({listed})", fatal=True)]
