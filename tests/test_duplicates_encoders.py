"""One image written by two encoders within one syntax: different bytes, the same decoded
pixels (dataset.duplicates.decoded_copies). As JPEG baseline (dcmtk's IJG codec and Pillow's
libjpeg-turbo at one quality, Huffman tables optimised or standard, one fragment or several):
found within the one syntax; a lossy copy at another quality, or another image, is not. In a
lossless syntax (RLE, JPEG lossless, JPEG-LS, JPEG 2000), and in JPEG extended where the UID
was kept: found by their shared SOP Instance UID, decoding nothing else; kept in one split by
the converter, local and Beam alike."""

from __future__ import annotations

import io
import logging
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (JPEG2000Lossless, JPEGBaseline8Bit, JPEGExtended12Bit, RLELossless,
                         generate_uid)

from dataset import beam_pipeline
from dataset.conversion_plan import ConversionError
from dataset.convert import DEFAULT_HASH_KEY
from dataset.dicom_header import read_dicom_info
from dataset.dicom_options import DicomOptions
from tests.test_convert import assert_pairs_share_a_split, convert
from tests.test_dicom_copies import _found, _save

DCMCJPEG = shutil.which("dcmcjpeg")
DCMTK = {tool: shutil.which(tool) for tool in ("dcmcrle", "dcmcjpls", "dcmcjpeg")}
DCMCONV = shutil.which("dcmconv")


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


def test_an_8_bit_big_endian_copy_is_found_decoded_ow_or_ob(tmp_path):
    """8-bit samples are swapped in pairs when the pixel data is OW, not when it is OB; the
    header pass does not keep the VR, so an 8-bit big-endian file is decoded (a syntax of its
    own), unlike a 16-bit one (compared by its bytes swapped, test_dicom_copies.py)."""
    if DCMCONV is None:
        pytest.skip("needs dcmtk's dcmconv (apt install dcmtk)")
    pixels = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array.astype(np.int64)
    image = (pixels - pixels.min()) * 255 // (pixels.max() - pixels.min())
    paths = {"little.dcm": _grey8(tmp_path, "little.dcm", image)}
    for vr in ("OW", "OB"):
        ds = pydicom.dcmread(paths["little.dcm"])
        ds["PixelData"].VR = vr
        ds.save_as(tmp_path / f"little_{vr}.dcm", enforce_file_format=True)
        subprocess.run([DCMCONV, "+tb", str(tmp_path / f"little_{vr}.dcm"),
                        str(tmp_path / f"big_{vr}.dcm")], check=True, capture_output=True)
        paths[f"big_{vr}.dcm"] = str(tmp_path / f"big_{vr}.dcm")
    little = pydicom.dcmread(paths["little.dcm"]).PixelData
    assert pydicom.dcmread(paths["big_OW.dcm"]).PixelData != little  # pairs swapped
    assert pydicom.dcmread(paths["big_OB.dcm"]).PixelData == little
    calls = []
    assert _found(paths, calls) == [["big_OB.dcm", "big_OW.dcm", "little.dcm"]]
    assert paths["big_OW.dcm"] in {name for function, name in calls
                                   if function == "pixel_digest_task"}


def _grey12(path, pixels, **attributes) -> str:
    """An uncompressed 12-bit MONOCHROME2 DICOM file of ``pixels`` (JPEG extended holds 12
    bits at most), from pydicom's MR_small (and its SOP Instance UID) with ``attributes``."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
    for keyword in ("WindowCenter", "WindowWidth", "SmallestImagePixelValue",
                    "LargestImagePixelValue"):
        if keyword in ds:
            delattr(ds, keyword)
    return _save(ds, path, PixelData=pixels.astype(np.uint16).tobytes(), **attributes)


def _dcmtk(tool: str, *options):
    """An encoder: ``tool`` (dcmtk; keeps the SOP Instance UID, +un for a lossy syntax)."""
    def encode(source: str, target) -> str:
        subprocess.run([DCMTK[tool], *options, source, str(target)], check=True,
                       capture_output=True)
        return str(target)
    return encode


def _pydicom(syntax: str):
    """An encoder: pydicom's ``compress`` told to keep the UID (it makes a new one by
    default)."""
    def encode(source: str, target) -> str:
        ds = pydicom.dcmread(source)
        ds.compress(syntax, generate_instance_uid=False)
        ds.save_as(target, enforce_file_format=True)
        return str(target)
    return encode


def _refragmented(encode):
    """An encoder: ``encode``'s codestream written in two fragments, its offset table empty."""
    def refragment(source: str, target) -> str:
        ds = pydicom.dcmread(encode(source, target))
        frames = list(generate_frames(ds.PixelData, number_of_frames=1))
        ds.PixelData = encapsulate(frames, fragments_per_frame=2, has_bot=False)
        ds.save_as(target, enforce_file_format=True)
        return str(target)
    return refragment


# Per syntax, two encoders of one image (or one encoder with other settings): their bytes differ.
LOSSLESS_ENCODERS = {
    "RLE": (_dcmtk("dcmcrle"), _pydicom(RLELossless)),
    "JPEG-LS lossless": (_dcmtk("dcmcjpls"), _dcmtk("dcmcjpls", "+pc", "-ot")),
    "JPEG lossless SV1": (_dcmtk("dcmcjpeg", "+e1"), _dcmtk("dcmcjpeg", "+e1", "+fs", "1")),
    "JPEG 2000 lossless": (_pydicom(JPEG2000Lossless),
                           _refragmented(_pydicom(JPEG2000Lossless))),
    # Lossy: DICOM gives a lossy copy a new UID (dcmtk does unless +un); found where kept.
    "JPEG extended, UID kept": (_dcmtk("dcmcjpeg", "+ee", "+un"),
                                _dcmtk("dcmcjpeg", "+ee", "+un", "+fs", "1")),
}


@pytest.mark.parametrize("syntax", sorted(LOSSLESS_ENCODERS))
def test_two_encoders_copies_within_one_syntax_are_found_by_their_shared_uid(tmp_path, syntax):
    if not all(DCMTK.values()):
        pytest.skip("needs dcmtk's dcmcrle, dcmcjpls, dcmcjpeg (apt install dcmtk)")
    first, second = LOSSLESS_ENCODERS[syntax]
    pixels = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array.astype(np.int64)
    image = (pixels - pixels.min()) * 4095 // (pixels.max() - pixels.min())
    source = _grey12(tmp_path / "source.dcm", image)
    paths = {"first.dcm": first(source, tmp_path / "first.dcm"),
             "second.dcm": second(source, tmp_path / "second.dcm"),
             # Other images of the layout, each its own UID: never decoded.
             **{f"other{shift}.dcm": first(_grey12(
                 tmp_path / f"o{shift}.dcm", np.roll(image, shift, axis=0),
                 SOPInstanceUID=generate_uid()), tmp_path / f"other{shift}.dcm")
                for shift in (1, 2)}}
    for path in paths.values():
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == pydicom.dcmread(
            paths["first.dcm"]).file_meta.TransferSyntaxUID
    assert len({pydicom.dcmread(path).PixelData for path in paths.values()}) == len(paths)
    calls = []
    assert _found(paths, calls) == [["first.dcm", "second.dcm"]]
    decoded = sorted(name for function, name in calls if function == "pixel_digest_task")
    assert decoded == sorted([paths["first.dcm"], paths["second.dcm"]])


def test_a_copy_by_another_encoder_under_a_new_uid_is_not_found_nor_decoded(tmp_path):
    """What the shared UID cannot find (dataset/duplicates.py says so): a copy anonymised, or
    re-encoded by a tool that renews the UID (pydicom's default)."""
    if DCMTK["dcmcrle"] is None:
        pytest.skip("needs dcmtk's dcmcrle (apt install dcmtk)")
    source = get_testdata_file("MR_small.dcm")
    renamed = _save(source, tmp_path / "renamed.dcm", SOPInstanceUID=generate_uid())
    paths = {"dcmtk.dcm": _dcmtk("dcmcrle")(source, tmp_path / "dcmtk.dcm"),
             "pydicom.dcm": _pydicom(RLELossless)(renamed, tmp_path / "pydicom.dcm")}
    assert (pydicom.dcmread(paths["dcmtk.dcm"]).pixel_array
            == pydicom.dcmread(paths["pydicom.dcm"]).pixel_array).all()
    calls = []
    assert _found(paths, calls) == []
    assert "pixel_digest_task" not in {function for function, _ in calls}


def _pairs_by_two_encoders(root, count: int) -> list[tuple[str, str]]:
    """``count`` distinct images, each RLE-compressed by dcmtk and by pydicom under two
    patients (so only their pixels tie them; one SOP Instance UID each, as a lossless
    re-encode keeps it), in two classes; returns (dcmtk, pydicom) relpaths."""
    base = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    pairs = []
    for index in range(count):
        name = ("Head", "Chest")[index % 2]
        (root / name).mkdir(parents=True, exist_ok=True)
        source = _save(get_testdata_file("MR_small.dcm"), root.parent / f"source{index}.dcm",
                       PixelData=np.roll(base, 3 * index, axis=1).tobytes(),
                       SOPInstanceUID=generate_uid())
        pair = (f"{name}/dcmtk{index:02d}.dcm", f"{name}/pydicom{index:02d}.dcm")
        _save(_dcmtk("dcmcrle")(source, root / pair[0]), root / pair[0],
              PatientID=f"dcmtk{index}")
        _save(_pydicom(RLELossless)(source, root / pair[1]), root / pair[1],
              PatientID=f"pydicom{index}")
        pairs.append(pair)
    return pairs


def test_two_encoders_copies_are_kept_in_one_split_locally_and_by_beam(
        tmp_path, caplog, capfd):
    """And no SOP Instance UID, nor its keyed hash, is in any output, log or message: an
    undecodable file sharing a pair's UID is decoded with the pair, and skipped."""
    if DCMTK["dcmcrle"] is None:
        pytest.skip("needs dcmtk's dcmcrle (apt install dcmtk)")
    caplog.set_level(logging.DEBUG)
    root = tmp_path / "ds"
    pairs = _pairs_by_two_encoders(root, 12)
    broken = pydicom.dcmread(root / pairs[0][0])
    broken.PixelData = encapsulate([b"\0" * 64])
    _save(broken, root / "Head/broken.dcm", PatientID="broken")
    secrets = set()
    for path in root.rglob("*.dcm"):
        secrets.add(str(pydicom.dcmread(path).SOPInstanceUID))
        secrets.add(read_dicom_info(path, DicomOptions(), hash_key=DEFAULT_HASH_KEY
                                    ).pixel_layout[2])
    assert len(secrets) == 2 * 12  # a UID and its key per pair (the broken file: pair 0's)
    with pytest.raises(ConversionError) as failure:  # on_error="fail": nothing written
        convert(root, tmp_path / "failed", need_split="tt_split", test_size=0.5)
    assert "Head/broken.dcm" in str(failure.value)
    assert not (tmp_path / "failed").exists() or not any((tmp_path / "failed").iterdir())
    local = convert(root, tmp_path / "local", need_split="tt_split", test_size=0.5,
                    on_error="skip")
    assert_pairs_share_a_split(tmp_path / "local", pairs)
    assert [w for w in local["warnings"] if "copies" in w] == [
        "12 file(s) are copies of another's image (the same bytes, or DICOM pixel data; e.g. "
        "Chest/dcmtk01.dcm and Chest/pydicom01.dcm): each set is kept in one split"]
    assert [skipped["path"] for skipped in local["skipped"]] == ["Head/broken.dcm"]
    outputs = [tmp_path / "local"]
    if beam_pipeline.beam is not None:
        from tests.test_beam import assert_same_conversion, convert_beam  # skips without Beam

        beam = convert_beam(root, tmp_path / "beam", need_split="tt_split", test_size=0.5,
                            on_error="skip")
        assert_same_conversion(local, beam, tmp_path / "local", tmp_path / "beam")
        outputs.append(tmp_path / "beam")
    written = [path.read_bytes() for output in outputs for path in output.rglob("*")
               if path.is_file()]
    assert len(written) > 3  # manifest.json, labels.txt, shards
    printed = capfd.readouterr()
    said = [caplog.text, printed.out, printed.err, repr(local), str(failure.value)]
    for secret in secrets:
        assert not any(secret.encode() in data for data in written)
        assert not any(secret in text for text in said)
    if beam_pipeline.beam is None:
        pytest.skip("the Beam half needs apache-beam (pip install -r requirements-beam.txt)")
