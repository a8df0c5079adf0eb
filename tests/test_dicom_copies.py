"""One DICOM image in two transfer syntaxes (a lossless compressed copy of an uncompressed
scan, a big-endian copy of a little-endian one): its pixel-data bytes differ, its decoded
pixels do not (dataset.duplicates decoded_copies; a 16-bit big-endian file is compared by its
bytes swapped, nothing decoded). Found, kept in one split; other images of the same size
never joined. What is decoded: files of a size in two syntaxes, files sharing a SOP Instance
UID (kept as a keyed hash), once per content and not where the UID is on many files."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless, generate_uid

from dataset import duplicates
from dataset.dicom_header import read_dicom_info
from dataset.dicom_options import DicomOptions
from tests.test_convert import assert_pairs_share_a_split, convert

# pydicom's own MR_small (64x64 signed 16-bit) in five encodings; decoded, all one image.
MR_SMALL = ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm",
            "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm")


def _save(ds, path, pixels=None, **attributes):
    """``ds`` saved as ``path`` with ``attributes`` set, RLE-compressed from ``pixels``."""
    ds = pydicom.dcmread(ds) if isinstance(ds, str) else ds
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    if pixels is not None:
        ds.compress(RLELossless, pixels, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def _found(paths, calls=None):
    """identical_files over ``paths`` as the converter calls it (the headers' pixel parts and
    layouts); ``calls`` gets (task function, file) of each task."""
    def imap(function, tasks, chunksize):
        if calls is not None:
            calls.extend((function.__name__, task[0]) for task in tasks)
        return map(function, tasks)
    infos = {name: read_dicom_info(path, DicomOptions(), hash_key=b"k")
             for name, path in paths.items()}
    return duplicates.identical_files(
        paths, imap, parts={name: info.pixel_data for name, info in infos.items()},
        layouts={name: info.pixel_layout for name, info in infos.items() if info.pixel_layout})


def test_one_image_in_five_syntaxes_is_one_set_and_other_images_of_its_size_are_not(tmp_path):
    paths = {name: get_testdata_file(name) for name in MR_SMALL}
    pixels = pydicom.dcmread(paths["MR_small.dcm"]).pixel_array
    other = np.roll(pixels, 1, axis=0)  # another image of the same size and type
    paths["other.dcm"] = _save(get_testdata_file("MR_small.dcm"), tmp_path / "other.dcm",
                               PixelData=other.tobytes())
    paths["other_rle.dcm"] = _save(get_testdata_file("MR_small.dcm"),
                                   tmp_path / "other_rle.dcm", pixels=other.copy())
    # Its very values as a negative (MONOCHROME1, compressed anew): another image on screen.
    paths["negative_rle.dcm"] = _save(get_testdata_file("MR_small.dcm"),
                                      tmp_path / "negative_rle.dcm", pixels=pixels.copy(),
                                      PhotometricInterpretation="MONOCHROME1")
    calls = []
    assert _found(paths, calls) == [sorted(MR_SMALL), ["other.dcm", "other_rle.dcm"]]
    # No two pixel data alike in bytes: each set above was found decoded.
    assert len({pydicom.dcmread(path).PixelData for path in paths.values()}) == len(paths)


def test_only_files_of_one_size_in_two_syntaxes_are_decoded(tmp_path):
    """Decoding costs: with no compressed file nothing is decoded; nor is a compressed file
    of a size no other file has, nor files of one size all compressed one way."""
    paths = {name: get_testdata_file(name) for name in ("MR_small.dcm", "CT_small.dcm")}
    calls = []
    assert _found(paths, calls) == [] and calls == []
    paths["rle.dcm"] = _save(get_testdata_file("CT_small.dcm"), tmp_path / "rle.dcm",
                             pixels=np.zeros((128, 128), np.int16) + 7,
                             Rows=128, Columns=128)
    paths["MR_small_RLE.dcm"] = get_testdata_file("MR_small_RLE.dcm")
    assert _found(paths, calls) == [["MR_small.dcm", "MR_small_RLE.dcm"]]
    decoded = sorted(name.rsplit("/", 1)[-1] for function, name in calls
                     if function == "pixel_digest_task")
    assert decoded == ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "rle.dcm"]
    paths.pop("CT_small.dcm")
    calls.clear()
    _found(paths, calls)
    assert "rle.dcm" not in {name.rsplit("/", 1)[-1] for function, name in calls
                             if function == "pixel_digest_task"}
    # Two files of one size, both RLE, each its own instance (UID): not decoded.
    rolled = np.roll(pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array, 1, axis=0)
    paths = {"a.dcm": get_testdata_file("MR_small_RLE.dcm"),
             "b.dcm": _save(get_testdata_file("MR_small.dcm"), tmp_path / "b.dcm",
                            pixels=rolled.copy(), SOPInstanceUID=generate_uid())}
    calls.clear()
    assert _found(paths, calls) == []
    assert "pixel_digest_task" not in {function for function, _ in calls}
    # Under one UID (an edited image that kept it): decoded, and not joined.
    paths["b.dcm"] = _save(get_testdata_file("MR_small.dcm"), tmp_path / "b.dcm",
                           pixels=rolled.copy(), SOPInstanceUID=pydicom.dcmread(
                               paths["a.dcm"]).SOPInstanceUID)
    assert _found(paths, calls) == []
    decoded = sorted(name for function, name in calls if function == "pixel_digest_task")
    assert decoded == sorted(paths.values())


def test_a_big_endian_copy_is_found_by_its_values_among_slices_of_its_size_none_decoded(
        tmp_path):
    """A 16-bit big-endian file's bytes swapped are its values: it is compared as a
    little-endian file is, by its bytes. Compared decoded, one big-endian slice in a folder
    of little-endian slices of its size had every slice decoded (201 for 200 CT slices)."""
    pixels = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    paths = {name: get_testdata_file(name) for name in ("MR_small.dcm",
                                                        "MR_small_bigendian.dcm")}
    paths["MR_small_bigendian_copy.dcm"] = shutil.copy(paths["MR_small_bigendian.dcm"],
                                                       tmp_path / "bigendian_copy.dcm")
    for shift in (1, 2, 3):  # other slices of the size, little-endian
        paths[f"other{shift}.dcm"] = _save(
            get_testdata_file("MR_small.dcm"), tmp_path / f"other{shift}.dcm",
            PixelData=np.roll(pixels, shift, axis=0).tobytes(), SOPInstanceUID=generate_uid())
    calls = []
    assert _found(paths, calls) == [["MR_small.dcm", "MR_small_bigendian.dcm",
                                     "MR_small_bigendian_copy.dcm"]]
    assert "pixel_digest_task" not in {function for function, _ in calls}
    # With an RLE copy of their size, all are decoded (two syntaxes), and it joins them.
    paths["MR_small_RLE.dcm"] = get_testdata_file("MR_small_RLE.dcm")
    paths.pop("MR_small.dcm")
    assert _found(paths) == [["MR_small_RLE.dcm", "MR_small_bigendian.dcm",
                              "MR_small_bigendian_copy.dcm"]]


def test_a_big_endian_file_with_a_little_endian_files_bytes_is_another_image(tmp_path):
    """The same bytes read in the two byte orders are two images (each 16-bit value's bytes
    swapped): they were joined as copies by the byte comparison."""
    big_endian = get_testdata_file("MR_small_bigendian.dcm")
    relabelled = _save(get_testdata_file("MR_small.dcm"), tmp_path / "relabelled.dcm",
                       PixelData=pydicom.dcmread(big_endian).PixelData)
    assert not (pydicom.dcmread(relabelled).pixel_array
                == pydicom.dcmread(big_endian).pixel_array).all()
    assert _found({"big_endian.dcm": big_endian, "relabelled.dcm": relabelled}) == []


def test_files_sharing_a_uid_are_decoded_once_per_content_and_not_past_a_few(tmp_path):
    """Exact copies (one UID, the same bytes) are the byte comparison's: none is decoded. One
    UID on more contents than MAX_FILES_PER_INSTANCE is a tool's constant, not one image's
    copies: none of those is decoded either, whether in one layout or spread over several."""
    source = get_testdata_file("MR_small_RLE.dcm")
    uid = pydicom.dcmread(source).SOPInstanceUID
    paths = {f"copy{index}.dcm": shutil.copy(source, tmp_path / f"copy{index}.dcm")
             for index in range(3)}
    calls = []
    assert _found(paths, calls) == [sorted(paths)]
    assert "pixel_digest_task" not in {function for function, _ in calls}
    pixels = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    paths = {f"image{index}.dcm": _save(get_testdata_file("MR_small.dcm"),
                                        tmp_path / f"image{index}.dcm",
                                        pixels=np.roll(pixels, index, axis=0),
                                        SOPInstanceUID=uid)
             for index in range(duplicates.MAX_FILES_PER_INSTANCE + 1)}
    assert _found(paths, calls) == []
    assert "pixel_digest_task" not in {function for function, _ in calls}
    paths.popitem()  # as many as MAX_FILES_PER_INSTANCE: decoded, none joined
    assert _found(paths, calls) == []
    assert sum(function == "pixel_digest_task" for function, _ in calls) == len(paths)
    # An anonymiser's constant on images of several sizes, two of each: counted over the
    # layouts (per layout, each pair was decoded).
    paths = {f"rows{rows}_{index}.dcm": _save(
        get_testdata_file("MR_small.dcm"), tmp_path / f"rows{rows}_{index}.dcm",
        pixels=np.roll(pixels, index, axis=0)[:rows].copy(), Rows=rows, SOPInstanceUID=uid)
        for rows in range(60, 65) for index in range(2)}
    assert len(paths) > duplicates.MAX_FILES_PER_INSTANCE
    calls.clear()
    assert _found(paths, calls) == []
    assert "pixel_digest_task" not in {function for function, _ in calls}
    for rows in range(61, 64):  # seven contents, within the cap: the two pairs are decoded
        paths.pop(f"rows{rows}_1.dcm")
    assert len(paths) <= duplicates.MAX_FILES_PER_INSTANCE
    assert _found(paths, calls) == []
    decoded = sorted(name for function, name in calls if function == "pixel_digest_task")
    assert decoded == sorted(path for name, path in paths.items()
                             if name.startswith(("rows60", "rows64")))


def test_a_byte_copy_under_another_layout_does_not_stand_for_a_files_decoding(tmp_path):
    """Of files with equal bytes, one per layout is decoded: the testdata RLE file's byte copy
    with its header's Rows and Columns edited (another layout, first by name) stood for it,
    and its copy by pydicom (one UID), alone in its layout, was not decoded; nor, decoded in
    its place, did it match the JPEG 2000 copy of the RLE file's size (another shape)."""
    rle = get_testdata_file("MR_small_RLE.dcm")
    paths = {"a_reshaped.dcm": _save(rle, tmp_path / "a_reshaped.dcm", Rows=32, Columns=128),
             "b_pydicom.dcm": _save(get_testdata_file("MR_small.dcm"), tmp_path / "b.dcm",
                                    pixels=pydicom.dcmread(rle).pixel_array.copy()),
             "c_testdata.dcm": rle}
    assert pydicom.dcmread(paths["b_pydicom.dcm"]).PixelData != pydicom.dcmread(rle).PixelData
    assert len({pydicom.dcmread(path).SOPInstanceUID for path in paths.values()}) == 1
    assert _found(paths) == [sorted(paths)]
    paths["b_pydicom.dcm"] = get_testdata_file("MR_small_jp2klossless.dcm")
    assert _found(paths) == [sorted(paths)]


def _with_uid_bytes(path, value: bytes) -> str:
    """``path`` (explicit VR little endian) with its SOP Instance UID's value bytes replaced
    as written, padding and all (pydicom strips what it is given)."""
    data = open(path, "rb").read()
    at = data.index(b"\x08\x00\x18\x00UI")
    length = int.from_bytes(data[at + 6:at + 8], "little")
    with open(path, "wb") as file:
        file.write(data[:at + 6] + len(value).to_bytes(2, "little") + value
                   + data[at + 8 + length:])
    return str(path)


def test_the_instance_key_is_of_the_uid_as_read_and_none_without_one(tmp_path):
    """A UI value's padding (NUL, as dcmtk and pydicom write it, or a space) and surrounding
    spaces are not the UID: copies padded otherwise share the key. A missing, empty or blank
    UID gives none: such files are never decoded as sharing one."""
    pixels = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    uids = {"nul": b"1.2.3.45\0", "space": b"1.2.3.45 ", "spaces": b" 1.2.3.45 ",
            "other": b"1.2.3.456\0", "empty": b"", "blank": b"    "}
    paths = {f"{name}.dcm": _with_uid_bytes(_save(
        get_testdata_file("MR_small.dcm"), tmp_path / f"{name}.dcm",
        pixels=np.roll(pixels, index, axis=0)), value)
        for index, (name, value) in enumerate(uids.items())}
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    del ds.SOPInstanceUID
    paths["missing.dcm"] = _save(ds, tmp_path / "missing.dcm", pixels=pixels.copy())
    keys = {name: read_dicom_info(path, DicomOptions(), hash_key=b"k").pixel_layout[2]
            for name, path in paths.items()}
    assert len({keys["nul.dcm"], keys["space.dcm"], keys["spaces.dcm"]}) == 1
    assert None not in {keys["nul.dcm"], keys["other.dcm"]} and keys["other.dcm"] != keys[
        "nul.dcm"]
    assert keys["empty.dcm"] is keys["blank.dcm"] is keys["missing.dcm"] is None
    blank = {name: paths[name] for name in ("empty.dcm", "blank.dcm", "missing.dcm")}
    calls = []
    assert _found(blank, calls) == []
    assert "pixel_digest_task" not in {function for function, _ in calls}


def test_the_header_carries_a_keyed_hash_of_the_instance_uid_never_the_uid():
    path = get_testdata_file("MR_small_RLE.dcm")
    uid = str(pydicom.dcmread(path).SOPInstanceUID)
    info = read_dicom_info(path, DicomOptions(), hash_key=b"k")
    other_key = read_dicom_info(path, DicomOptions(), hash_key=b"another key")
    assert info.pixel_layout[2] and uid not in repr(info)
    assert other_key.pixel_layout[2] != info.pixel_layout[2]
    # The same UID in another file (a JPEG 2000 copy, a big-endian one) has the same key.
    assert read_dicom_info(get_testdata_file("MR_small_jp2klossless.dcm"), DicomOptions(),
                           hash_key=b"k").pixel_layout[2] == info.pixel_layout[2]
    big_endian = read_dicom_info(get_testdata_file("MR_small_bigendian.dcm"), DicomOptions(),
                                 hash_key=b"k")
    assert big_endian.pixel_layout == (info.pixel_layout[0], "1.2.840.10008.1.2.2",
                                       info.pixel_layout[2])
    # A little-endian file's bytes are its values: no layout, compared by its bytes.
    assert read_dicom_info(get_testdata_file("MR_small.dcm"), DicomOptions(),
                           hash_key=b"k").pixel_layout is None


def _pairs_in_two_syntaxes(root, count: int) -> list[tuple[str, str]]:
    """``count`` distinct images, each uncompressed and RLE-compressed under two patients
    (so only their pixels tie them), in two classes; returns (uncompressed, RLE) relpaths."""
    base = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    pairs = []
    for index in range(count):
        name = ("Head", "Chest")[index % 2]
        (root / name).mkdir(parents=True, exist_ok=True)
        pixels = np.roll(base, 3 * index, axis=1)
        pair = (f"{name}/plain{index:02d}.dcm", f"{name}/rle{index:02d}.dcm")
        _save(get_testdata_file("MR_small.dcm"), root / pair[0], PixelData=pixels.tobytes(),
              PatientID=f"plain{index}")
        _save(get_testdata_file("MR_small.dcm"), root / pair[1], pixels=pixels.copy(),
              PatientID=f"rle{index}")
        pairs.append(pair)
    return pairs


def test_an_image_in_two_syntaxes_is_kept_in_one_split_and_an_undecodable_file_is_none(
        tmp_path):
    root = tmp_path / "ds"
    pairs = _pairs_in_two_syntaxes(root, 12)
    # A compressed file of the same size whose pixels cannot be decoded: in no set, and
    # the encode pass reports it as it did.
    broken = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    broken.PixelData = encapsulate([b"\0" * 64])
    _save(broken, root / "Head/broken.dcm", PatientID="broken")
    manifest = convert(root, tmp_path / "out", need_split="tt_split", test_size=0.5,
                       on_error="skip")
    assert_pairs_share_a_split(tmp_path / "out", pairs)
    assert [w for w in manifest["warnings"] if "copies" in w] == [
        "12 file(s) are copies of another's image (the same bytes, or DICOM pixel data; e.g. "
        "Chest/plain01.dcm and Chest/rle01.dcm): each set is kept in one split"]
    assert [skipped["path"] for skipped in manifest["skipped"]] == ["Head/broken.dcm"]
    assert "cannot decode" in manifest["skipped"][0]["reason"]
