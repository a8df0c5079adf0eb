"""Messy inputs real users have: class names typed on another system (Unicode normal forms,
invisible characters) or misspelt, 16-bit PNGs holding 12-bit data, split sizes that are not
numbers, images in per-patient sub-folders, label files and --groups_csv files that name no
class or group."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import unicodedata
import zlib

import numpy as np
import pytest
from PIL import Image

from dataset import groups_csv, images, magic, sources, splits
from dataset.conversion_plan import ConversionError
from tests.conftest import REPO_ROOT
from tests.test_convert import convert, make_class_folders
from tests.test_convert_errors import error_line, run_cli


def _png16(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- class names --------------------------------------------------------------------


@pytest.mark.parametrize("spelling", [
    unicodedata.normalize("NFD", "Pelvis Å"),  # macOS file names and some editors
    "Pelvis Å\u200b",  # a zero-width space pasted from a web page
])
def test_a_class_name_that_only_looks_different_is_the_same_class(
        tmp_path, make_images_labels_dataset, spelling):
    root = make_images_labels_dataset({"Pelvis Å": 3, "Hand": 3}, size=16)
    (root / "labels" / "000003.txt").write_text(spelling + "\n", encoding="utf-8")
    manifest = convert(root, tmp_path / "out", output_name="all")
    assert manifest["classes"] == ["Hand", unicodedata.normalize("NFC", "Pelvis Å")]
    assert manifest["splits"]["all"]["class_counts"] == {"Hand": 3, "Pelvis Å": 3}


def test_class_folder_names_in_another_normal_form_are_one_class(tmp_path):
    root = tmp_path / "ds"
    for index, folder in enumerate([unicodedata.normalize("NFC", "Schädel"),
                                    unicodedata.normalize("NFD", "Schädel"), "Hand"]):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for count in range(2):
            Image.fromarray(np.full((8, 8), 40 * index, np.uint8)).save(
                root / folder / f"{index}_{count}.png")
    if len(list(root.iterdir())) < 3:
        pytest.skip("this file system normalises names itself (both folders are one)")
    manifest = convert(root, tmp_path / "out", output_name="all")
    assert manifest["splits"]["all"]["class_counts"] == {"Hand": 2, "Schädel": 4}


# --- 16-bit PNGs ----------------------------------------------------------------------


def test_a_16_bit_png_of_12_bit_data_is_refused_with_the_reason():
    # TensorFlow's decode_image(dtype=uint8) keeps the high byte of 16-bit samples: values
    # 0..4095 become 0..15, a black image for the model, in training and prediction alike.
    data = _png16(np.add.outer(np.arange(32), np.arange(32)) * 64)  # 0..3968
    with pytest.raises(images.ImageError, match=r"16-bit PNG.*3968 of 65535.*0-15"):
        images.validate_image_bytes(data)


def _png16_rgb(array: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (Pillow writes none), chunk by chunk."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    height, width, _ = array.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in array)  # filter 0
    return (magic.PNG_MAGIC + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2,
                                                          0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_a_16_bit_colour_png_of_12_bit_data_is_refused_too():
    ramp = np.add.outer(np.arange(16), np.arange(16))
    dark = _png16_rgb(np.stack([ramp * 100, ramp * 50, ramp * 10], axis=-1))  # up to 3000
    with pytest.raises(images.ImageError, match=r"16-bit PNG.*up to 3071 of 65535.*0-11 only"):
        images.validate_image_bytes(dark)
    full = _png16_rgb(np.stack([ramp * 2000, ramp * 1000, ramp * 100], axis=-1))
    assert images.validate_image_bytes(full).channels == 3


def test_a_16_bit_png_using_its_range_is_kept_as_it_is():
    data = _png16(np.add.outer(np.arange(32), np.arange(32)) * 1000)  # up to 62000
    encoded = images.validate_image_bytes(data)
    assert (encoded.data, encoded.channels) == (data, 1)


def test_a_dataset_of_12_bit_pngs_names_each_file(tmp_path, make_images_labels_dataset):
    root = make_images_labels_dataset({"Chest": 2, "Hand": 2}, size=16)
    (root / "images" / "000001.png").write_bytes(_png16(np.full((16, 16), 3000)))
    with pytest.raises(ConversionError) as error:
        convert(root, tmp_path / "out")
    (problem,) = error.value.problems
    assert problem.startswith("images/000001.png: 16-bit PNG with values up to 3000 of 65535")


# --- split sizes ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_a_split_size_that_is_not_a_number_is_a_value_error_naming_the_flag(value):
    with pytest.raises(ValueError, match=r"^--test_size must be a fraction < 1 or a count"):
        splits.split_fractions("tt_split", 0.1, value, 100)


# --- groups ---------------------------------------------------------------------------


def _nested_dataset(root):
    """images/patient<P>/slice<S>.png: five slices of each of six patients."""
    rng = np.random.default_rng(0)
    for patient in range(6):
        for folder in ("images", "labels"):
            (root / folder / f"patient{patient}").mkdir(parents=True, exist_ok=True)
        for slice_index in range(5):
            stem = f"patient{patient}/slice{slice_index}"
            Image.fromarray(rng.integers(0, 255, (8, 8), np.uint8)).save(
                root / "images" / f"{stem}.png")
            (root / "labels" / f"{stem}.txt").write_text("Chest" if patient % 2 else "Hand")
    return root


def test_files_in_subfolders_grouped_by_stem_are_warned_of(tmp_path):
    root = _nested_dataset(tmp_path / "ds")
    manifest = convert(root, tmp_path / "out", need_split="tt_split", test_size=0.3)
    (warning,) = [w for w in manifest["warnings"] if "subfolders" in w]
    assert warning.startswith("30 file(s) lie in subfolders (e.g. images/patient0/slice0.png) "
                              "and are grouped by their file stem, not their folder")
    assert "--groups_csv" in warning


def test_no_subfolder_warning_once_the_folders_are_the_groups(tmp_path):
    root = _nested_dataset(tmp_path / "ds")
    groups = tmp_path / "groups.csv"
    groups.write_text("".join(f"images/patient{p}/slice{s}.png,patient{p}\n"
                              for p in range(6) for s in range(5)))
    manifest = convert(root, tmp_path / "out", need_split="tt_split", test_size=0.3,
                       groups_csv=str(groups), seed=1)
    assert not [w for w in manifest["warnings"] if "subfolders" in w]
    manifest = convert(root, tmp_path / "all", output_name="all")  # no split: nothing to say
    assert not [w for w in manifest["warnings"] if "subfolders" in w]


# --- suffixes that lie -------------------------------------------------------------------


@pytest.mark.parametrize("force", [False, True])
def test_a_file_whose_suffix_lies_says_what_its_bytes_are(tmp_path, force):
    # The kind is the suffix's (dataset/folder_walk.py); the message names the bytes found and
    # the fix, instead of "not a DICOM file ... --dicom_force" (and with that flag "no pixel
    # data") or "unrecognised magic bytes".
    from dataset.dicom_options import DicomOptions
    from tests.dicom_fixtures import write_dicom

    jpeg = tmp_path / "photo.dcm"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(jpeg, format="JPEG")
    with pytest.raises(images.ImageError,
                       match=f"^{jpeg}: JPEG bytes, not DICOM: rename it .jpg$"):
        images.load_image(str(jpeg), "dicom", dicom_options=DicomOptions(force=force),
                          hash_key=b"k")
    dicom = tmp_path / "slice.jpg"
    write_dicom(dicom, np.zeros((8, 8), np.uint16))
    with pytest.raises(images.ImageError, match="a DICOM file .* named as a JPEG or PNG: "
                                                "rename it .dcm"):
        images.load_image(str(dicom), "image")


def test_an_image_too_large_for_pillow_says_so_in_a_word(monkeypatch):
    # Pillow's own words were "undecodable JPEG: ... could be decompression bomb DOS attack",
    # and a warning without a file name below its refusal limit.
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(buffer, format="PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 900)  # refused above 1,800 pixels
    with pytest.raises(images.ImageError, match=r"^image too large to decode: Image size "
                                                r"\(2000 pixels\) exceeds limit of 1800 pixels$"):
        images.validate_image_bytes(buffer.getvalue())
    # Between the limits Pillow only warns: not shown (pytest resets warning filters, so in a
    # program of its own).
    program = ("import io, numpy as np\n"
               "from PIL import Image\n"
               "from dataset import images\n"
               "buffer = io.BytesIO()\n"
               "Image.fromarray(np.zeros((40, 50), np.uint8)).save(buffer, format='PNG')\n"
               "Image.MAX_IMAGE_PIXELS = 1500\n"
               "print(images.validate_image_bytes(buffer.getvalue()).width)\n")
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "50\n", "")


def test_a_class_folder_named_only_by_invisible_characters_is_a_problem(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"Hand": 2, "Chest": 2}, size=16)
    (root / "\u200b ").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "\u200b " / "a.png")
    with pytest.raises(ConversionError) as raised:
        convert(root, tmp_path / "out", output_name="all")
    assert [str(problem) for problem in raised.value.problems] == [
        "\u200b /: class folder without a name once whitespace and invisible characters are "
        "removed"]
    # A left-to-right mark or a soft hyphen at an end is invisible too.
    assert sources.clean_label("\u200eHand\u00ad") == "Hand"


# --- named pipes ---------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo (POSIX named pipes)")
def test_a_named_pipe_among_the_images_is_a_problem_not_a_hang(tmp_path):
    """Opening a pipe to read it (or to sniff an extension-less name for DICOM) waits for a
    writer: the conversion hung for ever. A subprocess, so that a hang fails the test."""
    root = make_class_folders(tmp_path / "ds", {"A": 3, "B": 3}, size=8)
    os.mkfifo(root / "A" / "pipe.png")
    os.mkfifo(root / "B" / "noext")
    result = subprocess.run(
        [sys.executable, "tf_convert_data.py", "--dataset_name=t", f"--dataset_dir={root}",
         f"--output_dir={tmp_path / 'out'}", "--num_workers=1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: A/pipe.png: not a JPEG, PNG or DICOM file",
        "error: B/noext: not a JPEG, PNG or DICOM file",
        "error: 2 problem(s); nothing was written (--on_error=skip converts the rest)"]
    assert not (tmp_path / "out").exists()


def test_a_class_of_one_file_beside_a_large_one_is_called_a_likely_typo(
        tmp_path, make_images_labels_dataset):
    # 'Hnad' sorts after 'Hand': its one image is 000050.png (the factory numbers by class).
    root = make_images_labels_dataset({"Hand": 50, "Hnad": 1}, size=8)
    manifest = convert(root, tmp_path / "out", output_name="all")
    said = "only 1 file(s) against 50 in the largest: a misspelt label? (labels/000050.txt)"
    # Converted all the same: it may be a real class.
    assert manifest["warnings"] == [f"class 'Hnad' has {said}"]
    assert manifest["splits"]["all"]["class_counts"] == {"Hand": 50, "Hnad": 1}
    # Split, the class cannot be in every split: the error says why that may be.
    result = run_cli(f"--dataset_dir={root}", f"--output_dir={tmp_path / 'split'}",
                     "--need_split=tt_split")
    assert result.returncode == 1
    assert error_line(result) == (
        "error: --need_split: class 'Hnad' has 1 group(s), fewer than the 2 splits requested "
        f"(images/000050.png); it has {said}; nothing was written")


def test_a_class_of_a_few_files_beside_a_few_more_is_no_warning(tmp_path,
                                                                make_images_labels_dataset):
    root = make_images_labels_dataset({"Hand": 49, "Hnad": 1}, size=8)  # under 50 times
    assert convert(root, tmp_path / "out", output_name="all")["warnings"] == []


# --- label files and --groups_csv that name no class or group (found by fuzzing) ---------


@pytest.mark.parametrize("data, reason", [
    (b"Ha\x00nd\n", "label file holds control character U+0000 (UTF-16? label files are UTF-8)"),
    (b"Hand\x1b[2J\n", "label file holds control character U+001B"),
    ("\u202eHand".encode(), "label file holds control character U+202E"),
    (b"Ha\tnd", "label file holds control character U+0009"),
    (b"H" * (64 * 1024 + 1),
     "label file is larger than 64 KB, expected one class name"),
], ids=["NUL", "escape", "direction override", "tab", "64 KB"])
def test_a_label_file_that_holds_no_class_name_is_a_problem(tmp_path, make_images_labels_dataset,
                                                            data, reason):
    # Each was a class of its own: printed raw in the summary and labels.txt (an escape
    # sequence rewrote the terminal, a NUL or a direction override printed like another
    # class). A label file was read whole: 1 GB took 5 GB and ended in a MemoryError traceback.
    root = make_images_labels_dataset({"Hand": 2}, size=8)
    (root / "labels" / "000000.txt").write_bytes(data)
    assert [problem.line() for problem in sources.discover(str(root)).problems] == [
        f"images/000000.png: {reason} (labels/000000.txt)"]


@pytest.mark.parametrize("data", [b"\xef\xbb\xbfHand\n", b"\r\rHand\r", "Hand\u200b\n".encode()],
                         ids=["BOM", "CR", "zero-width space"])
def test_a_bom_cr_line_ends_or_an_invisible_end_still_name_the_class(tmp_path, data):
    path = tmp_path / "label.txt"
    path.write_bytes(data)
    assert sources.read_label_file(str(path)) == ("Hand", None)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo (POSIX named pipes)")
def test_a_named_pipe_as_label_file_or_groups_csv_is_a_problem_not_a_hang(
        tmp_path, make_images_labels_dataset):
    """Both were opened to be read, and waited for a writer for ever. A subprocess, so that a
    hang fails the test."""
    root = make_images_labels_dataset({"Hand": 2, "Chest": 2}, size=8)
    label = root / "labels" / "000000.txt"
    label.unlink()
    os.mkfifo(label)
    result = run_cli(f"--dataset_dir={root}", f"--output_dir={tmp_path / 'out'}")
    assert result.returncode == 1
    assert error_line(result) == (
        "error: images/000000.png: label file is not a regular file (a pipe, socket or device) "
        "(labels/000000.txt); nothing was written (--on_error=skip converts the rest)")
    label.unlink()
    label.write_text("Chest\n")
    os.mkfifo(tmp_path / "groups.csv")
    result = run_cli(f"--dataset_dir={root}", f"--output_dir={tmp_path / 'out'}",
                     f"--groups_csv={tmp_path / 'groups.csv'}")
    assert result.returncode == 1
    assert error_line(result) == (f"error: --groups_csv {tmp_path / 'groups.csv'}: not a "
                                  "regular file (a pipe, socket or device)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("rows, problem", [
    # The later row won in silence: which group the file got hung on the rows' order.
    ("a,g1\nb,g2\na,g3\n", "line 3 puts 'a' in group 'g3', an earlier row in 'g1'"),
    # csv's own errors were tracebacks; and it bounds a field, not the line it reads first
    # (a 1 GB file without a line break took 2 GB).
    ("a," + "x" * 200_000 + "\n", "cannot read line 1 (field larger than field limit (131072))"),
    ("a" * (1 << 20) + ",g\n", "line 1 is longer than 1,048,576 characters"),
], ids=["contradicting rows", "cell past 128 KB", "line past 1 MB"])
def test_a_groups_csv_it_cannot_take_is_one_error(tmp_path, rows, problem):
    path = tmp_path / "groups.csv"
    path.write_text(rows)
    with pytest.raises(ValueError) as error:
        groups_csv.read_groups_csv(str(path))
    assert str(error.value) == f"--groups_csv {path}: {problem}"
    path.write_text("a,g1\r\nb,g2\r\na,g1\r\n")  # a row repeated alike contradicts nothing
    assert groups_csv.read_groups_csv(str(path)) == {"a": "g1", "b": "g2"}


def test_joiners_inside_a_label_are_text_direction_overrides_are_not(tmp_path):
    # Persian and Hindi names need the zero-width (non-)joiner; an override reorders what
    # prints, so that a name shows as another.
    label = tmp_path / "a.txt"
    label.write_text("\u0633\u06cc\u200c\u0646\u0647\n", encoding="utf-8")  # "sine" (chest)
    assert sources.read_label_file(str(label)) == ("\u0633\u06cc\u200c\u0646\u0647", None)
    label.write_text("Hand\u202eLeft\n", encoding="utf-8")
    assert sources.read_label_file(str(label)) == (
        None, "label file holds control character U+202E")
