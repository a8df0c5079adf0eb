"""dataset.dicom: decoding every transfer syntax, the display pipeline's exact pixel math on
synthetic files, the shared samples, detection and PNG. Bad inputs and missing plugins:
test_dicom_errors.py; privacy: test_dicom_privacy.py."""

from __future__ import annotations

import csv
import io
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from dataset.body_parts import NOT_ANATOMY
from dataset.dicom import is_dicom_file, read_dicom
from dataset.dicom_options import DicomError, DicomOptions
from dataset.png import encode_png
from tests.dicom_fixtures import (KEY, MONO, UNRENDERABLE, bundled, png_array, render,
                                  write_dicom)
from tests.dicom_identifiers import pixel_files


def linear(x, center, width):
    """PS3.3 C.11.2.1.2.1 with ymin=0, ymax=255, truncated to integers."""
    x = np.asarray(x, np.float64)
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    y = np.where(x <= center - 0.5 - (width - 1) / 2, 0, y)
    y = np.where(x > center - 0.5 + (width - 1) / 2, 255, y)
    return np.floor(y).astype(np.uint8)


# --- every transfer syntax in the corpus --------------------------------------------


def test_every_bundled_transfer_syntax_decodes():
    by_syntax = defaultdict(list)
    failures = []
    for path in pixel_files():
        if path.name in UNRENDERABLE:
            continue
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if str(ds.get("Modality", "")).upper() in NOT_ANATOMY:  # refused before decoding
            continue
        by_syntax[str(ds.file_meta.TransferSyntaxUID)].append(path)
    for syntax, paths in sorted(by_syntax.items()):
        smallest = min(paths, key=lambda p: p.stat().st_size)
        try:
            images = render(smallest)
        except DicomError as error:
            failures.append(str(error))
            continue
        assert images and images[0].size > 0
        print(f"{syntax:26s} {pydicom.uid.UID(syntax).name:45s} {len(paths):3d} files, "
              f"rendered {smallest.name}")
    print(f"transfer syntaxes decoded: {len(by_syntax) - len(failures)}")
    assert not failures
    assert len(by_syntax) >= 12  # the corpus's 12 syntaxes, native to JPEG 2000 and RLE


@pytest.mark.parametrize("name", sorted(UNRENDERABLE))
def test_known_bad_bundled_files_fail_cleanly(name):
    path = bundled(name)
    with pytest.raises(DicomError) as error:
        render(path)
    assert path in str(error.value) and "\n" not in str(error.value)


# --- the display pipeline on synthetic files ----------------------------------------


def test_linear_window_matches_the_standard(tmp_path):
    stored = np.arange(-100, 412, dtype=np.int16).reshape(8, 64)
    path = write_dicom(tmp_path / "w.dcm", stored, WindowCenter=150, WindowWidth=201)
    (image,) = render(path)
    np.testing.assert_array_equal(image, linear(stored, 150, 201))
    assert image.min() == 0 and image.max() == 255


def test_rescale_slope_intercept_before_window(tmp_path):
    stored = np.arange(0, 4096, 8, dtype=np.uint16).reshape(16, 32)
    path = write_dicom(tmp_path / "ct.dcm", stored, RescaleSlope=2, RescaleIntercept=-1024,
                       WindowCenter=40, WindowWidth=400)
    (image,) = render(path)
    np.testing.assert_array_equal(image, linear(stored * 2.0 - 1024, 40, 400))


def test_signed_16_bit_minmax_keeps_order(tmp_path):
    stored = np.array([[-32768, -1000, 0], [1000, 20000, 32767]], np.int16)
    (image,) = render(write_dicom(tmp_path / "s.dcm", stored), voi="minmax")
    expected = np.floor((stored - -32768.0) / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(image, expected)
    assert image[0, 0] == 0 and image[1, 2] == 255


def test_monochrome1_is_inverted_after_the_window(tmp_path):
    stored = np.arange(0, 1024, dtype=np.uint16).reshape(16, 64)
    path = write_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1", WindowCenter=300,
                       WindowWidth=200)
    (image,) = render(path)
    unit = np.clip((stored - 299.5) / 199 + 0.5, 0, 1)
    np.testing.assert_array_equal(image, np.floor((1 - unit) * 255).astype(np.uint8))
    assert image[0, 0] == 255 and image[-1, -1] == 0  # low values are white
    inverse = write_dicom(tmp_path / "inv.dcm", stored, WindowCenter=300, WindowWidth=200,
                          PresentationLUTShape="INVERSE")
    np.testing.assert_array_equal(render(inverse)[0], image)


def test_monochrome1_without_window_uses_minmax_inverted(tmp_path):
    stored = np.array([[10, 20], [30, 40]], np.uint16)
    (image,) = render(write_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1"))
    np.testing.assert_array_equal(image, [[255, 170], [85, 0]])


def test_voi_functions_sigmoid_and_linear_exact(tmp_path):
    stored = np.arange(0, 200, dtype=np.uint16).reshape(4, 50)
    sigmoid = write_dicom(tmp_path / "s.dcm", stored, WindowCenter=100, WindowWidth=50,
                          VOILUTFunction="SIGMOID")
    exact = write_dicom(tmp_path / "e.dcm", stored, WindowCenter=100, WindowWidth=50,
                        VOILUTFunction="LINEAR_EXACT")
    x = stored.astype(np.float64)
    np.testing.assert_array_equal(
        render(sigmoid)[0], np.floor(255 / (1 + np.exp(-4 * (x - 100) / 50))).astype(np.uint8))
    np.testing.assert_array_equal(
        render(exact)[0], np.floor(np.clip((x - 100) / 50 + 0.5, 0, 1) * 255).astype(np.uint8))


def test_given_window_and_voi_lut_sequence(tmp_path):
    stored = np.arange(256, dtype=np.uint8).reshape(16, 16)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.add_new(0x00283006, "US", list(range(255, -1, -1)))  # LUTData: an inverting LUT
    path = write_dicom(tmp_path / "lut.dcm", stored, VOILUTSequence=[item], WindowCenter=10,
                       WindowWidth=20)
    np.testing.assert_array_equal(render(path, voi="lut")[0], 255 - stored)
    np.testing.assert_array_equal(render(path)[0], linear(stored, 10, 20))  # window first
    np.testing.assert_array_equal(render(path, voi="given", window_center=128,
                                         window_width=64)[0], linear(stored, 128, 64))
    with pytest.raises(DicomError, match="no VOI LUT Sequence"):
        render(write_dicom(tmp_path / "plain.dcm", stored), voi="lut")


def test_sixteen_bit_output(tmp_path):
    stored = np.array([[0, 1000], [3000, 4000]], np.uint16)
    images, _ = read_dicom(write_dicom(tmp_path / "a.dcm", stored),
                           DicomOptions(voi="minmax", bits=16), hash_key=KEY)
    image = Image.open(io.BytesIO(images[0].png))
    assert image.mode.startswith("I")
    np.testing.assert_array_equal(np.asarray(image), np.floor(stored / 4000 * 65535))


def test_multi_frame_middle_and_all(tmp_path):
    frames = np.stack([np.full((4, 4), 100 * k, np.uint16) for k in range(4)])
    frames[:, 0, 0] = 0  # one dark pixel per frame so min-max is defined
    path = write_dicom(tmp_path / "mf.dcm", frames)
    images, _ = read_dicom(path, DicomOptions(voi="minmax"), hash_key=KEY)
    assert [image.frame for image in images] == [2]  # n // 2, 0-based
    everything, _ = read_dicom(path, DicomOptions(voi="minmax", frames="all"), hash_key=KEY)
    assert [image.frame for image in everything] == [0, 1, 2, 3]
    assert png_array(everything[2].png).tolist() == png_array(images[0].png).tolist()


def test_ybr_full_becomes_rgb(tmp_path):
    ybr = np.array([[[128, 128, 128], [76, 85, 255], [150, 44, 21]]], np.uint8)
    (image,) = render(write_dicom(tmp_path / "ybr.dcm", ybr, "YBR_FULL"))
    expected = np.array([[[128, 128, 128], [255, 0, 0], [0, 255, 0]]])
    assert image.shape == (1, 3, 3)
    assert np.abs(image.astype(int) - expected).max() <= 2


def test_real_ybr_422_jpeg_and_ybr_ict_render_as_rgb():
    for name in ("SC_rgb_dcmtk_+eb+cy+np.dcm", "US1_J2KI.dcm"):
        (image,) = render(bundled(name))
        assert image.ndim == 3 and image.shape[2] == 3


def test_palette_colour_big_endian_matches_little_endian():
    little = render(bundled("OBXXXX1A.dcm"))[0]
    big = render(bundled("OBXXXX1A_expb.dcm"))[0]
    assert little.shape == (600, 800, 3)
    assert len(np.unique(little.reshape(-1, 3), axis=0)) > 2  # really coloured, not grey
    np.testing.assert_array_equal(little, big)


def test_size_guard_refuses_before_decoding(tmp_path):
    path = write_dicom(tmp_path / "huge.dcm", np.zeros((2, 2), np.uint16), Rows=60000,
                       Columns=60000, NumberOfFrames=500)
    with pytest.raises(DicomError, match="too large.*max_pixels"):
        render(path)


def test_missing_transfer_syntax_read_as_implicit_little_endian(caplog):
    path = bundled("OT-PAL-8-face.dcm")  # no file meta, no DICM preamble
    with pytest.raises(DicomError, match="not a DICOM file .*--dicom_force reads it anyway"):
        render(path)
    with caplog.at_level(logging.WARNING, logger="dataset.dicom"):
        (image,) = render(path, force=True)
    assert image.shape == (480, 640, 3)
    assert "Implicit VR Little Endian" in caplog.text and path in caplog.text


def test_shared_samples_render_as_the_manifest_says(shared_data):
    root = shared_data / "dicom-samples"
    rows = list(csv.DictReader((root / "manifest.csv").open()))
    for row in rows:
        path = root / row["staged_path"]
        if row["Modality"] in NOT_ANATOMY:  # a SEG mask, an RT dose grid: nothing to classify
            with pytest.raises(DicomError, match=fr"\({row['Modality']}\), not an image of "
                                                 "anatomy"):
                render(path)
        elif row["decode_pylibjpeg"] == "ok":
            images = render(path)
            expected_channels = 1 if row["PhotometricInterpretation"] in MONO else 3
            assert images[0].shape[:2] == (int(row["Rows"]), int(row["Columns"])), path
            assert (images[0].ndim == 3) == (expected_channels == 3), path
        elif path.name == "OT-PAL-8-face.dcm":  # no file meta: renders only when forced
            assert render(path, force=True)[0].shape == (480, 640, 3)
        else:
            with pytest.raises(DicomError):
                render(path)
    assert len(rows) == 52


def test_is_dicom_file(tmp_path):
    raw = Path(bundled("CT_small.dcm")).read_bytes()
    (tmp_path / "IM0001").write_bytes(raw)
    (tmp_path / "notes.txt").write_text("x" * 200)
    assert is_dicom_file(tmp_path / "IM0001")
    assert is_dicom_file(tmp_path / "anything.DCM")  # the suffix alone is enough
    assert not is_dicom_file(tmp_path / "notes.txt")
    assert not is_dicom_file(tmp_path / "missing")


def test_png_is_deterministic_and_lossless():
    rng = np.random.default_rng(0)
    for array in (rng.integers(0, 256, (5, 7, 1), dtype=np.uint8),
                  rng.integers(0, 65536, (5, 7, 1), dtype=np.uint16),
                  rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)):
        png = encode_png(array)
        assert png == encode_png(array.copy())
        np.testing.assert_array_equal(png_array(png).reshape(array.shape), array)
