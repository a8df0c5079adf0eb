"""Inputs a mutation-fuzzing campaign found mishandled, each rebuilt from a small real file:
every one must be refused with one line naming the file (DICOM) or the problem (JPEG/PNG,
whose path the converter and the predictor add), never pass on to fail later."""

from __future__ import annotations

import io
import re
import shutil
import struct
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate, get_frame

from dataset import images, magic, sources
from dataset.dicom import pixel_digest, read_dicom
from dataset.dicom_options import DicomError, DicomOptions
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
                                f"SamplesPerPixel {samples} (it needs {4 - samples})")
    item = load_item(str(path), ["Head"], DicomOptions(), KEY)
    assert item.error == str(error.value) and item.encoded is None


# --- DICOM: a damaged length, whose value swallows the elements after it ------------------


def test_a_transfer_syntax_that_swallowed_the_file_meta_is_not_quoted(tmp_path):
    # Its length field reached to the end of the file meta: the "UID" held the elements after
    # it, control bytes and a line break among them, and the message quoted it all.
    data = bytearray(open(bundled("MR_small.dcm"), "rb").read())
    meta_end = 144 + struct.unpack("<I", data[140:144])[0]  # after (0002,0000)'s value
    at = data.index(b"\x02\x00\x10\x00UI")
    data[at + 6:at + 8] = struct.pack("<H", meta_end - (at + 8))
    path = tmp_path / "mutant.dcm"
    path.write_bytes(bytes(data))
    expected = f"{path}: unsupported transfer syntax of 79 characters (unknown)"
    with pytest.raises(DicomError, match="^" + re.escape(expected) + "$"):
        read_dicom(path, DicomOptions(), hash_key=KEY)
    with pytest.raises(DicomError, match="^" + re.escape(expected) + "$"):
        pixel_digest(path, DicomOptions())


def test_a_photometric_interpretation_longer_than_its_vr_allows_is_not_quoted(tmp_path):
    # A name met there is no PatientName element any more, so scrubbing could not find it.
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME2\nDoe^Jane"
    path = tmp_path / "mutant.dcm"
    ds.save_as(path)
    with pytest.raises(DicomError) as error:
        read_dicom(path, DicomOptions(), hash_key=KEY)
    assert str(error.value) == f"{path}: unsupported photometric interpretation of 20 characters"
    shutil.copy(bundled("MR_small.dcm"), path)
    assert len(read_dicom(path, DicomOptions(), hash_key=KEY)[0]) == 1


def test_a_value_quoted_by_pydicom_has_its_control_characters_escaped(tmp_path):
    # PixelRepresentation's VR damaged from US to CS: its value, the bytes 01 00, read as the
    # text "\x01", which pydicom's error quoted as it was (a raw control character).
    data = open(bundled("MR_small_jp2klossless.dcm"), "rb").read()
    path = tmp_path / "mutant.dcm"
    path.write_bytes(data.replace(b"\x28\x00\x03\x01US", b"\x28\x00\x03\x01CS", 1))
    with pytest.raises(DicomError) as error:
        read_dicom(path, DicomOptions(), hash_key=KEY)
    assert str(error.value) == (
        f"{path}: cannot decode: ValueError: A (0028,0103) 'Pixel Representation' value of "
        "'\\x01' is invalid, it must be 0 or 1")


# --- DICOM: a compressed frame whose own header claims a larger image ----------------------


def _claiming(frame: bytes, rows: int, columns: int) -> bytes:
    frame = bytearray(frame)
    if (start := frame.find(b"\xff\x4f\xff\x51")) >= 0:  # JPEG 2000 SIZ: Xsiz, Ysiz
        frame[start + 8:start + 16] = struct.pack(">II", columns, rows)
        frame[start + 24:start + 32] = struct.pack(">II", columns, rows)  # one tile
    else:  # a JPEG or JPEG-LS start-of-frame: height, width
        start = next(frame.find(marker) for marker in (b"\xff\xc3", b"\xff\xc1", b"\xff\xf7")
                     if frame.find(marker) >= 0)
        frame[start + 5:start + 9] = struct.pack(">HH", rows, columns)
    return bytes(frame)


@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "JPGExtended.dcm", "JPEG-LL.dcm"])
def test_a_compressed_frame_larger_than_the_image_is_refused_before_decoding(tmp_path, name):
    # The decoders allocate what the codestream claims: at 40000x40000 this 6 KB file took
    # 3 GB and half a minute before pydicom compared the result with Rows and Columns.
    ds = pydicom.dcmread(bundled(name))
    ds.PixelData = encapsulate([_claiming(get_frame(ds.PixelData, 0, number_of_frames=1),
                                          4000, 3000)])
    path = tmp_path / "mutant.dcm"
    ds.save_as(path)
    expected = (f"{path}: compressed frame 0 is 4000x3000, larger than the image size "
                f"{ds.Rows}x{ds.Columns}")
    with pytest.raises(DicomError, match="^" + re.escape(expected) + "$"):
        read_dicom(path, DicomOptions(), hash_key=KEY)
    with pytest.raises(DicomError, match="^" + re.escape(expected) + "$"):
        pixel_digest(path, DicomOptions())


# --- DICOM: a deflated dataset that inflates past any image it could hold -----------------


def _deflate_bomb(path, zeros: int) -> None:
    """image_dfl.dcm with its pixel data replaced by `zeros` bytes, deflated as a whole."""
    data = open(bundled("image_dfl.dcm"), "rb").read()
    meta_end = 144 + struct.unpack("<I", data[140:144])[0]
    body = zlib.decompress(data[meta_end:], -zlib.MAX_WBITS)
    body = body[:body.index(b"\xe0\x7f\x10\x00OB")]  # the dataset up to its pixel data
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [data[:meta_end], deflater.compress(body + b"\xe0\x7f\x10\x00OB\x00\x00"
                                                 + struct.pack("<I", zeros))]
    parts += [deflater.compress(bytes(1 << 20)) for _ in range(zeros >> 20)]
    path.write_bytes(b"".join(parts) + deflater.flush())


def _reshaped_bomb(path, shape: str) -> None:
    """_deflate_bomb's file with its dataset's start moved where pydicom still finds it."""
    data = path.read_bytes()
    meta_end = 144 + struct.unpack("<I", data[140:144])[0]
    meta, body = data[132:meta_end], data[meta_end:]
    if shape == "as written":
        return
    if shape == "no preamble":  # read with --dicom_force only
        data = meta + body
    elif shape == "command set":  # (0000,0100) CommandField, implicit VR, before the dataset
        data = data[:meta_end] + struct.pack("<HHIH", 0, 0x0100, 2, 1) + body
    elif shape == "transfer syntax past 4 KB":  # a long (0002,0001) before it
        at = meta.index(b"\x02\x00\x01\x00OB")
        version = 12 + struct.unpack("<I", meta[at + 8:at + 12])[0]
        meta = (meta[12:at] + b"\x02\x00\x01\x00OB\x00\x00" + struct.pack("<I", 6000)
                + bytes(6000) + meta[at + version:])
        data = data[:128] + b"DICM" + data[132:140] + struct.pack("<I", len(meta)) + meta + body
    else:
        assert shape == "implicit VR file meta"
        implicit, position = b"", 12  # (0002,0000) left out: its length counts explicit headers
        while position < len(meta):
            group, element, vr = struct.unpack("<HH2s", meta[position:position + 6])
            if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
                length = struct.unpack("<I", meta[position + 8:position + 12])[0]
                value, position = meta[position + 12:position + 12 + length], position + 12 + length
            else:
                length = struct.unpack("<H", meta[position + 6:position + 8])[0]
                value, position = meta[position + 8:position + 8 + length], position + 8 + length
            implicit += struct.pack("<HHI", group, element, len(value)) + value
        data = data[:132] + implicit + body
    path.write_bytes(data)


@pytest.mark.parametrize("shape", ["as written", "no preamble", "command set",
                                   "transfer syntax past 4 KB", "implicit VR file meta"])
def test_a_deflate_bomb_is_refused_wherever_pydicom_finds_its_dataset(tmp_path, shape):
    # pydicom inflates the whole dataset before reading even its header: 2 MB of deflated
    # zeros took 2 GB in every header read (converter workers, predictor), 20 MB took 20 GB.
    # A first check walked an explicit VR file meta after the preamble itself, and let pass
    # the other shapes: 4 MB without the preamble took 9 GB in dicom_predict.py --dicom_force,
    # and tf_convert_data.py stored it.
    path = tmp_path / "bomb.dcm"
    _deflate_bomb(path, 64 << 20)
    _reshaped_bomb(path, shape)
    options = DicomOptions(max_pixels=2**20, force=shape == "no preamble")
    expected = f"{path}: deflated dataset inflates to more than 4,194,304 bytes (4 per max_pixels)"
    for read in (lambda: sources.read_dicom_header(str(path), options, KEY),
                 lambda: read_dicom(path, options, hash_key=KEY)):
        with pytest.raises(DicomError, match="^" + re.escape(expected) + "$"):
            read()
    _deflate_bomb(path, 1 << 20)  # within the bound: read as before
    _reshaped_bomb(path, shape)
    assert sources.read_dicom_header(str(path), options, KEY)[2] == "OT"


# --- PNG: damage Pillow decodes past and TensorFlow's decoder (libpng) refuses -----------


def _chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png(mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    pixels = np.arange(48 * 40, dtype=np.uint8).reshape(48, 40)
    image = Image.fromarray(pixels)
    (image.convert("P") if mode == "P" else image).save(buffer, format="PNG")
    return buffer.getvalue()


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    found, position = [], 8
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        found.append((kind, data[position + 8:position + 8 + length]))
        position += 12 + length
    return found


def _rebuilt(chunks, *, crc_of: bytes | None = None) -> bytes:
    return magic.PNG_MAGIC + b"".join(
        _chunk(kind, data, crc=0 if kind == crc_of else None) for kind, data in chunks)


def _damaged(case: str) -> bytes:
    data = _png("P" if case in ("palette without PLTE", "second PLTE") else "L")
    chunks = _chunks(data)
    if case == "IEND's CRC":
        return _rebuilt(chunks, crc_of=b"IEND")
    if case == "IDAT's CRC":
        return _rebuilt(chunks, crc_of=b"IDAT")
    if case == "IEND cut":
        return data[:-3]
    if case == "palette without PLTE":
        return _rebuilt([chunk for chunk in chunks if chunk[0] != b"PLTE"])
    if case == "unknown critical chunk":
        return _rebuilt(chunks[:1] + [(b"ABCD", b"x")] + chunks[1:])
    if case == "split IDAT":
        header, (_, stream), end = chunks[0], chunks[1], chunks[2:]
        # Split before the stream's checksum: Pillow has every pixel by then.
        return _rebuilt([header, (b"IDAT", stream[:-4]), (b"tEXt", b"a\x00b"),
                         (b"IDAT", stream[-4:]), *end])
    if case == "second PLTE":
        return _rebuilt(chunks[:2] + chunks[1:])
    header = bytearray(chunks[0][1])
    if case == "IHDR taller than its data":  # its CRC mended: Pillow padded the rows with black
        header[4:8] = struct.pack(">I", 65535)
    else:
        assert case == "compression method"
        header[10] = 1
    return _rebuilt([(b"IHDR", bytes(header)), *chunks[1:]])


@pytest.mark.parametrize("case, problem", [
    ("IEND's CRC", "CRC error in its IEND chunk (damaged data)"),
    ("IDAT's CRC", "CRC error in its IDAT chunk (damaged data)"),
    ("IEND cut", "truncated (no IEND chunk)"),
    ("palette without PLTE", "palette image without a PLTE chunk"),
    ("unknown critical chunk", "unknown critical chunk 'ABCD'"),
    ("split IDAT", "IDAT chunks not consecutive"),
    ("compression method", "unknown compression method 1"),
    ("second PLTE", "a second PLTE chunk"),
    ("IHDR taller than its data", "image data ends early (1968 of 2686935 bytes)"),
])
def test_png_damage_that_pillow_decodes_past_is_refused(tmp_path, case, problem):
    # Pillow decoded each of these, so the converter stored it, and TensorFlow's decoder then
    # stopped training or a prediction batch with a traceback ("Invalid PNG data").
    data = _damaged(case)
    with pytest.raises(images.ImageError) as error:
        images.validate_image_bytes(data)
    assert str(error.value) == f"undecodable PNG: {problem}"
    path = tmp_path / "damaged.png"
    path.write_bytes(data)
    assert load_item(str(path), ["Head"], DicomOptions(), KEY).error == f"{path}: {error.value}"


@pytest.mark.parametrize("mode", ["L", "P"])
def test_whole_pngs_still_pass_with_their_ancillary_chunks(mode):
    chunks = _chunks(_png(mode))
    data = _rebuilt(chunks[:-1] + [(b"tEXt", b"Comment\x00fuzz")] + chunks[-1:])
    assert images.validate_image_bytes(data).width == 40
    assert images.validate_image_bytes(data + b"after IEND").height == 48
