"""Read a DICOM file into display-ready PNG frames, the way a reference viewer shows it.

The grey display order is the standard's (PS3.3 C.11, PS3.4 N.2): stored values ->
modality LUT (rescale slope/intercept or Modality LUT Sequence) -> VOI (window or VOI
LUT) -> MONOCHROME1 inversion -> 8- or 16-bit output (``dataset.dicom_display``); PNGs
come from ``dataset.png``. Colour images (RGB, YBR_*, PALETTE COLOR) become RGB.
Overlays are never burnt in: they are annotations, not anatomy. tests/test_dicom_reference.py checks the result against dcmtk.

Privacy: patient name, ID, birth date, accession number and UIDs never leave this
module in clear text: DicomInfo carries only a keyed hash of the patient, and error
messages name the file and the problem, scrubbed of the file's identifiers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import logging
import math
import os
import struct
import threading
import types
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID, ImplicitVRLittleEndian

from dataset import magic
from dataset.body_parts import not_anatomy
from dataset.dicom_display import colour_display, grey_display
from dataset.dicom_display import tag_text as _text
from dataset.dicom_options import DicomError, DicomOptions
from dataset.png import encode_png

logger = logging.getLogger(__name__)
_reading = threading.local()


class _QuietWhileReading(logging.Filter):
    """Drops pydicom's log records while read_dicom runs: pydicom logs invalid values
    verbatim, and a value may be a patient name or UID."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_reading, "active", False)


for _name in ("pydicom", "pydicom.pixels.decoders.base", "pydicom.pixels.utils"):
    logging.getLogger(_name).addFilter(_QuietWhileReading())

_GREY = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
_IDENTIFIERS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
                "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
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


@dataclasses.dataclass(frozen=True)
class DicomInfo:
    body_part: str | None  # raw BodyPartExamined, stripped
    patient_key: str | None  # HMAC-SHA256 of the patient identity (without one: of the
    # study, else the series), never the identity
    modality: str | None
    # The pixel data's value in the file, (offset, length; None: to the end), or None when
    # not known (a deflated file, none): copies of one image under other headers (a scan
    # anonymised twice) are found by it. Set by read_dicom_info only.
    pixel_data: tuple[int, int | None] | None = None
    # For compressed (encapsulated) pixel data only: ((Rows, Columns, frames, SamplesPerPixel,
    # BitsAllocated), transfer syntax UID), which files could decode to the same pixels
    # (dataset.duplicates decoded_copies). Set by read_dicom_info only.
    pixel_layout: tuple[tuple[int, int, int, int, int], str] | None = None


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
    _check_key(hash_key)

    def failure(error):  # pydicom and its plugins raise many types on corrupt data
        return f"{path}: cannot decode: " + " ".join(f"{type(error).__name__}: {error}".split())

    with _quiet(), _scrubbed(failure) as read:
        read.ds, _ = _read(path, options)
        info = _info(read.ds, hash_key)
        if reason := not_anatomy(info.modality):
            raise DicomError(f"{path}: {reason}")
        arrays = _render(read.ds, path, options)
    images = [RenderedImage(png=encode_png(array), height=array.shape[0],
                            width=array.shape[1], channels=array.shape[2], frame=frame)
              for frame, array in arrays]
    return images, info


def read_dicom_info(path: str | Path, options: DicomOptions, *, hash_key: bytes
                    ) -> DicomInfo:
    """The header's DicomInfo without reading pixel data (e.g. to group splits by
    patient before decoding). Raises DicomError like read_dicom."""
    _check_key(hash_key)

    def failure(error):
        return f"{path}: unreadable DICOM header ({type(error).__name__})"

    with _quiet(), _scrubbed(failure) as read:
        read.ds, pixel_data = _read(path, options, header_only=True)
        ds = read.ds
        layout = ((int(ds.get("Rows") or 0), int(ds.get("Columns") or 0), _frame_count(ds),
                   int(ds.get("SamplesPerPixel") or 1), int(ds.get("BitsAllocated") or 0)),
                  str(ds.file_meta.get("TransferSyntaxUID", ""))
                  ) if pixel_data and pixel_data[1] is None else None
        return dataclasses.replace(_info(ds, hash_key), pixel_data=pixel_data,
                                   pixel_layout=layout)


def render_arrays(ds: Dataset, path: str | Path, options: DicomOptions
                  ) -> list[tuple[int, np.ndarray]]:
    """The display pipeline without PNG encoding: [(frame, uint8/uint16 [H, W, C])]."""
    with _quiet():
        return _render(ds, path, options)


def pixel_digest(path: str | Path, options: DicomOptions) -> bytes:
    """A digest of every frame's decoded stored values (little-endian), their dtype, shape and
    the photometric interpretation they decoded to (a YBR JPEG decodes to RGB; MONOCHROME1 is
    MONOCHROME2's negative): one image in two lossless syntaxes has one digest. One frame in
    memory at a time. Raises DicomError (unreadable, no decoder, over max_pixels)."""
    with _quiet(), _scrubbed(lambda error: f"{path}: cannot decode") as read:
        ds = read.ds = _read(path, options)[0]
        count, syntax = _frame_count(ds), UID(str(ds.file_meta.TransferSyntaxUID))
        if math.prod(int(ds.get(key) or 1) for key in ("Rows", "Columns", "SamplesPerPixel")
                     ) * count > options.max_pixels:
            raise DicomError(f"{path}: image too large (max_pixels={options.max_pixels})")
        decoder = _decoder(syntax, path)
        plugin = next((name for name in _PREFERRED_PLUGINS.get(str(syntax), ())
                       if name in decoder.available_plugins), "")
        digest = hashlib.blake2b(digest_size=16)
        for index in range(count):
            array, properties = decoder.as_array(ds, index=index, decoding_plugin=plugin)
            array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
            if index == 0:
                photometric = str(properties.get("photometric_interpretation", "")).upper()
                digest.update(repr((array.dtype.str, array.shape, count, photometric)).encode())
            digest.update(memoryview(array).cast("B"))
        return digest.digest()


def _check_key(hash_key: bytes) -> None:
    if not isinstance(hash_key, bytes) or not hash_key:
        raise ValueError("hash_key must be non-empty bytes (the key of the patient hash)")


@contextlib.contextmanager
def _quiet():
    """pydicom logs and warns with element values, which may be identifiers: both are kept
    out of the logs while a file is read (our own messages say what matters)."""
    _reading.active = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _reading.active = False


@contextlib.contextmanager
def _scrubbed(failure):
    """Every error leaves as one DicomError scrubbed of the identifiers of the dataset read
    so far (``read.ds``); errors other than DicomError are worded by ``failure(error)``."""
    read = types.SimpleNamespace(ds=None)
    try:
        yield read
    except DicomError as error:
        raise DicomError(_scrub(str(error), read.ds)) from None
    except Exception as error:
        raise DicomError(_scrub(failure(error), read.ds)) from None


# --- reading -----------------------------------------------------------------------


def _image_bytes(path) -> str | None:
    """What a JPEG or PNG named as DICOM is (the kind is the suffix's, dataset/folder_walk.py),
    or None: it was "not a DICOM file ... --dicom_force", and with that flag "no pixel data".
    Asked only where those would be said, not of every file read."""
    with open(path, "rb") as handle:
        head = handle.read(132)
    image_format = magic.sniff_format(head)
    if image_format is None or head[128:132] == b"DICM":
        return None
    return (f"{path}: {image_format.upper()} bytes, not DICOM: rename it "
            f".{'jpg' if image_format == 'jpeg' else 'png'}")


def _read(path: str | Path, options: DicomOptions, *, header_only: bool = False
          ) -> tuple[Dataset, tuple[int, int | None] | None]:
    """The dataset, and with ``header_only`` where its pixel data's value is
    (``DicomInfo.pixel_data``)."""
    try:
        if os.path.getsize(path) == 0:  # as images say it (it was "not a DICOM file", or
            raise DicomError(f"{path}: zero-byte file")  # with --dicom_force "no pixel data")
        if options.force and (image := _image_bytes(path)):  # read as DICOM whatever it is
            raise DicomError(image)
        with open(path, "rb") as handle:
            ds = pydicom.dcmread(handle, force=options.force, stop_before_pixels=header_only)
            pixel_data = (_pixel_data_value(handle.tell(), handle.read(12),
                                            os.fstat(handle.fileno()).st_size,
                                            implicit_vr=bool(ds.original_encoding[0]))
                          if header_only else None)
    except InvalidDicomError:
        # Both programs that read DICOM (tf_convert_data.py, dicom_predict.py) name the
        # option --dicom_force.
        raise DicomError(_image_bytes(path) or (
            f"{path}: not a DICOM file (no 'DICM' marker or file meta; --dicom_force reads "
            "it anyway)")) from None
    except IsADirectoryError:
        raise DicomError(f"{path}: cannot read: is a directory") from None
    except OSError as error:
        raise DicomError(f"{path}: cannot read: {error.strerror or error}") from None
    meta = getattr(ds, "file_meta", None)
    if (meta is None or "TransferSyntaxUID" not in meta) and not header_only:
        # Old ACR-NEMA style files carry no file meta; implicit VR little endian is
        # the DICOM default encoding, and pixel decoding needs a syntax to be named.
        logger.warning("%s: no transfer syntax in the file meta; reading pixel data as "
                       "Implicit VR Little Endian", path)
        ds.file_meta = meta if meta is not None else pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds, pixel_data


def _pixel_data_value(position: int, element: bytes, file_size: int, *, implicit_vr: bool
                      ) -> tuple[int, int | None] | None:
    """(offset, length; None: to the end) of the pixel data's value, from the first 12 bytes
    of the element a header-only read stopped at; None when that is not pixel data (a file
    without, a deflated file whose offsets are not the file's) or it is cut short. The value,
    not the element: the same pixels in an explicit and an implicit VR encoding (other
    element headers) compare equal, and for native (uncompressed) pixels trailing padding
    after them is left out (encapsulated pixels run to the end of the file).

    ``implicit_vr``: the dataset's encoding as read (an implicit length's first bytes can
    spell a VR). An explicit element's VR is OB, OW or UN (an explicit file written without
    the tag's VR); read as an implicit length, "UN\0\0" was 20053 bytes of pixels and
    padding, so two images alike in their first rows only were copies. Where an explicit
    file's element has no VR (two bytes that are not capitals: some writers switch to
    implicit VR), it is read as implicit, as pydicom reads it."""
    order = {b"\xe0\x7f\x10\x00": "<", b"\x7f\xe0\x00\x10": ">"}.get(element[:4])
    vr = element[4:6]
    if order is None or len(element) < 8:
        return None
    if implicit_vr or not b"AA" <= vr <= b"ZZ":  # the tag, the length
        offset, length = position + 8, struct.unpack(order + "I", element[4:8])[0]
    elif vr in _PIXEL_DATA_VRS and len(element) == 12:  # the tag, the VR, 2 reserved bytes,
        offset, length = position + 12, struct.unpack(order + "I", element[8:12])[0]  # length
    else:  # cut short, or a VR pixel data cannot have: not known where its value is
        return None
    if length == 0xFFFFFFFF:  # encapsulated (compressed): its fragments run to the end
        return offset, None
    return (offset, length) if offset + length <= file_size else None


# The VRs an explicit VR file's Pixel Data element can have (all with a 4-byte length).
_PIXEL_DATA_VRS = (b"OB", b"OW", b"UN")


def _info(ds: Dataset, hash_key: bytes) -> DicomInfo:
    patient = _text(ds, "PatientID")
    if patient:
        identity = "id:" + patient
    else:
        name, birth = _text(ds, "PatientName"), _text(ds, "PatientBirthDate")
        # Without a patient (an anonymised export), the study, else the series, still keeps
        # a scan's slices together: grouped by file name they were spread over every split.
        study, series = _text(ds, "StudyInstanceUID"), _text(ds, "SeriesInstanceUID")
        identity = (f"name:{name}|birth:{birth}" if name or birth else
                    f"study:{study}" if study else f"series:{series}" if series else None)
    key = (hmac.new(hash_key, identity.encode("utf-8"), hashlib.sha256).hexdigest()
           if identity else None)
    return DicomInfo(body_part=_text(ds, "BodyPartExamined") or None, patient_key=key,
                     modality=_text(ds, "Modality") or None)


def _scrub(message: str, ds: Dataset | None) -> str:
    """Remove the file's identifiers from a message (pydicom errors may quote values)."""
    if ds is None:
        return message
    for keyword in _IDENTIFIERS:
        try:
            value = _text(ds, keyword)
        except Exception:  # an unparsable value cannot be quoted either
            continue
        for part in sorted({value, *value.replace("=", "^").split("^")}, key=len, reverse=True):
            if len(part.strip()) >= 3:
                message = message.replace(part.strip(), "<redacted>")
    return message


# --- decoding ----------------------------------------------------------------------


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
        raise DicomError(f"{path}: unsupported photometric interpretation {photometric!r}")
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    count = _frame_count(ds)
    samples = int(ds.get("SamplesPerPixel") or 1)
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


def _frame_count(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def _decoder(syntax: UID, path: str | Path):
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        name = syntax.name if syntax.is_transfer_syntax else "unknown"
        raise DicomError(f"{path}: unsupported transfer syntax {syntax} ({name})") from None
    if not decoder.is_available:
        packages = _PLUGIN_PACKAGES.get(str(syntax).removeprefix("1.2.840.10008.1.2.4."),
                                        "a pydicom pixel-data plugin")
        missing = "; ".join(decoder.missing_dependencies) or "none registered"
        raise DicomError(f"{path}: no installed decoder for {syntax.name} ({syntax}): "
                         f"pip install {packages} (pydicom plugins: {missing})")
    return decoder
