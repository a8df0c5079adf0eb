"""Read a DICOM file's header: the dataset, and its non-identifying DicomInfo (patient key,
body part, modality, where the pixel data is), with every error scrubbed of identifiers.

Privacy: patient name, ID, birth date, accession number and UIDs never leave this
module in clear text: DicomInfo carries only keyed hashes, of the patient and (for files
whose pixel bytes are not their values) of the SOP Instance UID, and error messages name
the file and the problem, scrubbed of the file's identifiers. Decoding and
rendering the pixels is ``dataset.dicom``'s job, through ``read_dataset`` and the guards
here (``quiet``, ``scrubbed``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import logging
import os
import struct
import threading
import types
import warnings
import zlib
from pathlib import Path

import pydicom
from pydicom import filereader
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
                         ImplicitVRLittleEndian)

from dataset import magic
from dataset.dicom_display import tag_text as _text
from dataset.dicom_options import DicomError, DicomOptions

# The DICOM reader's logger: its warnings read the same wherever the step lives.
logger = logging.getLogger("dataset.dicom")
_reading = threading.local()


class _QuietWhileReading(logging.Filter):
    """Drops pydicom's log records while a file is read: pydicom logs invalid values
    verbatim, and a value may be a patient name or UID."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_reading, "active", False)


for _name in ("pydicom", "pydicom.pixels.decoders.base", "pydicom.pixels.utils"):
    logging.getLogger(_name).addFilter(_QuietWhileReading())

_IDENTIFIERS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
                "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


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
    # For pixel data whose bytes are not its values (compressed, or big-endian) only:
    # ((Rows, Columns, frames, SamplesPerPixel, BitsAllocated), transfer syntax UID, instance
    # key), which files could decode to the same pixels (dataset.duplicates decoded_copies).
    # The instance key is a keyed hash of the SOP Instance UID (None without one), never the
    # UID: a lossless re-encode keeps the UID, so two encoders' copies share the key.
    # Set by read_dicom_info only.
    pixel_layout: tuple[tuple[int, int, int, int, int], str, str | None] | None = None


def read_dicom_info(path: str | Path, options: DicomOptions, *, hash_key: bytes
                    ) -> DicomInfo:
    """The header's DicomInfo without reading pixel data (e.g. to group splits by
    patient before decoding). Raises DicomError like ``dataset.dicom.read_dicom``."""
    check_key(hash_key)

    def failure(error):
        return f"{path}: unreadable DICOM header ({type(error).__name__})"

    with quiet(), scrubbed(failure) as read:
        read.ds, pixel_data = read_dataset(path, options, header_only=True)
        ds = read.ds
        syntax = str((getattr(ds, "file_meta", None) or {}).get("TransferSyntaxUID", ""))
        layout = ((int(ds.get("Rows") or 0), int(ds.get("Columns") or 0), frame_count(ds),
                   int(ds.get("SamplesPerPixel") or 1), int(ds.get("BitsAllocated") or 0)),
                  syntax, _instance_key(ds, hash_key)
                  ) if pixel_data and (pixel_data[1] is None or syntax == ExplicitVRBigEndian
                                       ) else None
        return dataclasses.replace(header_info(ds, hash_key), pixel_data=pixel_data,
                                   pixel_layout=layout)


def check_key(hash_key: bytes) -> None:
    """Raises ValueError unless `hash_key` (the key of the patient hash) is non-empty bytes."""
    if not isinstance(hash_key, bytes) or not hash_key:
        raise ValueError("hash_key must be non-empty bytes (the key of the patient hash)")


@contextlib.contextmanager
def quiet():
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
def scrubbed(failure):
    """Every error leaves as one DicomError scrubbed of the identifiers of the dataset read
    so far (``read.ds``); errors other than DicomError are worded by ``failure(error)``."""
    read = types.SimpleNamespace(ds=None)
    try:
        yield read
    except DicomError as error:
        raise DicomError(_scrub(str(error), read.ds)) from None
    except Exception as error:
        raise DicomError(_scrub(failure(error), read.ds)) from None


def frame_count(ds: Dataset) -> int:
    """NumberOfFrames, 1 when absent or unreadable."""
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


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


def read_dataset(path: str | Path, options: DicomOptions, *, header_only: bool = False
                 ) -> tuple[Dataset, tuple[int, int | None] | None]:
    """The dataset, and with ``header_only`` where its pixel data's value is
    (``DicomInfo.pixel_data``). Call it inside ``quiet()`` and ``scrubbed()``."""
    try:
        if os.path.getsize(path) == 0:  # as images say it (it was "not a DICOM file", or
            raise DicomError(f"{path}: zero-byte file")  # with --dicom_force "no pixel data")
        if options.force and (image := _image_bytes(path)):  # read as DICOM whatever it is
            raise DicomError(image)
        with open(path, "rb") as handle:
            _check_inflated_size(handle, path, 4 * options.max_pixels, force=options.force)
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


def _check_inflated_size(handle, path, limit: int, *, force: bool) -> None:
    """Refuses a deflated file whose dataset inflates past ``limit`` bytes (4 per max_pixels:
    32-bit samples, the widest rendered). pydicom inflates the whole dataset before reading
    even its header, so a 2 MB file of deflated zeros took 2 GB in every header read, the
    converter's workers and the predictor alike. Counted a chunk at a time, nothing kept;
    leaves ``handle`` at its start. Other files, and damage, are left to pydicom."""
    try:
        start, syntax = _dataset_start(handle, force)
    except Exception:  # damage before the dataset: dcmread fails there too, before inflating
        handle.seek(0)
        return
    if syntax != DeflatedExplicitVRLittleEndian:
        handle.seek(0)
        return
    handle.seek(start)
    inflater, size = zlib.decompressobj(-zlib.MAX_WBITS), 0
    try:
        while size <= limit and not inflater.eof and (data := handle.read(1 << 20)):
            while data and size <= limit:
                size += len(inflater.decompress(data, 1 << 24))
                data = inflater.unconsumed_tail
    except zlib.error:
        pass
    finally:
        handle.seek(0)
    if size > limit:
        raise DicomError(f"{path}: deflated dataset inflates to more than {limit:,} bytes "
                         "(4 per max_pixels)")


def _dataset_start(handle, force: bool) -> tuple[int, str | None]:
    """Where dcmread starts the dataset (past any preamble, file meta and command set), and
    the file meta's transfer syntax, found by pydicom's own steps (private, pinned
    pydicom==3.0.2): a hand-written walk of the file meta missed a file without the preamble
    (--dicom_force), a file meta in implicit VR, a command set and a transfer syntax past
    the first 4 KB, and pydicom inflated each of them whole."""
    filereader.read_preamble(handle, force)
    meta = filereader._read_file_meta_info(handle)
    filereader._read_command_set_elements(handle)
    return handle.tell(), meta.get("TransferSyntaxUID")


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


def header_info(ds: Dataset, hash_key: bytes) -> DicomInfo:
    """The DicomInfo of a dataset read: its patient as a keyed hash, body part, modality."""
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


def _instance_key(ds: Dataset, hash_key: bytes) -> str | None:
    """HMAC-SHA256 of the SOP Instance UID, None without one. Prefixed, as the patient's
    identity is, so that no instance key equals a patient key."""
    uid = _text(ds, "SOPInstanceUID")
    return (hmac.new(hash_key, ("sop:" + uid).encode("utf-8"), hashlib.sha256).hexdigest()
            if uid else None)


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
