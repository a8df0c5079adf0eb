"""DICOM BodyPartExamined values -> a dataset's class names.

The tag is free to vary between scanners ("CHEST", "THORAX", "Chest PA", "C-SPINE"),
and class names vary between datasets ("Chest", "CXR", "ChestCT", "HeadCT"), so both
sides are reduced to a DICOM defined term (PS3.16 CID 4031 / PS3.16 Annex L "Body
Part Examined") and compared there. Matching is tried at the most specific level
first and then up a small parent chain (BRAIN -> HEAD, HAND -> EXTREMITY), so a
"Brain" class wins over a "Head" class for the tag BRAIN, and without a "Brain" class
the tag BRAIN maps to "Head". The tag is wrong on a large share of real studies: callers report
the agreement with their labels instead of trusting this mapping silently.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# defined term: (parent term or None, synonyms). Synonyms and terms are compared
# after _squash(), so "HEAD NECK", "Head-Neck" and "HEADNECK" are one key.
BODY_PARTS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "HEAD": (None, ("HEAD", "CRANIUM")),
    "BRAIN": ("HEAD", ("BRAIN", "CEREBRUM", "NEURO")),
    "SKULL": ("HEAD", ("SKULL",)),
    "FACE": ("HEAD", ("FACE", "FACIAL", "FACIALBONES")),
    "ORBIT": ("HEAD", ("ORBIT", "EYE", "ORBITS")),
    "SINUS": ("HEAD", ("SINUS", "SINUSES", "PARANASALSINUS")),
    "JAW": ("HEAD", ("JAW", "MANDIBLE", "MAXILLA", "TMJ")),
    "IAC": ("HEAD", ("IAC", "EAR", "TEMPORALBONE")),
    "HEADNECK": ("HEAD", ("HEADNECK", "HEADANDNECK")),
    "NECK": (None, ("NECK", "THROAT", "LARYNX")),
    "CHEST": (None, ("CHEST", "THORAX", "LUNG", "LUNGS", "CXR", "CHESTXRAY", "RIB", "RIBS",
                     "STERNUM", "MEDIASTINUM", "THORACIC")),
    "HEART": ("CHEST", ("HEART", "CARDIAC", "CORONARY", "ECHO", "ECHOCARDIOGRAM")),
    "BREAST": (None, ("BREAST", "MAMMO", "MAMMOGRAPHY", "MAMMA")),
    "CHESTABDOMEN": (None, ("CHESTABDOMEN", "THORAXABDOMEN")),
    "CHESTABDPELVIS": (None, ("CHESTABDPELVIS", "CHESTABDOMENPELVIS")),
    "ABDOMEN": (None, ("ABDOMEN", "ABD", "ABDOMINAL", "BELLY")),
    "ABDOMENPELVIS": ("ABDOMEN", ("ABDOMENPELVIS", "ABDPELVIS", "ABDOMENANDPELVIS")),
    "LIVER": ("ABDOMEN", ("LIVER", "HEPATIC")),
    "PANCREAS": ("ABDOMEN", ("PANCREAS",)),
    "KIDNEY": ("ABDOMEN", ("KIDNEY", "KIDNEYS", "RENAL")),
    "SPLEEN": ("ABDOMEN", ("SPLEEN",)),
    "STOMACH": ("ABDOMEN", ("STOMACH", "BOWEL", "COLON", "GALLBLADDER")),
    "PELVIS": (None, ("PELVIS", "PELVIC", "BLADDER", "PROSTATE", "UTERUS")),
    "HIP": ("PELVIS", ("HIP", "HIPS")),
    "SPINE": (None, ("SPINE", "WHOLESPINE", "VERTEBRA", "TLSPINE")),
    "CSPINE": ("SPINE", ("CSPINE", "CERVICALSPINE", "CERVICAL")),
    "TSPINE": ("SPINE", ("TSPINE", "THORACICSPINE", "DORSALSPINE")),
    "LSPINE": ("SPINE", ("LSPINE", "LUMBARSPINE", "LUMBAR")),
    "SSPINE": ("SPINE", ("SSPINE", "SACRUM", "SACRALSPINE", "COCCYX")),
    "EXTREMITY": (None, ("EXTREMITY", "EXTREMITIES", "LIMB")),
    "ARM": ("EXTREMITY", ("ARM", "UPPERARM", "HUMERUS", "FOREARM", "UPPEREXTREMITY")),
    "SHOULDER": ("EXTREMITY", ("SHOULDER", "CLAVICLE", "SCAPULA")),
    "ELBOW": ("EXTREMITY", ("ELBOW",)),
    "WRIST": ("EXTREMITY", ("WRIST",)),
    "HAND": ("EXTREMITY", ("HAND", "HANDS", "FINGER", "FINGERS", "THUMB")),
    "LEG": ("EXTREMITY", ("LEG", "LOWERLEG", "THIGH", "FEMUR", "TIBIA", "FIBULA",
                          "LOWEREXTREMITY")),
    "KNEE": ("EXTREMITY", ("KNEE", "PATELLA")),
    "ANKLE": ("EXTREMITY", ("ANKLE",)),
    "FOOT": ("EXTREMITY", ("FOOT", "FEET", "TOE", "TOES", "HEEL", "CALCANEUS")),
    "WHOLEBODY": (None, ("WHOLEBODY", "BODY", "WB")),
}

# Modalities whose pixel data is not a picture of anatomy: a classifier would still name a
# body part for them, with confidence. Refused by dataset.dicom.read_dicom (the converter and
# prediction), and named by the converter's validation pass when such a file has no
# BodyPartExamined to label it; render_arrays still shows them (the display pipeline is
# checked against dcmtk on them).
NOT_ANATOMY = {"SEG": "a segmentation mask", "RTDOSE": "a radiotherapy dose grid",
               "RTSTRUCT": "a structure set", "RTPLAN": "a treatment plan",
               "REG": "a registration", "SR": "a structured report", "PR": "a presentation state",
               "KO": "a key-object selection"}


def not_anatomy(modality: str | None) -> str | None:
    """Why a DICOM object of this Modality is no image to classify, or None."""
    key = (modality or "").upper()
    return f"{NOT_ANATOMY[key]} ({key}), not an image of anatomy" if key in NOT_ANATOMY else None


# Modality words that class names carry ("ChestCT", "BreastMRI", "CXR"), as the
# imaging family they stand for. Longest first so "MRI" is stripped before "MR".
_NAME_MODALITIES = (("XRAY", "XR"), ("MRI", "MR"), ("PET", "PT"), ("CT", "CT"), ("MR", "MR"),
                    ("XR", "XR"), ("CR", "XR"), ("DX", "XR"), ("US", "US"), ("NM", "NM"))
# DICOM Modality (0008,0060) values -> the same families.
_TAG_MODALITIES = {"CT": "CT", "MR": "MR", "CR": "XR", "DX": "XR", "DR": "XR", "RG": "XR",
                   "RF": "XR", "XA": "XR", "PX": "XR", "IO": "XR", "MG": "XR", "US": "US",
                   "NM": "NM", "PT": "PT"}

_SYNONYMS: dict[str, str] = {
    synonym: term for term, (_, synonyms) in BODY_PARTS.items() for synonym in synonyms}
_SQUASH = re.compile(r"[^A-Z0-9]")


def _squash(text: str) -> str:
    return _SQUASH.sub("", text.upper())


def _lineage(term: str) -> list[str]:
    """The term followed by its parents, most specific first."""
    chain = [term]
    while (parent := BODY_PARTS[chain[-1]][0]) is not None:
        chain.append(parent)
    return chain


def _parse(text: str) -> tuple[str | None, str | None]:
    """(defined term, modality family) named by a tag value or a class name."""
    key = _squash(text)
    if not key:
        return None, None
    if key in _SYNONYMS:
        return _SYNONYMS[key], ("XR" if key == "CXR" else None)
    # A class name like "AbdomenCT" or "MRIBrain": strip one modality word.
    for word, family in _NAME_MODALITIES:
        if key.endswith(word) and key[:-len(word)] in _SYNONYMS:
            return _SYNONYMS[key[:-len(word)]], family
        if key.startswith(word) and key[len(word):] in _SYNONYMS:
            return _SYNONYMS[key[len(word):]], family
    # Free text ("Chest PA", "XR C Spine"): accept it only if its words agree.
    words = [_squash(word) for word in re.split(r"[^A-Za-z0-9]+", text)]
    terms = {_SYNONYMS[word] for word in words if word in _SYNONYMS}
    pairs = {_SYNONYMS.get(a + b) for a, b in zip(words, words[1:])} - {None}
    if len(pairs) == 1:
        return pairs.pop(), None
    if len(terms) == 1:
        return terms.pop(), None
    return None, None


# The class name a defined term gets where no label names it (--label_source=tag on files
# without labels): as label files and MedNIST spell body parts, so that one model's classes
# match another dataset's labels. Compound terms keep their parts' capitals; others are
# capitalised ("HEAD" -> "Head").
_CLASS_NAMES = {"HEADNECK": "HeadNeck", "CHESTABDOMEN": "ChestAbdomen",
                "CHESTABDPELVIS": "ChestAbdPelvis", "ABDOMENPELVIS": "AbdomenPelvis",
                "CSPINE": "CSpine", "TSPINE": "TSpine", "LSPINE": "LSpine", "SSPINE": "SSpine",
                "WHOLEBODY": "WholeBody", "IAC": "IAC"}


def class_name(term: str) -> str:
    """The class name of a defined term: class_name("WHOLEBODY") == "WholeBody"."""
    return _CLASS_NAMES.get(term, term.capitalize())


def canonical_body_part(tag_value: str | None) -> str | None:
    """The DICOM defined term for a BodyPartExamined value or synonym, or None.

    >>> canonical_body_part(" thorax ")
    'CHEST'
    """
    if tag_value is None:
        return None
    return _parse(str(tag_value))[0]


def normalize_body_part(tag_value: str | None, class_names: Sequence[str], *,
                        modality: str | None = None) -> str | None:
    """Map a BodyPartExamined value to one of `class_names`, or None.

    Both the tag and each class name are reduced to a defined term; the tag's term and
    then its parents are tried in turn (BRAIN matches a "Brain" class before "Head").
    When several classes share a body part and differ by modality ("CXR" and
    "ChestCT"), the DICOM `modality` (e.g. "CR", "CT") picks one; without it the
    result is None because guessing would be silent mislabelling. A class of another
    modality than `modality` is never the answer (an MR HEAD is not "HeadCT").
    """
    term, _ = _parse(str(tag_value)) if tag_value is not None else (None, None)
    if term is None:
        return None
    parsed = [(name, *_parse(name)) for name in class_names]
    known = [(name, class_term, family) for name, class_term, family in parsed if class_term]
    family = _TAG_MODALITIES.get(str(modality).strip().upper()) if modality else None
    # Only upwards (a BRAIN tag may become "Head"), never down: a CHEST tag says
    # nothing about whether the image is of the heart.
    for level in _lineage(term):
        matches = [(name, fam) for name, class_term, fam in known if class_term == level]
        if family is not None:
            # A class that names another modality is not this image's, even alone: an MR
            # HEAD is no "HeadCT" (it was mapped there when HeadCT was the only Head class).
            matches = [(name, fam) for name, fam in matches if fam in (None, family)]
        if not matches:
            continue
        if len(matches) > 1 and family is not None:
            matches = [(name, fam) for name, fam in matches if fam == family] or matches
        return matches[0][0] if len(matches) == 1 else None
    return None

