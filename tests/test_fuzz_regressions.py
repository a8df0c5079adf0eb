"""Inputs a mutation-fuzzing campaign found mishandled, each rebuilt from a small real file:
every one must be refused with one line naming the file (DICOM) or the problem (JPEG/PNG,
whose path the converter and the predictor add), never pass on to fail later."""

from __future__ import annotations

import pydicom
import pytest

from dataset.dicom import DicomError, read_dicom
from dataset.dicom_options import DicomOptions
from official.core.prediction import load_item
from tests.dicom_fixtures import KEY, bundled

# --- DICOM: a photometric interpretation its samples contradict -----------------------


@pytest.mark.parametrize("name, photometric, samples", [
    ("MR_small.dcm", "YBR_RCT", 1),  # a colour name on grey pixels: decoded as [H, W]
    ("MR_small.dcm", "RGB", 1),
    ("SC_rgb_small_odd.dcm", "MONOCHROME2", 3),  # a grey name on RGB pixels: [H, W, 3]
])
def test_photometric_that_its_samples_contradict_is_one_line_naming_the_file(
        tmp_path, name, photometric, samples):
    # It failed in PNG encoding: "not enough values to unpack (expected 3, got 2)", a
    # ValueError naming neither the file nor the problem.
    ds = pydicom.dcmread(bundled(name))
    ds.PhotometricInterpretation = photometric
    path = tmp_path / "mutant.dcm"
    ds.save_as(path)
    with pytest.raises(DicomError) as error:
        read_dicom(path, DicomOptions(), hash_key=KEY)
    assert str(error.value) == (f"{path}: photometric interpretation {photometric} with "
                                f"SamplesPerPixel {samples} (it has {4 - samples})")
    item = load_item(str(path), ["Head"], DicomOptions(), KEY)
    assert item.error == str(error.value) and item.encoded is None
