"""One image written as JPEG baseline by two encoders (dcmtk's IJG codec and Pillow's
libjpeg-turbo at one quality, Huffman tables optimised or standard, one fragment or several):
different bytes, the same decoded pixels (dataset.duplicates.decoded_copies). Found within the
one syntax; a lossy copy at another quality, or another image, is not."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, JPEGExtended12Bit

from tests.test_dicom_copies import _found, _save

DCMCJPEG = shutil.which("dcmcjpeg")


def _grey8(tmp_path, name, pixels) -> str:
    """An uncompressed 8-bit MONOCHROME2 DICOM file of ``pixels``, from pydicom's MR_small."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    for keyword in ("WindowCenter", "WindowWidth", "SmallestImagePixelValue",
                    "LargestImagePixelValue"):
        if keyword in ds:
            delattr(ds, keyword)
    return _save(ds, tmp_path / name, PixelData=pixels.astype(np.uint8).tobytes())


def _dcmcjpeg(source: str, target, *options) -> str:
    subprocess.run([DCMCJPEG, "+eb", *options, source, str(target)], check=True,
                   capture_output=True)
    return str(target)


def _pillow(source: str, target, quality: int = 90, optimize: bool = False) -> str:
    """``source``'s pixels as JPEG baseline by Pillow, in two fragments, basic offset table
    empty (pydicom's default; dcmtk fills it); ``optimize``: Huffman tables optimised."""
    ds = pydicom.dcmread(source)
    buffer = io.BytesIO()
    Image.fromarray(ds.pixel_array).save(buffer, format="JPEG", quality=quality,
                                         optimize=optimize)
    ds.PixelData = encapsulate([buffer.getvalue()], fragments_per_frame=2)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(target, enforce_file_format=True)
    return str(target)


@pytest.mark.skipif(DCMCJPEG is None, reason="needs dcmtk's dcmcjpeg (apt install dcmtk)")
def test_two_encoders_copies_in_jpeg_baseline_are_one_set(tmp_path):
    pixels = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    # 64x64, a real MR slice in 8 bits, spanning 0-255: dcmcjpeg maps a narrower range onto
    # it (+sp, its default), which would make its pixels another image's.
    image = (pixels.astype(np.int64) - pixels.min()) * 255 // (pixels.max() - pixels.min())
    source = _grey8(tmp_path, "source.dcm", image)
    other = _grey8(tmp_path, "other_source.dcm", np.roll(image, 1, axis=0))
    paths = {
        "dcmtk.dcm": _dcmcjpeg(source, tmp_path / "dcmtk.dcm"),
        "dcmtk_standard_huffman.dcm": _dcmcjpeg(source, tmp_path / "std.dcm", "-ho"),
        "dcmtk_fragments.dcm": _dcmcjpeg(source, tmp_path / "frag.dcm", "+fs", "1"),
        "pillow.dcm": _pillow(source, tmp_path / "pillow.dcm"),
        "pillow_q80.dcm": _pillow(source, tmp_path / "q80.dcm", quality=80),  # lossier
        "other.dcm": _dcmcjpeg(other, tmp_path / "other.dcm"),
    }
    assert len({pydicom.dcmread(path).PixelData for path in paths.values()}) == len(paths)
    calls = []
    assert _found(paths, calls) == [["dcmtk.dcm", "dcmtk_fragments.dcm",
                                     "dcmtk_standard_huffman.dcm", "pillow.dcm"]]
    assert sum(function == "pixel_digest_task" for function, _ in calls) == len(paths)


def test_jpeg_baseline_files_of_a_size_no_other_has_are_not_decoded(tmp_path):
    small = _grey8(tmp_path, "small.dcm", np.zeros((64, 64)))
    paths = {"a.dcm": _pillow(small, tmp_path / "a.dcm"),
             "b.dcm": _pillow(_save(small, tmp_path / "wide.dcm", Columns=32,
                                    PixelData=bytes(64 * 32)), tmp_path / "b.dcm")}
    calls = []
    assert _found(paths, calls) == []
    assert "pixel_digest_task" not in {function for function, _ in calls}


def test_an_8_bit_image_as_jpeg_baseline_and_as_jpeg_extended_is_one_set(tmp_path):
    """An 8-bit JPEG stream is valid JPEG extended (Process 2) too, and encoders label it so
    (1.2.840.10008.1.2.4.51). Two syntaxes of one size were decoded, but each by its own
    preferred plugin: baseline by Pillow (libjpeg-turbo), extended by pylibjpeg-libjpeg, whose
    IDCTs round differently; one image had two digests and its copies were not found."""
    pixels = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    image = (pixels.astype(np.int64) - pixels.min()) * 255 // (pixels.max() - pixels.min())
    source = _grey8(tmp_path, "source.dcm", image)
    baseline = _pillow(source, tmp_path / "baseline.dcm")
    extended = _pillow(source, tmp_path / "extended.dcm", optimize=True)  # other bytes
    other = _pillow(_grey8(tmp_path, "other_source.dcm", np.roll(image, 1, axis=0)),
                    tmp_path / "other.dcm", optimize=True)
    for path in (extended, other):
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = JPEGExtended12Bit
        ds.save_as(path, enforce_file_format=True)
    assert (pydicom.dcmread(baseline).pixel_array == pydicom.dcmread(extended).pixel_array
            ).all()  # Pillow decodes both alike: the same image
    paths = {"baseline.dcm": baseline, "extended.dcm": extended, "other.dcm": other}
    assert _found(paths) == [["baseline.dcm", "extended.dcm"]]
