"""dataset.body_parts: BodyPartExamined values and synonyms -> a dataset's class names."""

from __future__ import annotations

import csv

import pytest

from dataset.body_parts import BODY_PARTS, canonical_body_part, class_name, normalize_body_part

MEDNIST = ("AbdomenCT", "BreastMRI", "CXR", "ChestCT", "Hand", "HeadCT")
SAMPLES = ("Abdomen", "CSpine", "Chest", "Extremity", "Head", "Heart", "Neck", "Shoulder",
           "WholeBody")


@pytest.mark.parametrize("tag, term", [
    ("CHEST", "CHEST"), (" thorax ", "CHEST"), ("Lung", "CHEST"), ("HEAD", "HEAD"),
    ("SKULL", "SKULL"), ("BRAIN", "BRAIN"), ("HEAD NECK", "HEADNECK"), ("Head-Neck", "HEADNECK"),
    ("C-SPINE", "CSPINE"), ("CSPINE", "CSPINE"), ("LSPINE", "LSPINE"), ("TSPINE", "TSPINE"),
    ("SPINE", "SPINE"), ("ABDOMENPELVIS", "ABDOMENPELVIS"), ("CHESTABDOMEN", "CHESTABDOMEN"),
    ("PANCREAS", "PANCREAS"), ("WHOLE BODY", "WHOLEBODY"), ("knee", "KNEE"), ("ANKLE", "ANKLE"),
    ("FOOT", "FOOT"), ("HAND", "HAND"), ("WRIST", "WRIST"), ("ELBOW", "ELBOW"),
    ("SHOULDER", "SHOULDER"), ("HIP", "HIP"), ("PELVIS", "PELVIS"), ("BREAST", "BREAST"),
    ("NECK", "NECK"), ("EXTREMITY", "EXTREMITY"), ("LEG", "LEG"), ("ARM", "ARM"),
    ("Chest PA", "CHEST"), ("XR C Spine", "CSPINE"),
    ("", None), ("   ", None), (None, None), ("PHANTOM", None), ("CHEST HAND", None),
])
def test_canonical_body_part(tag, term):
    assert canonical_body_part(tag) == term


@pytest.mark.parametrize("tag, modality, expected", [
    ("ABDOMEN", None, "AbdomenCT"), ("pancreas", "CT", "AbdomenCT"),
    ("BREAST", "MR", "BreastMRI"), ("HAND", "CR", "Hand"), ("FINGER", None, "Hand"),
    ("HEAD", "CT", "HeadCT"), ("BRAIN", None, "HeadCT"), ("SKULL", None, "HeadCT"),
    ("HEAD NECK", None, "HeadCT"),
    # Two chest classes: only the modality can tell them apart, and without it the
    # answer is None rather than a guess.
    ("CHEST", "CR", "CXR"), ("THORAX", "DX", "CXR"), ("CHEST", "CT", "ChestCT"),
    ("CHEST", None, None), ("CHEST", "US", None),
    ("KNEE", None, None), ("", None, None), (None, "CT", None),
    # A class of another modality is never the answer, even the only one of its body part
    # (an MR HEAD was "HeadCT", agreeing with a HeadCT prediction).
    ("HEAD", "MR", None), ("ABDOMEN", "MR", None), ("BREAST", "CT", None),
])
def test_normalize_to_mednist_classes(tag, modality, expected):
    assert normalize_body_part(tag, MEDNIST, modality=modality) == expected


def test_a_class_of_another_modality_gives_way_to_a_wider_one():
    classes = ["BrainCT", "Head"]
    assert normalize_body_part("BRAIN", classes, modality="CT") == "BrainCT"
    assert normalize_body_part("BRAIN", classes, modality="MR") == "Head"


@pytest.mark.parametrize("tag, expected", [
    ("WHOLE BODY", "WholeBody"), ("EXTREMITY", "Extremity"), ("CSPINE", "CSpine"),
    ("c-spine", "CSpine"), ("PANCREAS", "Abdomen"), ("ABDOMEN", "Abdomen"), ("NECK", "Neck"),
    ("HEART", "Heart"), ("CHEST", "Chest"), ("SHOULDER", "Shoulder"),
    ("HAND", "Extremity"),  # up the chain: HAND -> EXTREMITY
    ("LSPINE", None),  # SPINE is not a class and CSpine is a sibling, not a parent
])
def test_normalize_to_shared_sample_classes(tag, expected):
    assert normalize_body_part(tag, SAMPLES) == expected


def test_every_defined_term_has_a_class_name_that_maps_back_to_it():
    for term in BODY_PARTS:
        name = class_name(term)
        assert name[0].isupper() and name != term.upper() or term == "IAC", name
        assert canonical_body_part(name) == term, (term, name)
    assert [class_name(t) for t in ("HEAD", "WHOLEBODY", "CSPINE")] == ["Head", "WholeBody",
                                                                        "CSpine"]


def test_most_specific_class_wins_and_matching_never_goes_down():
    assert normalize_body_part("BRAIN", ["Head", "Brain"]) == "Brain"
    assert normalize_body_part("BRAIN", ["head", "Chest"]) == "head"  # returns the given name
    assert normalize_body_part("HEAD", ["Brain", "Chest"]) is None
    assert normalize_body_part("CHEST", ["Heart"]) is None


def test_table_parents_exist_and_synonyms_are_unique():
    seen = {}
    for term, (parent, synonyms) in BODY_PARTS.items():
        assert parent is None or parent in BODY_PARTS, term
        assert term in synonyms, term  # each defined term maps to itself
        for synonym in synonyms:
            assert synonym not in seen, (synonym, term, seen.get(synonym))
            seen[synonym] = term


def test_shared_sample_tags_agree_with_their_labels(shared_data):
    """Files labelled from their tag must map back to that label through the table."""
    with (shared_data / "dicom-samples" / "manifest.csv").open() as stream:
        rows = [row for row in csv.DictReader(stream) if row["label"]]
    classes = sorted({row["label"] for row in rows})
    tagged = [row for row in rows if row["label_source"].startswith("BodyPartExamined=")]
    assert len(tagged) >= 10
    for row in tagged:
        assert normalize_body_part(row["BodyPartExamined"], classes,
                                   modality=row["Modality"]) == row["label"], row["id"]
