"""Reads the converter's output: the tf.data pipeline over the splits that dataset/converted.py
describes (the manifest and the splits' files and sizes, read without TensorFlow)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import tensorflow as tf
from PIL import Image

from dataset.converted import split_info
from dataset.features import KEY_CHANNELS, KEY_ENCODED, KEY_FILENAME, parse_example
from dataset.magic import JPEG_MAGIC


def split_filenames(data_dir: str, split: str) -> list[str]:
    """The stored image/filename of every record of a split, in file order (no image decoded)."""
    spec = {KEY_FILENAME: tf.io.FixedLenFeature([], tf.string)}
    dataset = tf.data.TFRecordDataset(list(split_info(data_dir, split).files)).map(
        lambda record: tf.io.parse_single_example(record, spec)[KEY_FILENAME])
    return [name.decode() for name in dataset.as_numpy_iterator()]


# An image stored with three channels is in colour when they differ by more than this on
# average (0-255 levels): an RGB file of a grey radiograph (R = G = B, up to JPEG rounding)
# is not, a photograph or a colour overlay image is.
COLOUR_SPREAD = 4.0
_EXIF_ORIENTATION = 0x0112  # 1 (or absent): stored upright


@dataclass(frozen=True)
class ImageSample:
    """What a sample of a split's images shows (``sample_images``); each example is the first
    such image's stored filename."""
    sampled: int
    colour: int
    colour_example: str | None
    turned: int  # JPEGs whose EXIF orientation says a viewer shows them turned or mirrored
    turned_example: str | None


def sample_images(files, limit: int = 64) -> ImageSample:
    """Up to ``limit`` records, taken from the first shards alike (their records are in the
    converter's shuffled order). Only images stored with 3 or 4 channels are decoded."""
    files = list(files)[:8]
    colour, turned = [], []
    if not files:
        return ImageSample(0, 0, None, 0, None)
    spec = {KEY_ENCODED: tf.io.FixedLenFeature([], tf.string),
            KEY_FILENAME: tf.io.FixedLenFeature([], tf.string),
            KEY_CHANNELS: tf.io.FixedLenFeature([], tf.int64)}
    per_shard = max(1, limit // len(files))
    records = tf.data.Dataset.from_tensor_slices(files).interleave(
        lambda path: tf.data.TFRecordDataset(path).take(per_shard), cycle_length=len(files))
    sampled = 0
    for record in records.take(limit):
        parsed = tf.io.parse_single_example(record, spec)
        sampled += 1
        name, data = parsed[KEY_FILENAME].numpy().decode(), parsed[KEY_ENCODED].numpy()
        if data.startswith(JPEG_MAGIC):  # EXIF is a JPEG's; Pillow reads it without decoding
            with Image.open(io.BytesIO(data)) as image:
                if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
                    turned.append(name)
        if int(parsed[KEY_CHANNELS]) < 3:
            continue
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        spread = tf.reduce_max(image, -1) - tf.reduce_min(image, -1)
        if float(tf.reduce_mean(tf.cast(spread, tf.float32))) > COLOUR_SPREAD:
            colour.append(name)
    return ImageSample(sampled, len(colour), (colour or [None])[0], len(turned),
                       (turned or [None])[0])


def make_dataset(files, *, channels: int, shuffle_files: bool = False, seed: int | None = None,
                 num_parallel_calls=tf.data.AUTOTUNE,
                 deterministic: bool | None = None) -> tf.data.Dataset:
    """Decoded ``(uint8 image [H, W, channels], int32 label)`` pairs, unbatched.

    Shards are read with a parallel interleave and parsed/decoded in parallel.
    No example shuffle, batching or repeat: the caller adds those.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3; got {channels}")
    files = list(files)
    if not files:
        raise ValueError("make_dataset needs at least one shard file")
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    cycle_length = min(len(files), 8)
    # tf.data rejects an interleave parallelism above its cycle length.
    interleave_calls = (num_parallel_calls if num_parallel_calls == tf.data.AUTOTUNE
                        else max(1, min(num_parallel_calls, cycle_length)))
    dataset = dataset.interleave(tf.data.TFRecordDataset, cycle_length=cycle_length,
                                 num_parallel_calls=interleave_calls,
                                 deterministic=deterministic)
    return dataset.map(lambda record: parse_example(record, channels),
                       num_parallel_calls=num_parallel_calls, deterministic=deterministic)
