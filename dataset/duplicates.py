"""Copies of one image under different names (library of dataset.convert's validation pass):
files with the same bytes, or DICOM files with the same pixel data under different headers (a
scan anonymised twice, under two pseudonyms). A copy in the training split and another in the
test split is scored as if it were unseen; public datasets carry such copies (MedNIST's public
tarball had exact duplicates). The split keeps each set of copies together
(``dataset.assignment``).

Cheap first: only files whose compared parts are of equal size can be equal, and most of
those differ in their first 64 KiB, so few files are read whole.
"""

from __future__ import annotations

import collections
import hashlib
import os

PREFIX_BYTES = 64 * 1024


def identical_files(paths: dict[str, str], imap,
                    parts: dict[str, tuple[int, int | None]] | None = None) -> list[list[str]]:
    """Sets of files with the same bytes (in the part compared), each sorted, the sets sorted
    by their first name.

    Args:
      paths: relpath -> path of the files to compare.
      imap: an ordered parallel map, ``imap(function, tasks, chunksize)``
        (``dataset.workers.WorkerPool.imap``); ``content_digest`` runs in it.
      parts: relpath -> (offset, length; None: to the end) of the part compared, for a DICOM
        file its pixel data's value (``dataset.dicom.DicomInfo.pixel_data``); a file not
        named is compared whole.

    A file with nothing to compare (empty) or unreadable is in no set: reading it is the
    encode pass's problem, and every empty file would otherwise be a copy of every other.
    """
    parts = parts or {}
    by_size = collections.defaultdict(list)
    spans = {}  # relpath -> (offset, length) of what is compared
    for relpath, path in paths.items():
        offset, length = parts.get(relpath, (0, None))
        if length is None:
            try:
                length = os.stat(path).st_size - offset
            except OSError:
                continue
        if length > 0:
            spans[relpath] = (offset, length)
            by_size[length].append(relpath)
    same_size = [(size, relpaths) for size, relpaths in by_size.items() if len(relpaths) > 1]
    alike = _alike([relpaths for _, relpaths in same_size], paths, spans, imap, PREFIX_BYTES)
    # Parts no longer than the prefix were read whole: only the longer ones are read again.
    longer = {relpath for size, relpaths in same_size if size > PREFIX_BYTES
              for relpath in relpaths}
    alike = ([same for same in alike if same[0] not in longer]
             + _alike([same for same in alike if same[0] in longer], paths, spans, imap, None))
    return sorted(sorted(same) for same in alike)


# Copies of one scan come a few at a time (an export made twice, a scan anonymised twice): one
# image in more groups than this is a placeholder (a blank frame, a logo page), which tells a
# model nothing, and joining its groups would make one group of unrelated patients.
MAX_GROUPS_JOINED = 4


def copies_and_placeholders(identical: list[list[str]], groups: dict[str, str]
                            ) -> tuple[list[list[str]], list[list[str]]]:
    """The sets of ``identical`` split into copies (in at most MAX_GROUPS_JOINED of
    ``groups``: to be joined) and placeholders (in more)."""
    copies, placeholders = [], []
    for same in identical:
        spanned = len({groups[relpath] for relpath in same})
        (placeholders if spanned > MAX_GROUPS_JOINED else copies).append(same)
    return copies, placeholders


def join_groups(groups: dict[str, str], identical: list[list[str]]) -> dict[str, str]:
    """``groups`` (relpath -> group) with the groups of each set of copies among
    ``identical`` joined into their least (and so every file of those groups: a split or fold
    drawn by group then keeps the copies together); placeholders are left apart
    (``copies_and_placeholders``)."""
    joined = {}  # group -> the group it was joined into (followed to the end)

    def final(group):
        while group in joined:
            group = joined[group]
        return group

    for same in copies_and_placeholders(identical, groups)[0]:
        least, *others = sorted({final(groups[relpath]) for relpath in same})
        joined.update((group, least) for group in others)
    return {relpath: final(group) for relpath, group in groups.items()}


def _alike(candidates: list[list[str]], paths: dict[str, str],
           spans: dict[str, tuple[int, int]], imap, limit: int | None):
    """The candidates' sets split by digest (of the first `limit` bytes of their span, or all
    of it), keeping those of two or more files."""
    relpaths = [relpath for same in candidates for relpath in same]
    tasks = [(paths[r], spans[r][0], spans[r][1] if limit is None else min(limit, spans[r][1]))
             for r in relpaths]
    digests = dict(zip(relpaths, imap(content_digest, tasks, chunksize=64)))
    alike = []
    for same in candidates:
        by_digest = collections.defaultdict(list)
        for relpath in same:
            if digests[relpath] is not None:
                by_digest[digests[relpath]].append(relpath)
        alike += [group for group in by_digest.values() if len(group) > 1]
    return alike


def content_digest(path_offset_length: tuple[str, int, int]) -> bytes | None:
    """The digest of ``length`` bytes of a file from ``offset`` (fewer where the file ends);
    None when the file cannot be read (a worker's task: one argument)."""
    path, offset, length = path_offset_length
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            while length > 0 and (chunk := file.read(min(length, 1 << 20))):
                digest.update(chunk)
                length -= len(chunk)
    except OSError:
        return None
    return digest.digest()
