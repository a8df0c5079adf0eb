"""Shared by the dataset.dicom tests: synthetic DICOM files, pydicom's bundled files, and
the bundled files known not to render."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dataset.dicom import read_dicom
from dataset.dicom_options import DicomOptions

KEY = b"test-key"
# Bundled files that hold pixel data but cannot be rendered, each with the reason;
# every other bundled file with pixel data must render.
UNRENDERABLE = {
    "JPEG-lossy.dcm": "corrupt 12-bit JPEG (bad SOS): fails with every plugin",
    "JPEG2000-embedded-sequence-delimiter.dcm": "corrupt J2K codestream",
    "MR_truncated.dcm": "truncated pixel data",
    "badVR.dcm": "NumberOfFrames '1A' is not a number",
    "meta_missing_tsyntax.dcm": "no PhotometricInterpretation (after the no-meta warning)",
    "nested_priv_SQ.dcm": "no image pixel module (only a PixelData element)",
}


MONO = ("MONOCHROME1", "MONOCHROME2")


def png_array(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def bundled(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} not installed (needs pydicom-data, see requirements-dev.txt)")
    return path


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2",
                **attributes) -> Path:
    """A minimal valid DICOM file; `attributes` override or add elements."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", generate_uid()
    ds.Modality = "OT"
    frames = pixels.shape[0] if pixels.ndim == 3 + (photometric not in MONO) else 1
    rows, columns = pixels.shape[-3:-1] if photometric not in MONO else pixels.shape[-2:]
    ds.Rows, ds.Columns = rows, columns
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1 if photometric in MONO else 3
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 8 * pixels.dtype.itemsize
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path



def render(path, **options) -> list[np.ndarray]:
    images, _ = read_dicom(path, DicomOptions(**options), hash_key=KEY)
    return [png_array(image.png) for image in images]
