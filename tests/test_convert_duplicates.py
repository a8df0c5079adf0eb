"""Files with the same bytes under different names (dataset.duplicates): found cheaply, kept
in one split, and warned of when their labels or their given splits differ."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from dataset import duplicates
from dataset.dicom_header import read_dicom_info
from dataset.dicom_options import DicomOptions
from tests.conftest import write_image
from tests.dicom_fixtures import write_dicom
from tests.test_convert import convert, split_of_files


def _recording_map(calls):
    def imap(function, tasks, chunksize):
        calls.extend(tasks)
        return map(function, tasks)
    return imap


def test_identical_files_compares_sizes_then_prefixes_then_whole_files(tmp_path):
    prefix = bytes(range(256)) * 256  # 64 KiB
    contents = {
        "a.bin": b"x" * 10, "copy-of-a.bin": b"x" * 10, "same-size.bin": b"y" * 10,
        "long.bin": prefix + b"tail", "copy-of-long.bin": prefix + b"tail",
        "other-tail.bin": prefix + b"TAIL",  # same size and first 64 KiB as long.bin
        "other-prefix.bin": b"z" + prefix[1:] + b"tail",
        "empty1.bin": b"", "empty2.bin": b"", "unique.bin": b"only one of this size",
    }
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    calls = []
    found = duplicates.identical_files({name: str(tmp_path / name) for name in contents},
                                       _recording_map(calls))
    assert found == [["a.bin", "copy-of-a.bin"], ["copy-of-long.bin", "long.bin"]]
    read_whole = sorted(Path(path).name for path, _, length, _ in calls if length > 64 * 1024)
    # The file whose first 64 KiB differ is not read whole; nor are the short ones again.
    assert read_whole == ["copy-of-long.bin", "long.bin", "other-tail.bin"]
    assert not {Path(path).name for path, *_ in calls} & {"unique.bin", "empty1.bin"}
    # From a start offset (a DICOM file's pixel data): headers of other lengths do not matter.
    (tmp_path / "other-header.bin").write_bytes(b"HEADER" + b"x" * 10)
    found = duplicates.identical_files(
        {name: str(tmp_path / name) for name in ("a.bin", "other-header.bin", "same-size.bin")},
        _recording_map([]), parts={"other-header.bin": (6, None)})
    assert found == [["a.bin", "other-header.bin"]]


def _images_with_copies(root: Path, copies: int) -> list[tuple[str, str]]:
    """Two classes of distinct images, plus `copies` copies of training images under other
    names (each its own group by file stem); returns (original, copy) relpaths."""
    rng = np.random.default_rng(0)
    for name in ("Chest", "Hand"):
        for index in range(20):
            write_image(root / name / f"{name.lower()}{index:03d}.png",
                        rng.integers(0, 255, (8, 8), dtype=np.uint8))
    pairs = []
    for index in range(copies):
        name = ("Chest", "Hand")[index % 2]
        original = f"{name}/{name.lower()}{index:03d}.png"
        copy = f"{name}/again{index:03d}.png"
        shutil.copyfile(root / original, root / copy)
        pairs.append((original, copy))
    return pairs


def test_copies_under_other_names_are_kept_in_one_split(tmp_path):
    pairs = _images_with_copies(tmp_path / "ds", copies=16)
    manifest = convert(tmp_path / "ds", tmp_path / "out", need_split="tvt_split",
                       validation_size=0.25, test_size=0.25)
    split_of = split_of_files(tmp_path / "out")
    # Drawn by file stem alone, a pair would share its split with probability
    # 0.5**2 + 2 * 0.25**2 = 0.375, and all 16 pairs with 0.375**16 = 2e-7.
    assert all(split_of[original] == split_of[copy] for original, copy in pairs)
    assert len({split_of[original] for original, _ in pairs}) > 1  # the sets are still spread
    assert manifest["warnings"] == [
        "16 file(s) are copies of another's image (the same bytes, or DICOM pixel data; e.g. "
        f"{pairs[0][1]} and {pairs[0][0]}): each set is kept in one split"]


def test_an_image_in_many_groups_is_a_placeholder_not_a_copy(tmp_path):
    """An image in more than MAX_GROUPS_JOINED groups (a blank frame, a logo page) is warned
    of, naming two files and the set's size, and its groups are not joined: they would make
    one group of unrelated patients. Three copies are joined."""
    root = tmp_path / "ds"
    _images_with_copies(root, copies=0)
    for index in range(3):
        shutil.copyfile(root / "Hand/hand000.png", root / f"Hand/copy{index}.png")
    for index in range(duplicates.MAX_GROUPS_JOINED + 2):
        write_image(root / "Chest" / f"blank{index}.png", np.zeros((8, 8), np.uint8))
    manifest = convert(root, tmp_path / "out", need_split="tt_split", test_size=0.5)
    assert manifest["warnings"] == [
        "3 file(s) are copies of another's image (the same bytes, or DICOM pixel data; e.g. "
        "Hand/copy0.png and Hand/copy1.png, one of 4 alike): each set is kept in one split",
        "1 image(s) recur in more than 4 groups each (e.g. Chest/blank0.png and "
        "Chest/blank1.png, one of 6 alike): a blank or placeholder image? Its copies stay in "
        "their groups' splits"]
    split_of = split_of_files(tmp_path / "out")
    assert len({split_of[f"Hand/copy{index}.png"] for index in range(3)}
               | {split_of["Hand/hand000.png"]}) == 1
    assert len({split_of[f"Chest/blank{index}.png"] for index in range(6)}) == 2


def test_a_dicom_image_under_two_patients_is_kept_in_one_split(tmp_path):
    """The same pixels under two headers (a scan anonymised twice: two pseudonyms, new UIDs):
    its two patients are one group. Other images of one size stay apart."""
    root = tmp_path / "ds"
    rng = np.random.default_rng(0)
    for name in ("Chest", "Hand"):
        (root / name).mkdir(parents=True)
    for patient in range(12):
        for name in ("Chest", "Hand"):
            write_dicom(root / name / f"p{patient:02d}.dcm",
                        rng.integers(0, 255, (8, 8), dtype=np.uint8), PatientID=f"P{patient}")
    again = [(f"{name}/p{patient:02d}.dcm", f"{name}/again{patient:02d}.dcm")
             for patient in range(12) for name in ("Chest", "Hand")]
    for original, copy in again:
        pixels = pydicom.dcmread(root / original).pixel_array
        write_dicom(root / copy, pixels, PatientID="PSEUDONYM-" + copy)
    assert (root / again[0][0]).read_bytes() != (root / again[0][1]).read_bytes()
    manifest = convert(root, tmp_path / "out", need_split="tt_split", test_size=0.5)
    split_of = split_of_files(tmp_path / "out")
    assert all(split_of[original] == split_of[copy] for original, copy in again)
    assert len(set(split_of.values())) == 2
    assert any(warning.startswith("24 file(s) are copies of another's image") for warning in
               manifest["warnings"]), manifest["warnings"]


def test_the_same_pixels_in_either_vr_encoding_are_one_image():
    """pydicom's MR_small in explicit and implicit VR: other element headers before the pixel
    data and trailing padding after it in one, the same 8,192 bytes of pixels."""
    paths = {name: get_testdata_file(name) for name in ("MR_small.dcm", "MR_small_implicit.dcm",
                                                        "CT_small.dcm")}
    parts = {name: read_dicom_info(path, DicomOptions(), hash_key=b"k").pixel_data
             for name, path in paths.items()}
    assert {length for _, length in parts.values()} == {8192, 32768}  # (not the padding after)
    assert duplicates.identical_files(paths, _recording_map([]), parts=parts) == [
        ["MR_small.dcm", "MR_small_implicit.dcm"]]


def test_copies_with_different_labels_are_warned_of(tmp_path):
    root = tmp_path / "ds"
    _images_with_copies(root, copies=0)
    shutil.copyfile(root / "Chest/chest000.png", root / "Hand/hand-copy.png")
    manifest = convert(root, tmp_path / "out")
    assert manifest["warnings"] == [
        "1 image(s) have copies (the same bytes, or DICOM pixel data) with different labels "
        "(e.g. Chest/chest000.png (Chest), Hand/hand-copy.png (Hand)): one image taught as two "
        "classes; check their labels"]


def test_copies_across_given_splits_are_warned_of_and_kept_where_given(tmp_path):
    root = tmp_path / "ds"
    _images_with_copies(root / "train", copies=0)
    _images_with_copies(root / "test", copies=0)  # the same seed: the same 40 images
    manifest = convert(root, tmp_path / "out", need_split="predefined")
    assert manifest["splits"]["test"]["num_examples"] == 40
    assert (
        "40 image(s) have copies in more than one of the given splits (e.g. "
        "test/Chest/chest000.png (test) and train/Chest/chest000.png (train)); the predefined "
        "split is kept as given, so its evaluation scores images the model trained on"
        ) in manifest["warnings"]


def test_pixel_data_written_as_un_is_found_by_its_own_length(tmp_path):
    """An explicit VR file whose Pixel Data element says UN (written without the tag's VR):
    its 4-byte length follows the VR. Read as an implicit length, "UN\\0\\0" was 20,053 bytes,
    so two images alike in their first rows only were copies, and their groups joined. And
    pydicom's SC_rgb_jpeg has an implicit VR element in an explicit VR file: still found."""
    first = np.zeros((256, 256), np.uint16)
    second = first.copy()
    second[200:] = 1000  # the same first 200 rows
    paths = {}
    for name, pixels in (("a.dcm", first), ("b.dcm", second), ("a-again.dcm", first)):
        paths[name] = str(write_dicom(tmp_path / name, pixels, PatientID=name))
        ds = pydicom.dcmread(paths[name])
        ds["PixelData"].VR = "UN"
        ds.save_as(paths[name])
    assert b"\xe0\x7f\x10\x00UN\x00\x00" in Path(paths["a.dcm"]).read_bytes()
    parts = {name: read_dicom_info(path, DicomOptions(), hash_key=b"k").pixel_data
             for name, path in paths.items()}
    assert {length for _, length in parts.values()} == {first.nbytes}
    assert duplicates.identical_files(paths, _recording_map([]), parts=parts) == [
        ["a-again.dcm", "a.dcm"]]
    mixed = get_testdata_file("SC_rgb_jpeg.dcm")
    offset, length = read_dicom_info(mixed, DicomOptions(), hash_key=b"k").pixel_data
    assert length is None  # encapsulated
    assert Path(mixed).read_bytes()[offset:].startswith(pydicom.dcmread(mixed).PixelData)


def test_a_predefined_layouts_copies_do_not_join_its_csv_groups(tmp_path):
    """Joined, a copy's group took in the original's --groups_csv group, which was then
    warned of as lying in two given splits, though the CSV put it in one."""
    root = tmp_path / "ds"
    _images_with_copies(root / "train", copies=0)
    _images_with_copies(root / "test", copies=0)
    groups = tmp_path / "groups.csv"
    groups.write_text("file,group\n" + "".join(
        f"{split}/{name}/{name.lower()}{index:03d}.png,{split}-{index}\n"
        for split in ("train", "test") for name in ("Chest", "Hand") for index in range(20)))
    manifest = convert(root, tmp_path / "out", need_split="predefined", groups_csv=str(groups))
    assert not any("--groups_csv group(s)" in warning for warning in manifest["warnings"])
    assert any(warning.startswith("40 image(s) have copies in more than one of the given")
               for warning in manifest["warnings"]), manifest["warnings"]
