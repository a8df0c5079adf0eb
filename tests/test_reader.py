"""dataset.reader: manifest checks, SplitInfo, and the decoded tf.data pipeline."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from dataset import reader
from dataset.converted import read_manifest, split_info
from tests.test_convert import convert, make_class_folders


@pytest.fixture
def converted(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"Chest": 30, "Hand": 20}, size=12)
    convert(root, tmp_path / "out", need_split="tt_split", test_size=0.3, shard_size_mb=0.002)
    return tmp_path / "out"


def test_split_info_comes_from_the_manifest(converted):
    manifest = json.loads((converted / "manifest.json").read_text())
    info = split_info(str(converted), "train")
    assert info.split == "train" and info.data_dir == str(converted)
    assert info.class_names == ("Chest", "Hand")
    assert info.num_examples == manifest["splits"]["train"]["num_examples"]
    assert info.class_counts == manifest["splits"]["train"]["class_counts"]
    assert len(info.files) > 1 and all(f.startswith(str(converted) + "/") for f in info.files)
    test = split_info(str(converted), "test")
    assert info.num_examples + test.num_examples == 50


def test_splits_named_with_commas_are_read_as_their_union(converted):
    train, test = (split_info(str(converted), name) for name in ("train", "test"))
    both = split_info(str(converted), "train, test")
    assert both.split == "train,test"
    assert both.files == train.files + test.files
    assert both.num_examples == 50
    assert both.class_counts == {"Chest": 30, "Hand": 20}
    assert sum(train.class_counts.values()) < 50 and sum(test.class_counts.values()) < 50
    with pytest.raises(ValueError, match="no split 'validation'; available: train, test"):
        split_info(str(converted), "train,validation")
    with pytest.raises(ValueError, match="names a split twice"):
        split_info(str(converted), "train,train")


@pytest.mark.parametrize("channels", [1, 3])
def test_make_dataset_yields_decoded_images_and_labels(converted, channels):
    info = split_info(str(converted), "test")
    dataset = reader.make_dataset(info.files, channels=channels, shuffle_files=True, seed=1)
    labels = collections.Counter()
    for image, label in dataset:
        assert image.shape == (12, 12, channels) and image.dtype.name == "uint8"
        assert label.dtype.name == "int32"
        labels[info.class_names[int(label)]] += 1
    assert dict(labels) == {k: v for k, v in info.class_counts.items() if v}


def test_make_dataset_pixels_match_the_source(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"A": 3}, size=8)
    convert(root, tmp_path / "out", output_name="all")
    info = split_info(str(tmp_path / "out"), "all")
    from PIL import Image

    sources = sorted(np.array(Image.open(p)).tobytes() for p in root.rglob("*.png"))
    decoded = sorted(image.numpy()[..., 0].tobytes()
                     for image, _ in reader.make_dataset(info.files, channels=1))
    assert decoded == sources


def test_refuses_incomplete_output(converted, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such folder"):
        read_manifest(str(tmp_path / "nowhere"))
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(FileNotFoundError, match="unfinished: no manifest.json"):
        read_manifest(str(tmp_path / "unfinished"))
    # The trainer's default --eval_split on a train/test conversion: which conversion it is.
    with pytest.raises(ValueError, match="no split 'validation'; available: train, test \\("
                                         "converted with --need_split=tt_split: no validation "
                                         "split; evaluate on test, or convert with tvt_split\\)$"):
        split_info(str(converted), "validation")
    shard = sorted(converted.glob("train-*.tfrecord"))[0]
    shard.write_bytes(shard.read_bytes()[:-1])
    with pytest.raises(ValueError, match="incomplete or altered"):
        read_manifest(str(converted))
    shard.unlink()
    with pytest.raises(ValueError, match=f"shard {shard.name} of split 'train' is missing"):
        split_info(str(converted), "train")
    (converted / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="did not finish"):
        split_info(str(converted), "train")


def test_parallelism_above_the_shard_count_is_accepted(tmp_path):
    """--num_parallel_calls=5 (the original default) on a one-shard split."""
    from tests.trainer_fixtures import tiny_dataset

    from dataset.reader import make_dataset

    info = split_info(str(tiny_dataset(tmp_path / "d")), "train")
    assert len(info.files) == 1
    examples = list(make_dataset(info.files, channels=1, num_parallel_calls=5))
    assert len(examples) == info.num_examples
