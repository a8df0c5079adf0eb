"""The display pipelines of ``dataset.dicom``. Grey: stored values -> modality LUT (rescale
slope/intercept or Modality LUT Sequence) -> VOI (window or VOI LUT) -> MONOCHROME1 /
INVERSE inversion -> 8- or 16-bit integers (PS3.3 C.11, PS3.4 N.2). Colour: palette, YBR or
RGB -> RGB integers. Arrays in, arrays out: decoding the file stays in ``dataset.dicom``;
reading it, and its privacy rules, in ``dataset.dicom_header``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.uid import UID

from dataset.dicom_options import DicomError, DicomOptions

# The DICOM reader's logger: its warnings read the same wherever the step lives.
logger = logging.getLogger("dataset.dicom")


def tag_text(ds: Dataset, keyword: str) -> str:
    """The element's value as stripped text, "" when absent."""
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def grey_display(stored: np.ndarray, ds: Dataset, frame: int, photometric: str,
                 path: str | Path, options: DicomOptions) -> np.ndarray:
    """Stored grey values of one frame -> display values, uint8/uint16 [H, W, 1].

    Raises:
      DicomError: options.voi == "lut" and the file has no VOI LUT Sequence.
    """
    values = _modality(stored, ds, frame)
    unit = _voi(values, ds, frame, path, options)  # display values in [0, 1]
    # After VOI: the window is defined on the stored polarity. A MONOCHROME1 image
    # (PS3.3 C.7.6.3.1.2) and an INVERSE presentation LUT shape ask for one inversion.
    if photometric == "MONOCHROME1" or tag_text(ds, "PresentationLUTShape").upper() == "INVERSE":
        unit = 1.0 - unit
    return quantise(unit, options.bits)[..., np.newaxis]


def frame_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The functional-group macro for `frame` (enhanced multi-frame), if any."""
    for groups, item_index in (("PerFrameFunctionalGroupsSequence", frame),
                               ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items and item_index < len(items) and items[item_index].get(sequence):
            return items[item_index].get(sequence)[0]
    return None


def _modality(stored: np.ndarray, ds: Dataset, frame: int) -> np.ndarray:
    if ds.get("ModalityLUTSequence"):
        return apply_modality_lut(stored, ds).astype(np.float64)
    source = frame_item(ds, frame, "PixelValueTransformationSequence") or ds
    slope = float(source.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(source.get("RescaleIntercept", 0.0) or 0.0)
    return stored.astype(np.float64) * slope + intercept


def _first(value) -> float | None:
    if value is None:
        return None
    try:
        return float(value[0] if isinstance(value, (list, tuple, pydicom.multival.MultiValue))
                     else value)
    except (TypeError, ValueError, IndexError):
        return None


def _voi(values: np.ndarray, ds: Dataset, frame: int, path: str | Path,
         options: DicomOptions) -> np.ndarray:
    if options.voi == "given":
        return _window(values, options.window_center, options.window_width, "LINEAR")
    if options.voi == "minmax":
        return _minmax(values)
    if options.voi == "lut":
        if not ds.get("VOILUTSequence"):
            raise DicomError(f"{path}: voi='lut' but the file has no VOI LUT Sequence")
        return _voi_lut(values, ds)
    source = frame_item(ds, frame, "FrameVOILUTSequence") or ds
    center, width = _first(source.get("WindowCenter")), _first(source.get("WindowWidth"))
    function = tag_text(source, "VOILUTFunction").upper() or "LINEAR"
    if center is not None and width is not None and width > 0 and (
            width >= 1 or function != "LINEAR"):
        return _window(values, center, width, function)
    if center is not None:
        logger.warning("%s: unusable window width %s; using min-max", path, width)
    if ds.get("VOILUTSequence"):
        return _voi_lut(values, ds)
    return _minmax(values)


def _window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2 window functions, to the unit range."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width <= 1:  # the linear function's degenerate width is a threshold at c - 0.5
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _minmax(x: np.ndarray) -> np.ndarray:
    low, high = float(x.min()), float(x.max())
    if high <= low:
        return np.zeros_like(x)
    return (x - low) / (high - low)


def _voi_lut(values: np.ndarray, ds: Dataset) -> np.ndarray:
    item = ds.VOILUTSequence[0]
    bits = int(item.LUTDescriptor[2])
    mapped = apply_voi(np.rint(values).astype(np.int64), ds, index=0)
    return mapped.astype(np.float64) / float(2**bits - 1)


def quantise(unit: np.ndarray, bits: int, *, rounding=np.floor) -> np.ndarray:
    """Unit range -> integers. Grey truncates: the standard leaves quantisation open
    and truncation is what dcmtk does, so renders match the reference exactly."""
    top = 2**bits - 1
    return rounding(np.clip(unit, 0.0, 1.0) * top).astype(np.uint8 if bits == 8 else np.uint16)


# --- colour ------------------------------------------------------------------------


def colour_display(array: np.ndarray, ds: Dataset, decoded: str, options: DicomOptions
                   ) -> np.ndarray:
    """Decoded colour values of one frame (``decoded``: the photometric interpretation they
    are in) -> RGB display values, uint8/uint16 [H, W, 3]."""
    if decoded == "PALETTE COLOR":
        rgb = apply_color_lut(array, _little_endian_palette(ds))
        bits = 8 if rgb.dtype == np.uint8 else 16
    else:
        if decoded in ("YBR_FULL", "YBR_FULL_422"):  # pydicom converts unless raw
            rgb = pydicom.pixels.convert_color_space(array, decoded, "RGB")
        else:
            rgb = array  # RGB, or YBR_ICT/RCT already inverted by the JPEG 2000 codec
        bits = int(ds.get("BitsStored") or 8 * rgb.dtype.itemsize)
    unit = rgb.astype(np.float64) / float(2**bits - 1)
    return quantise(unit, options.bits, rounding=np.rint)


def _little_endian_palette(ds: Dataset) -> Dataset:
    """pydicom 3.0.2 reads OW palette data as little endian whatever the file's byte
    order; hand it a copy with the big-endian tables swapped."""
    syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    if syntax.is_little_endian:
        return ds
    palette = Dataset()
    palette.file_meta = pydicom.dataset.FileMetaDataset()
    palette.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    for element in ds:
        if element.tag.group == 0x0028 and 0x1100 <= element.tag.element <= 0x1223:
            palette.add(element)
    for element in palette:
        if "Data" in element.keyword and isinstance(element.value, bytes):
            swapped = np.frombuffer(element.value, ">u2").astype("<u2").tobytes()
            palette[element.tag] = pydicom.DataElement(element.tag, element.VR, swapped)
    for keyword in ("BitsStored", "BitsAllocated", "PixelRepresentation",
                    "PhotometricInterpretation", "SamplesPerPixel"):
        if keyword in ds:
            setattr(palette, keyword, ds.get(keyword))
    return palette
