"""What a file's first bytes say it is: JPEG or PNG (dataset/images.py reads those), with no
imports of its own, so that dataset/dicom_header.py can name image bytes in a file named as DICOM
without importing the image module (which imports it back to read DICOM)."""

from __future__ import annotations

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sniff_format(data: bytes) -> str | None:
    """``"jpeg"``/``"png"`` from the magic bytes, or None."""
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    return None
