"""Converter on DICOM input: rendering path, patient grouping, tag labels, frames, privacy."""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tensorflow as tf
from pydicom.data import get_testdata_file

from dataset import features
from dataset.conversion_plan import ConversionError
from dataset.manifest import format_summary
from dataset.dicom import read_dicom
from dataset.dicom_options import DicomOptions
from tests.test_convert import convert, read_records, split_of_files

SECRET_IDS = ("SECRET-PATIENT-", "Doe^Secret")


def _write_dicom(path: Path, source: str, *, patient: str, body_part: str | None) -> None:
    dataset = pydicom.dcmread(get_testdata_file(source))
    dataset.PatientID = patient
    dataset.PatientName = f"Doe^Secret{patient[-2:]}"
    # Each file its own instance and image, as in a real series: copies of one image are
    # joined into one group by the converter's duplicate check.
    dataset.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[path.name, patient])
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    pixels = bytearray(dataset.PixelData)
    pixels[:len(dataset.SOPInstanceUID)] = dataset.SOPInstanceUID.encode()
    dataset.PixelData = bytes(pixels)
    if body_part is None:
        dataset.pop("BodyPartExamined", None)
    else:
        dataset.BodyPartExamined = body_part
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)


def _make_dicom_dataset(root: Path, patients: int = 8, files_per_patient: int = 3) -> Path:
    """images/ + labels/: even patients are CT 'Chest', odd ones MR 'Head'."""
    for patient in range(patients):
        source, label, tag = (("CT_small.dcm", "Chest", "CHEST") if patient % 2 == 0
                              else ("MR_small.dcm", "Head", "HEAD"))
        for index in range(files_per_patient):
            stem = f"p{patient:02d}_{index}"
            name = stem if index == 0 else stem + ".dcm"  # no suffix: found by the DICM preamble
            _write_dicom(root / "images" / name, source, patient=f"SECRET-PATIENT-{patient:02d}",
                         body_part=tag)
            (root / "labels").mkdir(parents=True, exist_ok=True)
            (root / "labels" / f"{stem}.txt").write_text(label)
    return root


def test_dicom_rendered_png_label_and_no_identifiers(tmp_path):
    root = _make_dicom_dataset(tmp_path / "ds", patients=2, files_per_patient=2)
    manifest = convert(root, tmp_path / "out", output_name="all")
    records = read_records(tmp_path / "out", "all")
    assert len(records) == 4 and manifest["classes"] == ["Chest", "Head"]
    for record in records:
        relpath = record[features.KEY_FILENAME].decode()
        assert record[features.KEY_FORMAT] == b"png"
        rendered, _ = read_dicom(str(root / relpath), DicomOptions(), hash_key=b"k")
        assert record[features.KEY_ENCODED] == rendered[0].png
        image = tf.io.decode_png(record[features.KEY_ENCODED]).numpy()
        assert image.shape == (record[features.KEY_HEIGHT], record[features.KEY_WIDTH], 1)
        assert image.std() > 0  # a real rendering, not a blank
    assert manifest["label_tag_agreement"] == {"Chest": {"Chest": 2}, "Head": {"Head": 2}}
    for path in (tmp_path / "out").iterdir():
        data = path.read_bytes()
        assert not any(secret.encode() in data for secret in SECRET_IDS), path


def test_patient_groups_never_span_two_splits(tmp_path):
    root = _make_dicom_dataset(tmp_path / "ds", patients=12, files_per_patient=3)
    convert(root, tmp_path / "out", need_split="tt_split", test_size=0.3, seed=5)
    splits_of_patient = collections.defaultdict(set)
    for relpath, split in split_of_files(tmp_path / "out").items():
        splits_of_patient[Path(relpath).name.split("_")[0]].add(split)
    assert len(splits_of_patient) == 12
    assert all(len(s) == 1 for s in splits_of_patient.values()), splits_of_patient
    assert {next(iter(s)) for s in splits_of_patient.values()} == {"train", "test"}


def _splits_by_patient(out: Path) -> dict[str, set[str]]:
    splits_of_patient = collections.defaultdict(set)
    for relpath, split in split_of_files(out).items():
        splits_of_patient[Path(relpath).name.split("_")[0]].add(split)
    return splits_of_patient


def test_a_groups_csv_decides_and_a_patient_split_by_it_is_warned_of(tmp_path):
    """A file the --groups_csv leaves out went with its patient, not with the patient's files
    the CSV named: one patient in two or three splits. A CSV that splits a patient (one group
    per study) is still obeyed, as it must be where every file carries one placeholder
    PatientID, but said."""
    root = _make_dicom_dataset(tmp_path / "ds", patients=8, files_per_patient=3)
    names = sorted(path.name for path in (root / "images").iterdir())
    by_patient = tmp_path / "patients.csv"  # _2: no row
    by_patient.write_text("file,group\n" + "".join(
        f"images/{name},person-{name[:3]}\n" for name in names if "_2" not in name))
    manifest = convert(root, tmp_path / "out", need_split="tvt_split", validation_size=0.3,
                       test_size=0.3, groups_csv=str(by_patient))
    splits_of_patient = _splits_by_patient(tmp_path / "out")
    assert len(splits_of_patient) == 8
    assert all(len(s) == 1 for s in splits_of_patient.values()), splits_of_patient
    assert not any("more than one split" in warning for warning in manifest["warnings"])

    by_file = tmp_path / "studies.csv"
    by_file.write_text("file,group\n" + "".join(f"images/{name},study-{name}\n"
                                                 for name in names))
    manifest = convert(root, tmp_path / "out", need_split="tvt_split", validation_size=0.3,
                       test_size=0.3, groups_csv=str(by_file))
    split = sum(len(s) > 1 for s in _splits_by_patient(tmp_path / "out").values())
    assert split > 0  # the CSV's groups decided
    (warning,) = [w for w in manifest["warnings"] if "more than one split" in w]
    assert warning.startswith(f"{split} DICOM patient(s) lie in more than one split (e.g. ")
    assert "unless their PatientID is a placeholder" in warning

    # One placeholder PatientID on every file: the patient alone is one group (too few for
    # three splits); the CSV of real people splits them, each person whole.
    for path in (root / "images").iterdir():
        dataset = pydicom.dcmread(path)
        dataset.PatientID, dataset.PatientName = "ANONYMOUS", "ANONYMOUS"
        dataset.save_as(path, enforce_file_format=True)
    with pytest.raises(ConversionError):
        convert(root, tmp_path / "out2", need_split="tvt_split", validation_size=0.3,
                test_size=0.3)
    by_person = tmp_path / "people.csv"
    by_person.write_text("".join(f"images/{name},person-{name[:3]}\n" for name in names))
    convert(root, tmp_path / "out2", need_split="tvt_split", validation_size=0.3,
            test_size=0.3, groups_csv=str(by_person))
    splits_of_person = _splits_by_patient(tmp_path / "out2")
    assert all(len(s) == 1 for s in splits_of_person.values()), splits_of_person
    assert len(set().union(*splits_of_person.values())) > 1


def test_scans_without_a_patient_are_grouped_by_their_study(tmp_path):
    """An anonymised export (no PatientID, name or birth date) was grouped by file name:
    each scan's slices were spread over the splits."""
    root = _make_dicom_dataset(tmp_path / "ds", patients=8, files_per_patient=3)
    for path in (root / "images").iterdir():
        dataset = pydicom.dcmread(path)
        for keyword in ("PatientID", "PatientName", "PatientBirthDate"):
            dataset.pop(keyword, None)
        patient, index = int(path.name[1:3]), int(path.name[4])  # p<patient>_<index>
        dataset.StudyInstanceUID = f"1.2.826.0.1.{patient + 1}"
        dataset.SeriesInstanceUID = f"1.2.826.0.2.{patient + 1}.{index + 1}"  # one per file
        dataset.save_as(path, enforce_file_format=True)
    convert(root, tmp_path / "out", need_split="tvt_split", validation_size=0.3,
            test_size=0.3)
    splits_of_scan = collections.defaultdict(set)
    for relpath, split in split_of_files(tmp_path / "out").items():
        splits_of_scan[Path(relpath).name.split("_")[0]].add(split)
    assert len(splits_of_scan) == 8
    assert all(len(s) == 1 for s in splits_of_scan.values()), splits_of_scan


def test_a_predefined_split_that_shares_a_patient_or_group_is_warned_of(tmp_path):
    root = tmp_path / "ds"
    for split in ("train", "test"):
        for index, (source, part) in enumerate([("CT_small.dcm", "Chest"),
                                                ("MR_small.dcm", "Head")]):
            _write_dicom(root / split / part / f"{split}{index}.dcm", source,
                         patient=f"SECRET-PATIENT-{split}{index}", body_part=part.upper())
    manifest = convert(root, tmp_path / "out", need_split="predefined")
    assert not any("given splits" in warning for warning in manifest["warnings"])
    _write_dicom(root / "test" / "Chest" / "again.dcm", "CT_small.dcm",
                 patient="SECRET-PATIENT-train0", body_part="CHEST")
    manifest = convert(root, tmp_path / "out", need_split="predefined")
    assert [w for w in manifest["warnings"] if "given splits" in w] == [
        "1 DICOM patient(s) or --groups_csv group(s) lie in more than one of the given splits "
        "(e.g. test/Chest/again.dcm (test) and train/Chest/train0.dcm (train)); the predefined "
        "split is kept as given, so its evaluation scores patients the model trained on"]
    (tmp_path / "groups.csv").write_text("test/Head/test1.dcm,g\ntrain/Head/train1.dcm,g\n")
    manifest = convert(root, tmp_path / "out", need_split="predefined",
                       groups_csv=str(tmp_path / "groups.csv"))
    assert [w for w in manifest["warnings"] if "given splits" in w][0].startswith("2 DICOM patient(s) or")


def test_tag_labels_with_agreement_table(tmp_path):
    root = _make_dicom_dataset(tmp_path / "ds", patients=2, files_per_patient=2)
    (root / "labels" / "p00_1.txt").write_text("Head")  # the label file disagrees with the tag
    manifest = convert(root, tmp_path / "out", output_name="all", label_source="tag")
    assert manifest["label_tag_agreement"] == {"Chest": {"Chest": 1}, "Head": {"Chest": 1,
                                                                             "Head": 2}}
    assert manifest["splits"]["all"]["class_counts"] == {"Chest": 2, "Head": 2}  # the tag wins
    assert "label file x BodyPartExamined tag" in format_summary(manifest)
    by_label = convert(root, tmp_path / "out2", output_name="all")
    assert by_label["splits"]["all"]["class_counts"] == {"Chest": 1, "Head": 3}


def test_tag_labels_without_label_files(tmp_path):
    root = _make_dicom_dataset(tmp_path / "ds", patients=2, files_per_patient=1)
    for label in (root / "labels").iterdir():
        label.unlink()
    _write_dicom(root / "images" / "untagged.dcm", "CT_small.dcm", patient="SECRET-PATIENT-99",
                 body_part=None)
    # A segmentation mask has no body part either: what it is is the problem to report.
    mask = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    mask.Modality = "SEG"
    mask.pop("BodyPartExamined", None)
    mask.save_as(root / "images" / "mask.dcm", enforce_file_format=True)
    with pytest.raises(ConversionError) as error:
        convert(root, tmp_path / "out", output_name="all", label_source="tag")
    assert error.value.problems == [
        "images/mask.dcm: a segmentation mask (SEG), not an image of anatomy",
        "images/untagged.dcm: no BodyPartExamined tag (--label_source=tag)"]
    manifest = convert(root, tmp_path / "out", output_name="all", label_source="tag",
                       on_error="skip")
    assert manifest["classes"] == ["Chest", "Head"]  # the body parts' names, not the tags'
    assert manifest["skipped"][1] == {"path": "images/untagged.dcm",
                                      "reason": "no BodyPartExamined tag (--label_source=tag)"}


def test_tag_labels_leave_out_a_class_no_tag_gives(tmp_path):
    """With label files the tags are mapped onto their class names; a class whose only files
    are skipped (untagged) stayed a class with 0 examples: a dead output of every model."""
    root = _make_dicom_dataset(tmp_path / "ds", patients=2, files_per_patient=1)
    _write_dicom(root / "images" / "heart.dcm", "CT_small.dcm", patient="SECRET-PATIENT-98",
                 body_part=None)
    (root / "labels" / "heart.txt").write_text("Heart")
    manifest = convert(root, tmp_path / "out", output_name="all", label_source="tag",
                       on_error="skip")
    assert manifest["classes"] == ["Chest", "Head"]
    assert (tmp_path / "out" / "labels.txt").read_text() == "0:Chest\n1:Head\n"
    assert "class 'Heart' is named by label files, but no file's BodyPartExamined maps to it: " \
           "left out of the classes (--label_source=tag)" in manifest["warnings"]
    # By labels the class has its file.
    assert convert(root, tmp_path / "out2", output_name="all")["classes"] == [
        "Chest", "Head", "Heart"]


def test_a_dicom_cds_index_file_is_not_an_input(tmp_path):
    """A CD's DICOMDIR (DICM preamble, no pixels) failed the whole conversion."""
    root = _make_dicom_dataset(tmp_path / "ds", patients=2, files_per_patient=1)
    shutil.copy(get_testdata_file("DICOMDIR"), root / "images" / "DICOMDIR")
    manifest = convert(root, tmp_path / "out", output_name="all")
    assert manifest["splits"]["all"]["num_examples"] == 2 and not manifest["skipped"]


def test_dicom_force_reads_a_suffix_less_file_without_the_preamble(tmp_path):
    """A CD's IM0001 without the 128-byte preamble was "not a JPEG, PNG or DICOM file" even
    with --dicom_force."""
    root = tmp_path / "ds"
    for name in ("Chest", "Head"):
        source = get_testdata_file("CT_small.dcm" if name == "Chest" else "MR_small.dcm")
        for index in range(2):
            path = root / name / f"IM{index:04d}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(open(source, "rb").read()[132:])  # no preamble, no "DICM"
    with pytest.raises(ConversionError) as error:
        convert(root, tmp_path / "out", output_name="all")
    assert error.value.problems[0] == "Chest/IM0000: not a JPEG, PNG or DICOM file"
    manifest = convert(root, tmp_path / "out", output_name="all",
                       dicom=DicomOptions(force=True))
    assert manifest["splits"]["all"]["class_counts"] == {"Chest": 2, "Head": 2}


def test_tag_problems_say_why_no_class_fits(tmp_path):
    """An MR HEAD against a class HeadCT was "matches no class"; without label files, a tag
    that is no body part became a class of its own, then was dropped as "named by label
    files" (there were none; the review)."""
    root = tmp_path / "ds"
    _write_dicom(root / "images" / "ct.dcm", "CT_small.dcm", patient="SECRET-PATIENT-01",
                 body_part="HEAD")
    _write_dicom(root / "images" / "mr.dcm", "MR_small.dcm", patient="SECRET-PATIENT-02",
                 body_part="HEAD")
    (root / "labels").mkdir()
    for stem in ("ct", "mr"):
        (root / "labels" / f"{stem}.txt").write_text("HeadCT")
    with pytest.raises(ConversionError) as error:
        convert(root, tmp_path / "out", output_name="all", label_source="tag")
    assert error.value.problems == ["images/mr.dcm: BodyPartExamined 'HEAD' matches 'HeadCT', "
                                    "a class of another modality than this MR image"]
    for label in (root / "labels").iterdir():
        label.unlink()
    _write_dicom(root / "images" / "odd.dcm", "CT_small.dcm", patient="SECRET-PATIENT-03",
                 body_part="FOO BAR")
    manifest = convert(root, tmp_path / "out", output_name="all", label_source="tag",
                       on_error="skip")
    assert manifest["classes"] == ["Head"] and not manifest.get("warnings")
    assert {entry["path"] for entry in manifest["skipped"]} == {"images/odd.dcm"}


def test_tag_labels_on_a_flat_folder(tmp_path):
    root = tmp_path / "ds"
    for patient, (source, tag) in enumerate([("CT_small.dcm", "CHEST"), ("MR_small.dcm", "HEAD"),
                                             ("CT_small.dcm", "CHEST")]):
        _write_dicom(root / f"scan{patient}.dcm", source, patient=f"SECRET-PATIENT-{patient:02d}",
                     body_part=tag)
    (root / "notes.csv").write_text("not an image, ignored\n")
    manifest = convert(root, tmp_path / "out", output_name="all", label_source="tag")
    # Named as label files and MedNIST name them, not in the tag's capitals.
    assert manifest["splits"]["all"]["class_counts"] == {"Chest": 2, "Head": 1}
    names = sorted(r[features.KEY_FILENAME].decode() for r in read_records(tmp_path / "out", "all"))
    assert names == ["scan0.dcm", "scan1.dcm", "scan2.dcm"]
    # Only a DICOM file carries the tag: a JPEG/PNG still needs a class folder, and without
    # tag labels so does a DICOM file.
    (root / "photo.png").write_bytes(b"\x89PNG")  # refused before it is decoded
    with pytest.raises(ConversionError) as error:
        convert(root, tmp_path / "out2", output_name="all", label_source="tag")
    assert error.value.problems == ["photo.png: image outside a class folder "
                                    "(--label_source=tag labels DICOM files only)"]
    (root / "photo.png").unlink()
    with pytest.raises(ConversionError) as error:
        convert(root, tmp_path / "out2", output_name="all")
    assert error.value.problems == [f"scan{index}.dcm: image outside a class folder "
                                    "(--label_source=tag labels DICOM files by their "
                                    "BodyPartExamined)" for index in range(3)]


def test_multi_frame_all_gives_one_example_per_frame(tmp_path):
    root = tmp_path / "ds"
    source = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    (root / "Head").mkdir(parents=True)
    source.save_as(root / "Head" / "cine.dcm", enforce_file_format=True)
    manifest = convert(root, tmp_path / "out", output_name="all",
                       dicom=DicomOptions(frames="all"))
    names = sorted(r[features.KEY_FILENAME].decode() for r in read_records(tmp_path / "out", "all"))
    assert manifest["splits"]["all"]["num_examples"] == int(source.NumberOfFrames) == len(names)
    assert names == sorted(f"Head/cine.dcm#frame={i}" for i in range(int(source.NumberOfFrames)))
    middle = convert(root, tmp_path / "out2", output_name="all")
    assert middle["splits"]["all"]["num_examples"] == 1


def test_broken_dicom_is_reported_and_nothing_written(tmp_path):
    root = _make_dicom_dataset(tmp_path / "ds", patients=2, files_per_patient=1)
    data = (root / "images" / "p00_0").read_bytes()
    (root / "images" / "p00_0").write_bytes(data[: len(data) - 4000])  # pixel data cut short
    (root / "images" / "p01_0").write_bytes(b"not dicom at all")
    (root / "images" / "p01_0").rename(root / "images" / "p01_0.dcm")
    with pytest.raises(ConversionError) as error:
        convert(root, tmp_path / "out", output_name="all")
    problems = "\n".join(error.value.problems)
    assert "images/p00_0: " in problems and "images/p01_0.dcm: not a DICOM file" in problems
    assert not (tmp_path / "out").exists()


def test_shared_dicom_samples_convert(tmp_path, shared_data):
    source = shared_data / "dicom-samples"
    manifest = convert(source, tmp_path / "out", output_name="all", on_error="skip")
    labels = collections.Counter(p.read_text().strip() for p in (source / "labels").iterdir())
    converted = sum(manifest["splits"]["all"]["class_counts"].values())
    assert converted + len([s for s in manifest["skipped"] if s["path"].startswith("images/")]) \
        >= sum(labels.values())
    assert converted >= 20, json.dumps(manifest["skipped"], indent=1)
    assert np.all([s["reason"] for s in manifest["skipped"]])


UID_NAME = "1.2.840.113619.2.55.3.604688119.868"  # a SOP Instance UID, as PACS exports name


def test_dicom_files_named_by_their_uid_are_read_with_their_labels(tmp_path):
    """os.path.splitext read the UID's last component as a ".868" suffix: such files were
    passed over without a word, in conversion and prediction."""
    from dataset import folder_walk
    from official.core import prediction

    root = tmp_path / "ds"
    for index, (source, part) in enumerate([("CT_small.dcm", "Chest"), ("MR_small.dcm", "Head")]
                                           * 2):
        name = f"{UID_NAME}{index}"
        _write_dicom(root / "images" / name, source, patient=f"SECRET-PATIENT-{index:02d}",
                     body_part=part.upper())
        (root / "labels").mkdir(exist_ok=True)
        (root / "labels" / f"{name}.txt").write_text(part)
    (root / "images" / "notes.868").write_text("not DICOM")  # sniffed, not taken
    assert folder_walk.split_suffix(UID_NAME) == (UID_NAME, "")
    assert folder_walk.split_suffix("scan.dcm") == ("scan", ".dcm")
    assert folder_walk.file_kind(str(root / "images" / f"{UID_NAME}0")) == "dicom"
    assert prediction.collect_files([str(root / "images")]) == sorted(
        str(root / "images" / f"{UID_NAME}{index}") for index in range(4))
    with pytest.raises(ConversionError) as error:
        convert(root, tmp_path / "out", output_name="all")
    assert [str(p) for p in error.value.problems] == [
        "images/notes.868: not a JPEG, PNG or DICOM file"]
    (root / "images" / "notes.868").unlink()
    manifest = convert(root, tmp_path / "out", output_name="all")
    assert manifest["splits"]["all"]["class_counts"] == {"Chest": 2, "Head": 2}
