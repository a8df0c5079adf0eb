"""tf_convert_data.py / dataset.convert: round trip, splits, stability, layouts, bad input."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dataset import features
from dataset.convert import ConvertConfig, convert_dataset
from dataset.conversion_plan import ConversionError
from dataset.manifest import format_summary
from tests.conftest import REPO_ROOT, write_image


def convert(dataset_dir, output_dir, **overrides) -> dict:
    options = dict(dataset_name="test", dataset_dir=str(dataset_dir), output_dir=str(output_dir),
                   num_workers=1, show_progress=False)
    options.update(overrides)
    return convert_dataset(ConvertConfig(**options))


def read_records(output_dir, split) -> list[dict]:
    """Every record of ``split`` in file order, parsed with TensorFlow."""
    manifest = json.loads((Path(output_dir) / "manifest.json").read_text())
    files = [str(Path(output_dir) / f["path"]) for f in manifest["splits"][split]["files"]]
    records = []
    for serialized in tf.data.TFRecordDataset(files):
        parsed = tf.io.parse_single_example(serialized, features.feature_spec())
        records.append({key: value.numpy() for key, value in parsed.items()})
    return records


def split_of_files(output_dir) -> dict[str, str]:
    manifest = json.loads((Path(output_dir) / "manifest.json").read_text())
    return {r[features.KEY_FILENAME].decode(): split for split in manifest["splits"]
            for r in read_records(output_dir, split)}


def assert_pairs_share_a_split(output_dir, pairs: list[tuple[str, str]]) -> None:
    """Each pair of copies in one split, and the pairs in both splits: drawn by patient alone
    (each file its own), n pairs would share their split with probability 0.5**n."""
    split_of = split_of_files(output_dir)
    assert all(split_of[first] == split_of[second] for first, second in pairs)
    assert len({split_of[first] for first, _ in pairs}) == 2


def output_bytes(output_dir) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(output_dir).iterdir()) if p.is_file()}


def make_class_folders(root: Path, counts: dict[str, int], size: int = 16, start: int = 0):
    rng = np.random.default_rng(start)
    for class_index, (name, count) in enumerate(sorted(counts.items())):
        for index in range(start, start + count):
            array = rng.integers(0, 255, (size, size), dtype=np.uint8)
            write_image(root / name / f"{name.lower()}{index:04d}.png", array)
    return root


def test_round_trip_keeps_bytes_pixels_label_and_text(tmp_path, make_images_labels_dataset):
    root = make_images_labels_dataset({"Chest": 3, "Hand": 2}, size=20, suffix=".png")
    rgb = np.random.default_rng(1).integers(0, 255, (12, 18, 3), dtype=np.uint8)
    write_image(root / "images" / "colour.jpg", rgb)
    (root / "labels" / "colour.txt").write_text("\n  hand  \n\n")
    manifest = convert(root, tmp_path / "out", output_name="all")
    assert manifest["classes"] == ["Chest", "Hand"]
    assert (tmp_path / "out" / "labels.txt").read_text() == "0:Chest\n1:Hand\n"
    records = read_records(tmp_path / "out", "all")
    assert len(records) == 6 and manifest["splits"]["all"]["num_examples"] == 6
    for record in records:
        relpath = record[features.KEY_FILENAME].decode()
        source = root / relpath
        assert record[features.KEY_ENCODED] == source.read_bytes()  # stored, not re-encoded
        expected = np.array(Image.open(source))
        decoded = tf.io.decode_image(record[features.KEY_ENCODED]).numpy()
        # PNG is lossless; two JPEG decoders (Pillow, libjpeg-turbo in TF) may differ
        # by a few levels in chroma upsampling, the bytes themselves are identical.
        tolerance = 4 if relpath.endswith(".jpg") else 0
        np.testing.assert_allclose(decoded.reshape(expected.shape), expected, atol=tolerance)
        label_file = (root / "labels" / (Path(relpath).stem + ".txt")).read_text().strip()
        text = record[features.KEY_TEXT].decode()
        assert text.casefold() == label_file.splitlines()[0].strip().casefold()
        assert record[features.KEY_LABEL] == manifest["classes"].index(text)
        assert (record[features.KEY_HEIGHT], record[features.KEY_WIDTH]) == expected.shape[:2]
        assert record[features.KEY_CHANNELS] == (3 if expected.ndim == 3 else 1)
        assert record[features.KEY_FORMAT] == (b"jpeg" if relpath.endswith(".jpg") else b"png")
    assert manifest["class_variants"] == {"Hand": ["Hand", "hand"]}


def test_shards_are_byte_identical_to_tensorflows_writer(tmp_path, make_images_labels_dataset):
    """Our framing (google-crc32c, no TensorFlow) writes exactly what tf.io.TFRecordWriter
    writes for the same records, CRCs included, and the manifest's sha256 is of those bytes."""
    root = make_images_labels_dataset({"Chest": 3, "Hand": 4}, size=20, suffix=".png")
    manifest = convert(root, tmp_path / "out", output_name="all", num_workers=2)
    [entry] = manifest["splits"]["all"]["files"]
    ours = (tmp_path / "out" / entry["path"]).read_bytes()
    records = [r.numpy() for r in tf.data.TFRecordDataset(str(tmp_path / "out" / entry["path"]))]
    assert len(records) == entry["num_records"] == 7
    with tf.io.TFRecordWriter(str(tmp_path / "tf.tfrecord")) as writer:
        for record in records:
            writer.write(record)
    assert ours == (tmp_path / "tf.tfrecord").read_bytes()
    assert entry["sha256"] == hashlib.sha256(ours).hexdigest()
    assert entry["num_bytes"] == len(ours)


def test_the_converter_never_imports_tensorflow(tmp_path, make_images_labels_dataset):
    """tf_convert_data.py runs without TensorFlow (fast start, forked workers): a
    TensorFlow import anywhere in the conversion fails this run."""
    root = make_images_labels_dataset({"Chest": 2, "Hand": 2}, size=20, suffix=".png")
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nclass _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorflow', 'keras'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, _Block())\n")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tf_convert_data.py"), f"--dataset_dir={root}",
         f"--output_dir={tmp_path / 'out'}", "--need_split=None", "--output_name=all"],
        capture_output=True, text=True, cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=f"{blocker}{os.pathsep}{REPO_ROOT}"))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())[
        "splits"]["all"]["num_examples"] == 4


def test_splits_are_grouped_stratified_and_counted(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"A": 150, "B": 150, "C": 90})
    stems = sorted(p.stem for p in root.rglob("*.png"))
    groups = {stem: f"g{index // 3}" for index, stem in enumerate(stems)}  # groups of 3 files
    csv_path = tmp_path / "groups.csv"
    csv_path.write_text("file,group\n" + "".join(f"{s},{g}\n" for s, g in groups.items()))
    manifest = convert(root, tmp_path / "out", need_split="tvt_split", seed=3,
                       groups_csv=str(csv_path), validation_size=0.2, test_size=0.2)
    assignment = split_of_files(tmp_path / "out")
    assert len(assignment) == 390
    split_of_group = collections.defaultdict(set)
    for relpath, split in assignment.items():
        split_of_group[groups[Path(relpath).stem]].add(split)
    assert all(len(s) == 1 for s in split_of_group.values()), "a group spans two splits"
    for name, total in (("A", 150), ("B", 150), ("C", 90)):
        counts = {s: manifest["splits"][s]["class_counts"][name] for s in manifest["splits"]}
        assert sum(counts.values()) == total
        for split in ("validation", "test"):  # 20% +- sampling noise of 30-50 groups
            assert 0.08 < counts[split] / total < 0.34, (name, counts)
    for split, info in manifest["splits"].items():
        assert info["num_examples"] == sum(f["num_records"] for f in info["files"])
        assert info["num_examples"] == len(read_records(tmp_path / "out", split))


def test_count_sizes_and_tt_split(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"A": 100, "B": 100})
    manifest = convert(root, tmp_path / "out", need_split="tt_split", test_size=40)
    assert set(manifest["splits"]) == {"train", "test"}
    assert 20 <= manifest["splits"]["test"]["num_examples"] <= 60  # 40 of 200 in expectation


def test_rerun_is_byte_identical_and_independent_of_workers(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"A": 40, "B": 40})
    convert(root, tmp_path / "out", need_split="tvt_split", shard_size_mb=0.002)
    first = output_bytes(tmp_path / "out")
    assert sum(name.startswith("train-") for name in first) > 1
    convert(root, tmp_path / "out", need_split="tvt_split", shard_size_mb=0.002)
    assert output_bytes(tmp_path / "out") == first
    convert(root, tmp_path / "out2", need_split="tvt_split", shard_size_mb=0.002, num_workers=2)
    second = output_bytes(tmp_path / "out2")
    assert {k: v for k, v in second.items() if k.endswith(".tfrecord")} == \
        {k: v for k, v in first.items() if k.endswith(".tfrecord")}


def test_adding_files_keeps_existing_assignments(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"A": 60, "B": 60})
    convert(root, tmp_path / "out", need_split="tvt_split")
    before = split_of_files(tmp_path / "out")
    make_class_folders(root, {"A": 40, "B": 40, "C": 30}, start=1000)
    convert(root, tmp_path / "out", need_split="tvt_split")
    after = split_of_files(tmp_path / "out")
    assert len(after) == 230
    assert {path: after[path] for path in before} == before


def test_linked_subfolders_are_read_once_and_a_loop_ends(tmp_path):
    """A linked folder inside a class folder was passed over without a word."""
    root = make_class_folders(tmp_path / "ds", {"Chest": 4, "Hand": 4})
    make_class_folders(tmp_path / "more", {"Hand": 3}, start=10)
    (root / "Hand" / "more").symlink_to(tmp_path / "more" / "Hand")
    (root / "Hand" / "again").symlink_to(tmp_path / "more" / "Hand")  # read once
    (tmp_path / "more" / "Hand" / "up").symlink_to(root)  # a loop: ends, reads nothing twice
    # A link to another class's folder: its files keep their own class (they were read
    # again as Chest's).
    (root / "Chest" / "hands").symlink_to(root / "Hand")
    manifest = convert(root, tmp_path / "out", output_name="all")
    assert manifest["splits"]["all"]["class_counts"] == {"Chest": 4, "Hand": 7}


def test_a_link_inside_images_keeps_each_image_with_its_label_file(
        tmp_path, make_images_labels_dataset):
    """images/a/also_b -> ../b: b's images were found under a/also_b/, without label files."""
    root = make_images_labels_dataset({"Chest": 2, "Hand": 2})
    images = sorted((root / "images").iterdir())
    for sub, moved in (("a", images[:2]), ("b", images[2:])):
        (root / "images" / sub).mkdir()
        (root / "labels" / sub).mkdir()
        for image in moved:
            image.rename(root / "images" / sub / image.name)
            label = root / "labels" / f"{image.stem}.txt"
            label.rename(root / "labels" / sub / label.name)
    (root / "images" / "a" / "also_b").symlink_to(root / "images" / "b")
    manifest = convert(root, tmp_path / "out", output_name="all")
    assert manifest["splits"]["all"]["num_examples"] == 4 and not manifest["skipped"]


def test_problems_found_in_decoding_are_listed_by_path(tmp_path):
    """They came in the order of the splits' tasks (e.g. dcm015, dcm019, dcm003, ...)."""
    root = make_class_folders(tmp_path / "ds", {"Chest": 12, "Hand": 12})
    broken = sorted(root.rglob("*.png"))[::3]
    for path in broken:
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 4)
    with pytest.raises(ConversionError) as error:
        convert(root, tmp_path / "out", need_split="tvt_split", seed=3)
    paths = [line.split(":")[0] for line in error.value.problems]
    assert len(paths) == len(broken) and paths == sorted(paths)
    manifest = convert(root, tmp_path / "out", need_split="tt_split", on_error="skip")
    skipped = [entry["path"] for entry in manifest["skipped"]]
    assert len(skipped) == len(broken) and skipped == sorted(skipped)


def test_records_are_mixed_across_classes_within_a_shard(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"A": 50, "B": 50})
    convert(root, tmp_path / "out", output_name="all")
    texts = [r[features.KEY_TEXT].decode() for r in read_records(tmp_path / "out", "all")]
    assert len(set(texts[:20])) == 2 and texts != sorted(texts)


def test_predefined_layout_keeps_the_given_split(tmp_path):
    root = tmp_path / "ds"
    make_class_folders(root / "train", {"liver": 6, "spleen": 6})
    make_class_folders(root / "val", {"liver": 2, "spleen": 2}, start=100)
    manifest = convert(root, tmp_path / "out", need_split="predefined")
    assert manifest["splits"]["train"]["num_examples"] == 12
    assert manifest["splits"]["validation"]["class_counts"] == {"liver": 2, "spleen": 2}
    assert all(path.startswith("val/") for path, split in split_of_files(tmp_path / "out")
               .items() if split == "validation")
    with pytest.raises(ValueError, match="need_split=predefined"):
        convert(root, tmp_path / "out2", need_split="tvt_split")


def test_replacing_output_removes_old_shards_and_stale_staging(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"A": 30, "B": 30})
    convert(root, tmp_path / "out", output_name="all", shard_size_mb=0.001)
    assert len(list((tmp_path / "out").glob("all-*.tfrecord"))) > 2
    (tmp_path / "out" / ".convert-staging-killed").mkdir()
    (tmp_path / "out" / ".convert-staging-killed" / "all.part00000").write_bytes(b"x")
    convert(root, tmp_path / "out", output_name="all")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        ["all-00000-of-00001.tfrecord", "labels.txt", "manifest.json"]


def _bad(root: Path, case: str) -> str:
    """Breaks a 4+4-image images/labels dataset in one way; returns the expected message."""
    images, labels = root / "images", root / "labels"
    if case == "image without label":
        (labels / "000000.txt").unlink()
        return "images/000000.png: image without label file"
    if case == "label without image":
        (labels / "orphan.txt").write_text("Chest")
        return "labels/orphan.txt: label file without image"
    if case == "empty label":
        (labels / "000001.txt").write_text("  \n\n")
        return "images/000001.png: empty label file"
    if case == "non-UTF-8 label":
        (labels / "000001.txt").write_bytes(b"\xff\xfeChest")
        return "images/000001.png: label file is not UTF-8"
    if case == "zero-byte image":
        (images / "000002.png").write_bytes(b"")
        return "images/000002.png: zero-byte file"
    if case == "truncated image":
        data = (images / "000002.png").read_bytes()
        (images / "000002.png").write_bytes(data[: len(data) // 2])
        return "images/000002.png: undecodable PNG"
    if case == "undecodable image":
        (images / "000003.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
        return "images/000003.png: undecodable PNG"
    if case == "not an image":
        (images / "000003.png").write_bytes(b"hello world")
        return "images/000003.png: not a JPEG or PNG"
    if case == "duplicate stems":
        write_image(images / "000003.jpg", np.zeros((8, 8), np.uint8))
        return "duplicate stem '000003'"
    raise AssertionError(case)


BAD_CASES = ["image without label", "label without image", "empty label", "non-UTF-8 label",
             "zero-byte image", "truncated image", "undecodable image", "not an image",
             "duplicate stems"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_each_bad_input_fails_and_writes_nothing(tmp_path, make_images_labels_dataset, case):
    root = make_images_labels_dataset({"Chest": 4, "Hand": 4}, size=16)
    expected = _bad(root, case)
    with pytest.raises(ConversionError) as error:
        convert(root, tmp_path / "out")
    assert any(expected in line for line in error.value.problems), error.value.problems
    assert not (tmp_path / "out").exists()


def test_every_problem_is_listed_and_skip_converts_the_rest(tmp_path, make_images_labels_dataset):
    root = make_images_labels_dataset({"Chest": 5, "Hand": 5}, size=16)
    expected = [_bad(root, case) for case in ("image without label", "label without image",
                                             "empty label", "truncated image")]
    with pytest.raises(ConversionError) as error:
        convert(root, tmp_path / "out")
    for line in expected:  # validation and decode problems, all in one run
        assert any(line in problem for problem in error.value.problems), error.value.problems
    manifest = convert(root, tmp_path / "out", on_error="skip", output_name="all")
    skipped = {s["path"] for s in manifest["skipped"]}
    assert skipped == {"images/000000.png", "labels/orphan.txt", "images/000001.png",
                       "images/000002.png"}
    assert manifest["splits"]["all"]["num_examples"] == 7  # 10 images, 3 bad
    assert "skipped 4 files" in format_summary(manifest)


@pytest.mark.parametrize("overrides, expected", [
    (dict(need_split="tvt_split", validation_size=0.5, test_size=0.5), "don't fit"),
    (dict(need_split="tvt_split", validation_size=30, test_size=30), "don't fit"),
    # Said as given (a count), not as the fraction 1.92 it stands for.
    (dict(need_split="tvt_split", validation_size=100), "don't fit: --test_size=0.1 (5) + "
     "--validation_size=100 (100) of 52 inputs leave nothing for train"),
    (dict(need_split="tvt_split", validation_size=1.5), "whole number"),
    (dict(need_split="tvt_split"), "class 'Rare' has 2 group(s), fewer than the 3 splits"),
])
def test_dataset_wide_problems_fail_even_with_skip(tmp_path, overrides, expected):
    root = make_class_folders(tmp_path / "ds", {"Common": 50, "Rare": 2})
    with pytest.raises(ConversionError) as error:
        convert(root, tmp_path / "out", on_error="skip", **overrides)
    assert any(expected in line for line in error.value.problems), error.value.problems
    assert not (tmp_path / "out").exists()


def test_unwritable_output_dir_is_reported(tmp_path, make_images_labels_dataset):
    root = make_images_labels_dataset({"Chest": 2, "Hand": 2}, size=16)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConversionError, match="--output_dir: cannot create it"):
        convert(root, tmp_path / "a_file" / "out")


def _run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tf_convert_data.py", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_original_readme_command_verbatim(tmp_path, make_images_labels_dataset):
    root = make_images_labels_dataset({"chest": 10, "hand": 10}, size=16, suffix=".jpg")
    command = ("python tf_convert_data.py --dataset_name=dicom --dataset_dir=DIR "
               "--output_name=dicom_train --output_dir=OUT --need_split=tvt_split")
    args = command.replace("DIR", str(root)).replace("OUT", str(tmp_path / "out")).split()[2:]
    result = _run_cli(*args)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"train", "validation", "test"}
    assert sum(s["num_examples"] for s in manifest["splits"].values()) == 20
    assert "total" in result.stdout and "wrote 20 examples" in result.stdout
    # stderr is a pipe, as in a log file: no progress bar ("%|" is its percentage and bar;
    # text mode would turn its carriage returns into newlines, so they cannot be looked for).
    assert "%|" not in result.stderr


def test_cli_bad_input_exits_non_zero_with_one_line_per_problem(tmp_path,
                                                                make_images_labels_dataset):
    root = make_images_labels_dataset({"chest": 3, "hand": 3}, size=16)
    _bad(root, "image without label")
    _bad(root, "label without image")
    result = _run_cli(f"--dataset_dir={root}", f"--output_dir={tmp_path / 'out'}")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors[:2] == ["error: images/000000.png: image without label file "
                          "(expected labels/000000.txt)",
                          "error: labels/orphan.txt: label file without image"]
    assert not (tmp_path / "out").exists()
    assert "--on_error" in _run_cli("--help").stdout


def test_mednist_3000_converts_with_matching_counts(tmp_path, shared_data):
    source = shared_data / "mednist-3000"
    labels = collections.Counter(p.read_text().strip() for p in (source / "labels").iterdir())
    manifest = convert(source, tmp_path / "out", need_split="tvt_split", num_workers=2)
    totals = collections.Counter()
    for info in manifest["splits"].values():
        totals.update(info["class_counts"])
        assert info["num_examples"] == sum(f["num_records"] for f in info["files"])
    assert dict(totals) == dict(labels) and sum(totals.values()) == 3000
    assert manifest["skipped"] == [] and sorted(manifest["classes"]) == sorted(labels)
