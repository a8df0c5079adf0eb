"""dataset.dicom and dataset.dicom_header keep patients out of their outputs: a keyed hash
instead of the patient, and no identifier of any bundled or shared DICOM in any image, info,
error or log line."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
from pathlib import Path

import numpy as np
import pytest

from dataset.dicom import read_dicom
from dataset.dicom_header import DicomInfo, read_dicom_info
from dataset.dicom_options import DicomError, DicomOptions
from tests.dicom_fixtures import KEY, UNRENDERABLE, write_dicom
from tests.dicom_identifiers import identifiers, pixel_files


def test_info_holds_a_keyed_hash_not_the_patient(tmp_path):
    pixels = np.zeros((2, 2), np.uint8)
    by_id = write_dicom(tmp_path / "a.dcm", pixels, PatientID="PID-12345",
                        PatientName="Doe^Jane", BodyPartExamined=" CHEST ", Modality="CR")
    _, info = read_dicom(by_id, DicomOptions(), hash_key=KEY)
    assert info == DicomInfo(body_part="CHEST", modality="CR", patient_key=hmac.new(
        KEY, b"id:PID-12345", hashlib.sha256).hexdigest())
    _, other_key = read_dicom(by_id, DicomOptions(), hash_key=b"another key")
    assert other_key.patient_key != info.patient_key
    by_name = write_dicom(tmp_path / "b.dcm", pixels, PatientName="Doe^Jane",
                          PatientBirthDate="19700101")
    assert read_dicom(by_name, DicomOptions(), hash_key=KEY)[1].patient_key is not None
    anonymous = write_dicom(tmp_path / "c.dcm", pixels)
    assert read_dicom(anonymous, DicomOptions(), hash_key=KEY)[1] == DicomInfo(None, None, "OT")
    # The header only, with where its pixel data's value is (the file's last 4 bytes).
    header = read_dicom_info(by_id, DicomOptions(), hash_key=KEY)
    assert header == dataclasses.replace(info, pixel_data=(by_id.stat().st_size - 4, 4))
    with pytest.raises(DicomError, match="not a DICOM file"):
        read_dicom_info(Path(__file__), DicomOptions(), hash_key=KEY)


def test_no_identifier_in_any_output_of_the_corpus(caplog, shared_data_or_none):
    paths = list(pixel_files())
    if shared_data_or_none is not None:
        paths += sorted((shared_data_or_none / "dicom-samples").rglob("*.dcm"))
    checked = 0
    secrets_of = {path: identifiers(path) for path in paths}
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        for path, secrets in secrets_of.items():
            try:
                # The size guard turns the eight ~2k x 2k radiographs into fast
                # errors, whose messages are checked like any output.
                images, info = read_dicom(path, DicomOptions(force=True, max_pixels=2**21),
                                          hash_key=KEY)
                outputs = [image.png for image in images] + [repr(info).encode()]
            except DicomError as error:
                assert (path.name in UNRENDERABLE or "too large" in str(error)
                        or "not an image of anatomy" in str(error)), str(error)
                outputs = [str(error).encode()]
            for secret in secrets:
                assert not any(secret.encode() in output for output in outputs), path.name
            checked += bool(secrets)
    logged = caplog.text
    assert not any(secret in logged for secrets in secrets_of.values() for secret in secrets)
    print(f"privacy: {len(paths)} files, {checked} with identifiers, none leaked")
    assert checked > 50


@pytest.fixture
def shared_data_or_none():
    from tests.conftest import SHARED_DATA

    return SHARED_DATA if (SHARED_DATA / "dicom-samples").is_dir() else None
