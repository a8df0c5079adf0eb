"""Copies of one image under different names (library of dataset.convert's validation pass):
files with the same bytes, or DICOM files with the same pixel data under different headers (a
scan anonymised twice, under two pseudonyms). A copy in the training split and another in the
test split is scored as if it were unseen; public datasets carry such copies (MedNIST's public
tarball had exact duplicates). The split keeps each set of copies together
(``dataset.assignment``).

Cheap first: only files whose compared parts are of equal size can be equal, and most of
those differ in their first 64 KiB, so few files are read whole. A big-endian DICOM file's
16- or 32-bit pixel data is compared by its values (its bytes swapped), as a little-endian
file's bytes are: the same bytes in the two byte orders are two images. A compressed DICOM
file's pixel data differs from a copy's in another transfer syntax (JPEG 2000 and RLE of one
scan), or by another JPEG baseline encoder, although the pixels decoded are the same: those are
compared decoded, but only where the header's size says another file could hold the same
pixels. Within one syntax, copies by two encoders (dcmtk, pydicom; other options or
fragments) are compared decoded where they share their SOP Instance UID (as a keyed hash) and
layout: a lossless re-encode keeps the UID (DICOM gives a new one only to a lossy one, PS3.3
C.7.6.1.1.5; dcmcrle, dcmcjpls and dcmcjpeg keep it when lossless, pydicom's ``compress``
makes a new one unless told not to). Only equal pixels join files: a lossy copy is not found
(another quality, another encoder's quantisation), and never is a different image. Not found
either: copies within one syntax under new UIDs (anonymised, or re-encoded by a tool that
renews the UID) other than in JPEG baseline: finding them would decode every file of such a
folder (``_DECODED_WITHIN_SYNTAX`` says what it costs); nor those under a UID that more than
``MAX_FILES_PER_INSTANCE`` different files carry (an anonymiser's constant).
"""

from __future__ import annotations

import collections
import hashlib
import math
import os

from dataset.dicom_options import DicomOptions

PREFIX_BYTES = 64 * 1024


def identical_files(paths: dict[str, str], imap,
                    parts: dict[str, tuple[int, int | None]] | None = None,
                    layouts: dict[str, tuple] | None = None,
                    dicom_options: DicomOptions | None = None) -> list[list[str]]:
    """Sets of files with the same bytes (in the part compared), or DICOM files with the same
    decoded pixels (``decoded_copies``), each sorted, the sets sorted by their first name.

    Args:
      paths: relpath -> path of the files to compare.
      imap: an ordered parallel map, ``imap(function, tasks, chunksize)``
        (``dataset.workers.WorkerPool.imap``); ``content_digest`` runs in it.
      parts: relpath -> (offset, length; None: to the end) of the part compared, for a DICOM
        file its pixel data's value (``dataset.dicom_header.DicomInfo.pixel_data``); a file not
        named is compared whole.
      layouts: relpath -> a compressed or big-endian DICOM file's pixel layout, transfer
        syntax and instance key (``dataset.dicom_header.DicomInfo.pixel_layout``), for
        ``decoded_copies``; a 16- or 32-bit big-endian file's part is compared by its values
        (``value_words``).
      dicom_options: how the DICOM files of ``parts`` are read (``force``, ``max_pixels``)
        where their pixels are compared decoded.

    A file with nothing to compare (empty) or unreadable is in no set: reading it is the
    encode pass's problem, and every empty file would otherwise be a copy of every other.
    """
    parts, layouts = parts or {}, layouts or {}
    words = value_words(layouts)
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
    alike = _alike([relpaths for _, relpaths in same_size], paths, spans, words, imap,
                   PREFIX_BYTES)
    # Parts no longer than the prefix were read whole: only the longer ones are read again.
    longer = {relpath for size, relpaths in same_size if size > PREFIX_BYTES
              for relpath in relpaths}
    alike = ([same for same in alike if same[0] not in longer]
             + _alike([same for same in alike if same[0] in longer], paths, spans, words, imap,
                      None))
    return _merged(alike + decoded_copies(paths, parts, layouts, imap,
                                          dicom_options or DicomOptions(), same_bytes=alike))


def decoded_copies(paths: dict[str, str], parts: dict[str, tuple[int, int | None]],
                   layouts: dict[str, tuple], imap, dicom_options: DicomOptions,
                   same_bytes: list[list[str]] = ()) -> list[list[str]]:
    """Sets of DICOM files whose decoded pixels are equal (``dataset.dicom.pixel_digest``)
    where one at least is stored otherwise than as its values (``layouts``, from the header
    pass, names those: compressed or big-endian).

    Decoding costs what encoding does (1.6x a conversion of 220 compressed 512x512 files
    when every file of a size was decoded), so only files that could be equal and are stored
    differently are: those of an uncompressed size (from a layout, a little-endian file's
    pixel-data length) held in two transfer syntaxes or more (a little-endian file is decoded
    too), those of a size held by two JPEG baseline files (``_DECODED_WITHIN_SYNTAX``), and
    those of one layout sharing an instance key (``_sharing_an_instance``). Other files of one
    size stored one way are not decoded. Two little-endian files are left to the byte
    comparison (their bytes are the values), as is a 16- or 32-bit big-endian file (its
    bytes swapped are: ``value_words``; an 8-bit one counts as a syntax of its own), and of
    files with the same bytes (``same_bytes``, sets the byte comparison found) one is decoded
    for all. A file that cannot be decoded is in no set (the encode pass says why)."""
    words = value_words(layouts)
    by_size = collections.defaultdict(dict)  # uncompressed bytes -> {relpath: its syntax}
    for relpath, (layout, syntax, _) in sorted(layouts.items()):
        if relpath in paths and (size := (math.prod(layout) + 7) // 8) > 0:
            # (rows x columns x frames x samples x bits); a big-endian file compared by its
            # values (``value_words``) is as a little-endian one
            by_size[size][relpath] = "uncompressed" if relpath in words else syntax
    if not by_size:
        return []
    for relpath, (_, length) in sorted(parts.items()):
        if relpath in layouts:  # big-endian: a native length, its syntax known
            continue
        for size in (length, length - 1) if length is not None and relpath in paths else ():
            if size in by_size and (size == length or size % 2):  # (odd: padded to even)
                by_size[size][relpath] = "uncompressed"
                break
    candidates = [sorted(syntaxes) for syntaxes in by_size.values()
                  if len(set(syntaxes.values())) > 1
                  or sum(syntax in _DECODED_WITHIN_SYNTAX for syntax in syntaxes.values()) > 1]
    decoded = {relpath for same in candidates for relpath in same}
    first = {relpath: same[0] for same in same_bytes for relpath in same}
    candidates = [_one_per_content(same, first, layouts) for same in candidates
                  ] + _sharing_an_instance(layouts, paths, decoded | set(words), first)
    relpaths = [relpath for same in candidates if len(same) > 1 for relpath in same]
    digests = dict(zip(relpaths, imap(pixel_digest_task, [(paths[r], dicom_options)
                                                         for r in relpaths], chunksize=1)))
    return _split_by_digest([same for same in candidates if len(same) > 1], digests)


def value_words(layouts: dict[str, tuple]) -> dict[str, int]:
    """relpath -> the word size (2, 4 bytes) of each big-endian file of ``layouts`` whose
    values are its pixel bytes swapped word by word (16- and 32-bit samples): such a file is
    compared by its values as a little-endian one is, by its bytes, nothing decoded. Compared
    as stored, a big-endian file and a little-endian one with the same bytes (other values)
    were one image, and a big-endian slice among little-endian ones of its size had every one
    decoded. Not 8-bit or 1-bit samples: their bytes are swapped in OW, not in OB (the header
    pass does not keep the VR), so such a file is decoded (a syntax of its own)."""
    return {relpath: layout[4] // 8 for relpath, (layout, syntax, _) in layouts.items()
            if syntax == _BIG_ENDIAN and layout[4] in (16, 32)}


_BIG_ENDIAN = "1.2.840.10008.1.2.2"  # Explicit VR Big Endian (retired)


def _sharing_an_instance(layouts: dict[str, tuple], paths: dict[str, str],
                         excluded: set[str], first: dict[str, str]) -> list[list[str]]:
    """Sets of files not ``excluded`` (decoded already, or compared by their values) that
    share a layout and an instance key (hash of the SOP Instance UID), one file per content
    (``first``: relpath -> its byte-set's first), keeping those of two or more; not those of
    a key on more than MAX_FILES_PER_INSTANCE contents, whatever their layouts. Most files'
    UIDs are their own: they cost nothing."""
    by_instance = collections.defaultdict(list)
    for relpath, (_, _, instance) in sorted(layouts.items()):
        if instance is not None and relpath in paths:
            by_instance[instance].append(relpath)
    sets = []
    for same in by_instance.values():
        if len(_one_per_content(same, first, layouts)) > MAX_FILES_PER_INSTANCE:
            continue
        by_layout = collections.defaultdict(list)
        for relpath in same:
            if relpath not in excluded:
                by_layout[layouts[relpath][0]].append(relpath)
        sets += [alike for alike in (_one_per_content(group, first, layouts)
                                     for group in by_layout.values()) if len(alike) > 1]
    return sets


# Copies of one image by encoders come a few at a time (the original and a copy per syntax or
# tool); one UID on more contents than this is a tool's constant (an anonymiser that writes one
# UID everywhere, a series split into frames under its UID): decoding them all would cost what
# decoding the folder does. Counted over every layout: an anonymiser's constant on radiographs
# of 40 sizes, 5 files each, had all 200 decoded when it was counted per layout (+25% of the
# conversion's time).
MAX_FILES_PER_INSTANCE = 8


def _one_per_content(same: list[str], first: dict[str, str], layouts: dict[str, tuple]
                     ) -> list[str]:
    """``same`` with one file of each set of equal bytes (``first``: relpath -> its set's
    first file) and layout: the others are joined to it by the byte comparison, and decode
    alike. Not across layouts: a byte copy whose header says other Rows and Columns decodes
    to another shape, and stood for a file whose copy in another syntax was then not found."""
    kept = {}
    for relpath in same:
        kept.setdefault((first.get(relpath, relpath), layouts.get(relpath, (None,))[0]),
                        relpath)
    return sorted(kept.values())


# One image as JPEG baseline by two encoders has different bytes and, where they quantise
# alike (IJG's tables at one quality: dcmtk, Pillow/libjpeg-turbo; Huffman tables optimised or
# not; one fragment or several; offset table empty or not), the same decoded pixels. Decoding
# baseline costs a fraction of the conversion's own work on the file (pixel_digest against
# tasks.encode_file, one process): 4 ms against 24 for a 512x512 CT slice, 7 against 80-90
# for a 768x1024 US frame; a conversion of 120 such slices took 15-20% longer. Not the other
# syntaxes, every file of a CT series being of one size: JPEG extended (0.2-0.3 of the
# encode), RLE (0.2-0.6), JPEG lossless (0.35-0.65) would add up to two thirds. Their copies
# by two encoders are found by a shared SOP Instance UID instead (_sharing_an_instance).
_DECODED_WITHIN_SYNTAX = frozenset({"1.2.840.10008.1.2.4.50"})  # JPEG Baseline (Process 1)


def _merged(sets: list[list[str]]) -> list[list[str]]:
    """Overlapping sets (a file equal to one by bytes and to another decoded) as one; each
    sorted, the sets sorted by their first name."""
    owner = {}  # relpath -> the (merged) set holding it
    for same in sets:
        merged = set(same)
        for relpath in same:
            if relpath in owner:
                merged |= owner[relpath]
        for relpath in merged:
            owner[relpath] = merged
    unique = {id(same): same for same in owner.values()}
    return sorted(sorted(same) for same in unique.values())


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
           spans: dict[str, tuple[int, int]], words: dict[str, int], imap, limit: int | None):
    """The candidates' sets split by digest (of the first `limit` bytes of their span, or all
    of it; by the values of those in ``words``), keeping those of two or more files."""
    relpaths = [relpath for same in candidates for relpath in same]
    tasks = [(paths[r], spans[r][0], spans[r][1] if limit is None else min(limit, spans[r][1]),
              words.get(r, 1)) for r in relpaths]
    digests = dict(zip(relpaths, imap(content_digest, tasks, chunksize=64)))
    return _split_by_digest(candidates, digests)


def _split_by_digest(candidates: list[list[str]], digests: dict) -> list[list[str]]:
    """The candidates' sets split by ``digests`` (relpath -> digest; None: a file not read,
    in no set), keeping those of two or more files."""
    alike = []
    for same in candidates:
        by_digest = collections.defaultdict(list)
        for relpath in same:
            if digests[relpath] is not None:
                by_digest[digests[relpath]].append(relpath)
        alike += [group for group in by_digest.values() if len(group) > 1]
    return alike


def content_digest(path_offset_length_word: tuple[str, int, int, int]) -> bytes | None:
    """The digest of ``length`` bytes of a file from ``offset`` (fewer where the file ends),
    each ``word`` of them byte-swapped (1: as they are; a big-endian file's values then digest
    as a little-endian file's bytes); None when the file cannot be read (a worker's task: one
    argument)."""
    path, offset, length, word = path_offset_length_word
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            while length > 0 and (chunk := file.read(min(length, 1 << 20))):
                digest.update(_swapped(chunk, word) if word > 1 else chunk)
                length -= len(chunk)
    except OSError:
        return None
    return digest.digest()


def _swapped(data: bytes, word: int) -> bytes:
    """``data`` with the bytes of each whole ``word`` reversed (a trailing part left)."""
    swapped, end = bytearray(data), len(data) - len(data) % word
    for index in range(word):
        swapped[index:end:word] = data[word - 1 - index:end:word]
    return bytes(swapped)


def pixel_digest_task(path_options: tuple) -> bytes | None:
    """``dataset.dicom.pixel_digest`` of (path, DicomOptions); None when the file cannot be
    decoded (a worker's task: one argument)."""
    from dataset import dicom  # pydicom only once a compressed DICOM file is met

    try:
        return dicom.pixel_digest(*path_options)
    except ValueError:
        return None
