"""Decode a DICOM file's pixels into display-ready PNG frames, the way a reference viewer
shows them, and into the digest that finds one image stored in two transfer syntaxes.

The grey display order is the standard's (PS3.3 C.11, PS3.4 N.2): stored values ->
modality LUT (rescale slope/intercept or Modality LUT Sequence) -> VOI (window or VOI
LUT) -> MONOCHROME1 inversion -> 8- or 16-bit output (``dataset.dicom_display``); PNGs
come from ``dataset.png``. Colour images (RGB, YBR_*, PALETTE COLOR) become RGB.
Overlays are never burnt in: they are annotations, not anatomy.
tests/test_dicom_reference.py checks the result against dcmtk.
Reading the file, its DicomInfo and the privacy rules are ``dataset.dicom_header``'s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import struct
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import get_decoder
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID

from dataset.body_parts import not_anatomy
from dataset.dicom_display import colour_display, grey_display
from dataset.dicom_display import tag_text as _text
from dataset.dicom_header import (DicomInfo, check_key, frame_count, header_info, quiet,
                                  read_dataset, scrubbed)
from dataset.dicom_options import DicomError, DicomOptions
from dataset.png import encode_png

_GREY = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
# What to `pip install` when pydicom has no working plugin for a compressed syntax
# (keys: the transfer syntax UID after "1.2.840.10008.1.2.4.").
_PLUGIN_PACKAGES = {
    **dict.fromkeys(("50", "51", "57", "70", "80", "81"), "pylibjpeg and pylibjpeg-libjpeg"),
    **dict.fromkeys(("90", "91", "201", "202", "203"), "pylibjpeg and pylibjpeg-openjpeg"),
}
# Plugin order where several can decode. Pillow's libjpeg(-turbo) is the IJG decoder
# that dcmtk also uses, so 8-bit JPEG renders identically to the reference viewer;
# Pillow cannot do 12-bit or lossless JPEG, where pylibjpeg-libjpeg is the one.
_PREFERRED_PLUGINS = {
    "1.2.840.10008.1.2.4.50": ("pillow", "pylibjpeg"),
    "1.2.840.10008.1.2.4.51": ("pylibjpeg", "pillow"),
    "1.2.840.10008.1.2.4.90": ("pylibjpeg", "pillow"),
    "1.2.840.10008.1.2.4.91": ("pylibjpeg", "pillow"),
}


@dataclasses.dataclass(frozen=True)
class RenderedImage:
    png: bytes
    height: int
    width: int
    channels: int  # 1 (grey) or 3 (RGB)
    frame: int  # 0-based frame index in the file


def is_dicom_file(path: str | Path) -> bool:
    """True for a ``.dcm`` suffix or the 'DICM' marker at byte offset 128."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as stream:
            stream.seek(128)
            return stream.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom(path: str | Path, options: DicomOptions, *, hash_key: bytes
               ) -> tuple[list[RenderedImage], DicomInfo]:
    """Render the selected frames of `path` as PNGs and return its non-identifying info.

    Raises:
      DicomError: unreadable, not DICOM, no/truncated pixel data, unsupported or
        undecodable transfer syntax, missing decoder plugin, absurd dimensions, a
        modality that is not anatomy (NOT_ANATOMY: a SEG mask, an RT dose grid, ...).
      ValueError: empty `hash_key`.
    """
    check_key(hash_key)

    def failure(error):  # pydicom and its plugins raise many types on corrupt data, and
        # quote values, which may hold any byte: control characters are escaped
        text = " ".join(f"{type(error).__name__}: {error}".split())
        return f"{path}: cannot decode: " + "".join(
            character if character.isprintable() else repr(character)[1:-1]
            for character in text)

    with quiet(), scrubbed(failure) as read:
        read.ds, _ = read_dataset(path, options)
        info = header_info(read.ds, hash_key)
        if reason := not_anatomy(info.modality):
            raise DicomError(f"{path}: {reason}")
        arrays = _render(read.ds, path, options)
    images = [RenderedImage(png=encode_png(array), height=array.shape[0],
                            width=array.shape[1], channels=array.shape[2], frame=frame)
              for frame, array in arrays]
    return images, info


def render_arrays(ds: Dataset, path: str | Path, options: DicomOptions
                  ) -> list[tuple[int, np.ndarray]]:
    """The display pipeline without PNG encoding: [(frame, uint8/uint16 [H, W, C])]."""
    with quiet():
        return _render(ds, path, options)


def pixel_digest(path: str | Path, options: DicomOptions) -> bytes:
    """A digest of every frame's decoded stored values (little-endian), their dtype, shape and
    the photometric interpretation they decoded to (a YBR JPEG decodes to RGB; MONOCHROME1 is
    MONOCHROME2's negative): one image in two lossless syntaxes has one digest. One frame in
    memory at a time. Raises DicomError (unreadable, no decoder, over max_pixels)."""
    with quiet(), scrubbed(lambda error: f"{path}: cannot decode") as read:
        ds = read.ds = read_dataset(path, options)[0]
        count, syntax = frame_count(ds), UID(str(ds.file_meta.TransferSyntaxUID))
        if math.prod(int(ds.get(key) or 1) for key in ("Rows", "Columns", "SamplesPerPixel")
                     ) * count > options.max_pixels:
            raise DicomError(f"{path}: image too large (max_pixels={options.max_pixels})")
        decoder = _decoder(syntax, path)
        # An 8-bit JPEG extended file is decoded as baseline is: pylibjpeg's IDCT rounds
        # otherwise than Pillow's, and one image in the two syntaxes had two digests.
        eight_bit_extended = syntax == "1.2.840.10008.1.2.4.51" and int(
            ds.get("BitsStored") or 0) <= 8
        plugin = next((name for name in _PREFERRED_PLUGINS.get(
            "1.2.840.10008.1.2.4.50" if eight_bit_extended else str(syntax), ())
            if name in decoder.available_plugins), "")
        digest = hashlib.blake2b(digest_size=16)
        for index in range(count):
            _check_frame_size(ds, index, count, syntax, path)
            array, properties = decoder.as_array(ds, index=index, decoding_plugin=plugin)
            array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
            if index == 0:
                photometric = str(properties.get("photometric_interpretation", "")).upper()
                digest.update(repr((array.dtype.str, array.shape, count, photometric)).encode())
            digest.update(memoryview(array).cast("B"))
        return digest.digest()


def _render(ds: Dataset, path: str | Path, options: DicomOptions
            ) -> list[tuple[int, np.ndarray]]:
    if "PixelData" not in ds:
        kind = ("float pixel data (not supported)"
                if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds else "no pixel data")
        raise DicomError(f"{path}: {kind}")
    photometric = _text(ds, "PhotometricInterpretation").upper()
    if not photometric:
        raise DicomError(f"{path}: no PhotometricInterpretation (not an image)")
    if photometric not in _GREY + _COLOUR:
        raise DicomError(f"{path}: unsupported photometric interpretation "
                         f"{_quoted(photometric, 16)}")
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    count = frame_count(ds)
    samples = int(ds.get("SamplesPerPixel") or 1)
    # The display pipelines take the decoder's shape on trust: a grey image of 3 samples or an
    # RGB one of 1 decoded, and failed in PNG encoding with a message naming neither.
    needed = 3 if photometric in _COLOUR and photometric != "PALETTE COLOR" else 1
    if samples != needed:
        raise DicomError(f"{path}: photometric interpretation {photometric} with "
                         f"SamplesPerPixel {samples} (it needs {needed})")
    if rows < 1 or columns < 1:
        raise DicomError(f"{path}: invalid image size {rows}x{columns}")
    if rows * columns * count * samples > options.max_pixels:
        raise DicomError(f"{path}: image too large: {rows}x{columns} x {count} frames x "
                         f"{samples} samples > max_pixels={options.max_pixels}")
    syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    decoder = _decoder(syntax, path)
    if not syntax.is_encapsulated:
        expected, actual = get_expected_length(ds, "bytes"), len(ds.PixelData)
        if actual < expected:
            raise DicomError(f"{path}: truncated pixel data ({actual} of {expected} bytes)")
    plugin = next((name for name in _PREFERRED_PLUGINS.get(str(syntax), ())
                   if name in decoder.available_plugins), "")
    indices = [count // 2] if options.frames == "middle" else list(range(count))
    rendered = []
    for index in indices:
        _check_frame_size(ds, index, count, syntax, path)
        try:
            array, properties = decoder.as_array(ds, index=index, decoding_plugin=plugin)
        except Exception:
            if not plugin:
                raise
            # The preferred plugin rejected this stream (e.g. Pillow and 12-bit
            # JPEG): let pydicom try every installed plugin before giving up.
            plugin = ""
            array, properties = decoder.as_array(ds, index=index)
        decoded = str(properties.get("photometric_interpretation", photometric)).upper()
        if photometric in _GREY:
            rendered.append((index, grey_display(array, ds, index, photometric, path, options)))
        else:
            rendered.append((index, colour_display(array, ds, decoded, options)))
    return rendered


# JPEG start-of-frame markers (all but DHT C4, JPG C8, DAC CC), and JPEG-LS's SOF55 (F7).
_JPEG_SOF = {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0),
             0xF7}


def _check_frame_size(ds: Dataset, index: int, count: int, syntax: UID, path: str | Path
                      ) -> None:
    """Refuses a compressed frame whose own header claims more pixels than Rows x Columns:
    the decoders allocate what the codestream says before pydicom compares it with the
    dataset, so a 6 KB file claiming 40000x40000 took 3 GB and half a minute to fail, and
    max_pixels, checked on Rows and Columns, did not bound it."""
    if not syntax.is_encapsulated:
        return
    try:
        size = _codestream_size(get_frame(ds.PixelData, index, number_of_frames=count))
    except Exception:  # damaged fragments: the decoder says so in its own words
        return
    rows, columns = int(ds.Rows), int(ds.Columns)
    if size and size[0] * size[1] > rows * columns:
        raise DicomError(f"{path}: compressed frame {index} is {size[0]}x{size[1]}, larger "
                         f"than the image size {rows}x{columns}")


def _codestream_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) a JPEG, JPEG-LS or JPEG 2000 codestream declares, or None."""
    start = frame.find(b"\xff\x4f\xff\x51", 0, 4096)  # J2K SOC + SIZ (also inside JP2 boxes)
    if start >= 0:
        if len(frame) < start + 24:
            return None
        width, height, left, top = struct.unpack(">4I", frame[start + 8:start + 24])
        return height - top, width - left
    position = 2 if frame[:2] == b"\xff\xd8" else len(frame)
    while position + 9 <= len(frame) and frame[position] == 0xFF:
        marker = frame[position + 1]
        if marker in _JPEG_SOF:
            return struct.unpack(">HH", frame[position + 5:position + 9])
        if marker == 0xDA:  # the scan starts: no frame header before it
            return None
        if marker == 0xFF or 0xD0 <= marker <= 0xD8 or marker == 0x01:  # fill, no length
            position += 1 if marker == 0xFF else 2
            continue
        position += 2 + struct.unpack(">H", frame[position + 2:position + 4])[0]
    return None


def _quoted(value: str, longest: int) -> str:
    """A value read from the file, as a message may quote it: a damaged length makes an
    element swallow the ones after it (control bytes, line breaks, a patient's name that
    scrubbing cannot find, as it is no longer an element of its own), so a value longer than
    its VR allows is only counted."""
    return repr(value) if len(value) <= longest else f"of {len(value)} characters"


def _decoder(syntax: UID, path: str | Path):
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        name = syntax.name if syntax.is_transfer_syntax else "unknown"
        raise DicomError(f"{path}: unsupported transfer syntax "
                         f"{syntax if syntax.is_valid else _quoted(syntax, 64)} ({name})"
                         ) from None
    if not decoder.is_available:
        packages = _PLUGIN_PACKAGES.get(str(syntax).removeprefix("1.2.840.10008.1.2.4."),
                                        "a pydicom pixel-data plugin")
        missing = "; ".join(decoder.missing_dependencies) or "none registered"
        raise DicomError(f"{path}: no installed decoder for {syntax.name} ({syntax}): "
                         f"pip install {packages} (pydicom plugins: {missing})")
    return decoder
