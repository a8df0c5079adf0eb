"""Test helpers for DICOM: the bundled corpus and each file's patient identifiers.

Files are listed from pydicom's own test_files folder and the installed pydicom-data
package directly: pydicom.data.get_testdata_files() would also try to download the
files pydicom-data lacks, which is slow and needs a network the tests must not use.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pydicom

IDENTIFIER_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
                       "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def bundled_test_files() -> list[Path]:
    """Every file of pydicom's and pydicom-data's test data (sorted, no download)."""
    from pydicom.data.data_manager import DATA_ROOT, external_data_sources

    files = [path for path in (Path(DATA_ROOT) / "test_files").rglob("*")
             if path.is_file() and path.suffix not in (".py", ".txt", ".json", ".md")]
    for _, source in sorted(external_data_sources().items()):
        files.extend(Path(path) for path in source.get_paths("**/*", 0))
    return sorted(set(files))


def pixel_files() -> list[Path]:
    """The bundled files that pydicom reads (without force) and that hold pixel data."""
    found = []
    for path in bundled_test_files():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=False)
        except Exception:
            continue
        if "PixelData" in ds:
            found.append(path)
    return found


def identifiers(path: str | os.PathLike) -> list[str]:
    """The clear-text identifiers of a file that must never appear in any output.

    Values shorter than 4 characters are left out: they would match by accident
    ("1", "Doe" inside other words) and identify no one on their own. Each name is
    also returned in its component forms ("Doe^John" -> "Doe^John", "Doe", "John")
    where a component is long enough.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    values = set()
    for keyword in IDENTIFIER_KEYWORDS:
        try:
            value = ds.get(keyword)
        except Exception:
            continue
        if value is None:
            continue
        text = str(value).strip()
        values.add(text)
        if keyword == "PatientName":
            values.update(part.strip() for part in text.replace("=", "^").split("^"))
    return sorted(value for value in values if len(value) >= 4)
