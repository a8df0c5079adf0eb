"""How to read and display a DICOM file: the options of ``dataset.dicom``, importable
without pydicom (the converter records them in every manifest, DICOM or not, and should not
pay pydicom's import for that)."""

from __future__ import annotations

import dataclasses

VOI_MODES = ("window", "minmax", "given", "lut")
FRAME_MODES = ("middle", "all")
OUTPUT_BITS = (8, 16)


# The DicomOptions fields that decide a DICOM file's pixels; force, frames and max_pixels
# decide which files and frames are read, not how they look. A model records the rendering
# of its training data (dataset/reader.py dicom_rendering), and prediction renders with it.
RENDERING_FIELDS = ("voi", "window_center", "window_width", "bits")


class DicomError(ValueError):
    """A file that cannot be rendered; the message is one line naming the file."""


@dataclasses.dataclass(frozen=True)
class DicomOptions:
    """How to read and display a DICOM file (the display order is in dataset.dicom)."""

    force: bool = False  # read files without the DICM preamble/file meta
    voi: str = "window"  # window | minmax | given | lut
    window_center: float | None = None  # with voi="given"
    window_width: float | None = None  # with voi="given"
    bits: int = 8  # PNG sample depth: 8 or 16
    frames: str = "middle"  # middle (frame n // 2) | all
    max_pixels: int = 2**28  # Rows * Columns * frames * samples refused above this

    def __post_init__(self):
        if self.voi not in VOI_MODES:
            raise ValueError(f"voi must be one of {VOI_MODES}, got {self.voi!r}")
        if self.frames not in FRAME_MODES:
            raise ValueError(f"frames must be one of {FRAME_MODES}, got {self.frames!r}")
        if self.bits not in OUTPUT_BITS:
            raise ValueError(f"bits must be one of {OUTPUT_BITS}, got {self.bits!r}")
        if self.voi == "given" and (self.window_center is None or self.window_width is None
                                    or not self.window_width > 0):
            raise ValueError("voi='given' needs window_center and a window_width > 0, got "
                             f"{self.window_center!r}, {self.window_width!r}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels!r}")

    @classmethod
    def rendering(cls, recorded: dict | None, **others) -> DicomOptions:
        """Options rendering as ``recorded`` (a model's dicom_rendering) does, plus ``others``
        (e.g. force=True)."""
        recorded = {key: value for key, value in (recorded or {}).items()
                    if key in RENDERING_FIELDS}
        return cls(**recorded, **others)


def rendering_of(recorded: dict | None) -> dict:
    """A recorded rendering with every field given (a model trained before it was recorded:
    the defaults), so that two renderings compare equal when they render alike."""
    options = DicomOptions.rendering(recorded)
    return {field: getattr(options, field) for field in RENDERING_FIELDS}


def describe_rendering(rendering: dict) -> str:
    """'voi=window, bits=8': the fields that are set."""
    return ", ".join(f"{key}={value}" for key, value in rendering.items() if value is not None)
