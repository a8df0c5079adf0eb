"""dataset.dicom on bad input: a one-line error naming the file (scrubbed of identifiers),
the package to install when a decoder plugin is missing, and validated options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from dataset.body_parts import NOT_ANATOMY
from dataset.dicom import read_dicom
from dataset.dicom_options import DicomError, DicomOptions
from tests.dicom_fixtures import KEY, bundled, render, write_dicom


# --- missing plugins ----------------------------------------------------------------


@pytest.mark.parametrize("name, syntax, package", [
    ("MR_small_jpeg_ls_lossless.dcm", pydicom.uid.JPEGLSLossless, "pylibjpeg-libjpeg"),
    ("MR_small_jp2klossless.dcm", pydicom.uid.JPEG2000Lossless, "pylibjpeg-openjpeg"),
    ("SC_rgb_jpeg_dcmtk.dcm", pydicom.uid.JPEGBaseline8Bit, "pylibjpeg-libjpeg"),
])
def test_missing_plugin_names_the_package_to_install(monkeypatch, name, syntax, package):
    """pydicom's decoder told that its plugins are uninstalled, as pydicom itself
    records a plugin whose package is missing (hiding the module with sys.modules
    is not enough: pylibjpeg loads its plugins through entry points)."""
    from pydicom.pixels import get_decoder

    decoder = get_decoder(syntax)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {
        "pylibjpeg": ("pylibjpeg>=2.0", f"{package}>=2.0"), "pillow": ("pillow",)})
    with pytest.raises(DicomError) as error:
        render(bundled(name))
    message = str(error.value)
    assert name in message and f"pip install pylibjpeg and {package}" in message
    assert "\n" not in message


# --- bad inputs ---------------------------------------------------------------------


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    not_dicom = tmp_path / "notes.dcm"
    not_dicom.write_text("just text, not DICOM\n")
    no_pixels = tmp_path / "nopixels.dcm"
    write_dicom(no_pixels, np.zeros((2, 2), np.uint8))
    ds = pydicom.dcmread(no_pixels)
    del ds.PixelData
    ds.save_as(no_pixels)
    truncated = tmp_path / "truncated.dcm"
    write_dicom(truncated, np.zeros((64, 64), np.uint16))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    mpeg = tmp_path / "mpeg.dcm"
    write_dicom(mpeg, np.zeros((2, 2), np.uint8))
    ds = pydicom.dcmread(mpeg)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00\x00\x01\xb3"])
    ds["PixelData"].VR = "OB"
    ds.save_as(mpeg)
    absurd = write_dicom(tmp_path / "absurd.dcm", np.zeros((2, 2), np.uint8),
                         Rows=65535, Columns=65535, NumberOfFrames=9999)
    # Tests run as root, so chmod 000 would not stop a read: a directory named like
    # a DICOM file is an unreadable input whatever the user.
    unreadable = tmp_path / "folder.dcm"
    unreadable.mkdir()
    empty = tmp_path / "empty.dcm"  # it was "not a DICOM file (... --dicom_force ...)"
    empty.write_bytes(b"")
    return {
        "zero bytes": (empty, "zero-byte file"),
        "not DICOM": (not_dicom, "not a DICOM file"),
        "no pixel data": (no_pixels, "no pixel data"),
        "truncated": (truncated, "truncated pixel data"),
        "unsupported transfer syntax": (mpeg, "unsupported transfer syntax"),
        "absurd dimensions": (absurd, "too large"),
        "unreadable": (unreadable, "cannot read"),
        "missing": (tmp_path / "missing.dcm", "cannot read"),
    }


@pytest.mark.parametrize("case", ["not DICOM", "no pixel data", "truncated",
                                  "unsupported transfer syntax", "absurd dimensions",
                                  "unreadable", "missing", "zero bytes"])
def test_bad_input_is_a_one_line_error_naming_the_file(tmp_path, case):
    path, problem = _bad_inputs(tmp_path)[case]
    with pytest.raises(DicomError) as error:
        read_dicom(path, DicomOptions(), hash_key=KEY)
    message = str(error.value)
    assert message.startswith(str(path)) and problem in message and "\n" not in message
    if case == "zero bytes":  # and with --dicom_force it was "no pixel data"
        with pytest.raises(DicomError, match="zero-byte file"):
            read_dicom(path, DicomOptions(force=True), hash_key=KEY)


@pytest.mark.parametrize("modality", ["SEG", "RTDOSE"])
def test_pixels_that_are_not_anatomy_are_refused(tmp_path, modality):
    # A mask or a dose grid decodes fine, and a classifier would name a body part for it.
    path = write_dicom(tmp_path / "x.dcm", np.zeros((4, 4), np.uint8), Modality=modality)
    with pytest.raises(DicomError) as error:
        read_dicom(path, DicomOptions(), hash_key=KEY)
    assert str(error.value) == (f"{path}: {NOT_ANATOMY[modality]} ({modality}), not an image "
                                "of anatomy")
    write_dicom(tmp_path / "ct.dcm", np.zeros((4, 4), np.uint8), Modality="CT")
    assert len(read_dicom(tmp_path / "ct.dcm", DicomOptions(), hash_key=KEY)[0]) == 1


def test_error_messages_are_scrubbed_of_identifiers(tmp_path):
    path = write_dicom(tmp_path / "Doe.dcm", np.zeros((2, 2), np.uint8),
                       PatientName="Doe^Janet", PatientID="PID-777", Rows=0)
    with pytest.raises(DicomError) as error:
        render(path)
    assert "invalid image size" in str(error.value)
    from dataset.dicom_header import _scrub

    ds = pydicom.dcmread(path)
    assert _scrub("bad value 'Doe^Janet' for PID-777 and Janet", ds) == (
        "bad value '<redacted>' for <redacted> and <redacted>")


def test_options_and_key_are_validated():
    with pytest.raises(ValueError, match="voi must be one of"):
        DicomOptions(voi="auto")
    with pytest.raises(ValueError, match="bits must be one of"):
        DicomOptions(bits=12)
    with pytest.raises(ValueError, match="frames must be one of"):
        DicomOptions(frames="first")
    with pytest.raises(ValueError, match="window_center"):
        DicomOptions(voi="given", window_center=40)
    with pytest.raises(ValueError, match="hash_key"):
        read_dicom(bundled("CT_small.dcm"), DicomOptions(), hash_key=b"")
