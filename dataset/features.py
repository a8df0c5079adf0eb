"""The TFRecord example format: the one place that names the feature keys.

Both the converter (which serialises examples without importing TensorFlow, so
that its worker processes start fast) and the reader (which parses them with
``tf.io.parse_single_example``) use the constants and functions defined here.
The keys are TF-Slim's, so records stay readable by tools that know that format.
"""

from __future__ import annotations

import functools

KEY_ENCODED = "image/encoded"
KEY_FORMAT = "image/format"  # b"jpeg" or b"png"
KEY_LABEL = "image/class/label"  # int64 index into the manifest's class list
KEY_TEXT = "image/class/text"  # canonical class name
KEY_HEIGHT = "image/height"
KEY_WIDTH = "image/width"
KEY_CHANNELS = "image/channels"
KEY_FILENAME = "image/filename"  # path relative to the dataset folder

BYTES_KEYS = (KEY_ENCODED, KEY_FORMAT, KEY_TEXT, KEY_FILENAME)
INT64_KEYS = (KEY_LABEL, KEY_HEIGHT, KEY_WIDTH, KEY_CHANNELS)


# --- writing: a hand-rolled tf.train.Example encoder --------------------------
# tf.train.Example is a tiny protobuf (map<string, Feature>), so encoding it by
# hand avoids importing TensorFlow in every converter worker. The round-trip
# test parses these bytes with TensorFlow to prove they are valid.


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:  # the common case (lengths of small fields, labels)
        return _SMALL_VARINTS[value]
    if value < 0:  # protobuf int64 encodes negatives as ten-byte two's complement
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_SMALL_VARINTS = tuple(bytes((value,)) for value in range(0x80))
_TAG1, _TAG2, _TAG3 = b"\x0a", b"\x12", b"\x1a"  # fields 1, 2, 3 with wire type 2


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _bytes_feature(value: bytes) -> bytes:
    # Feature{bytes_list(1): BytesList{value(1): value}}
    inner = _TAG1 + _varint(len(value)) + value
    return _TAG1 + _varint(len(inner)) + inner


def _int64_feature(value: int) -> bytes:
    # Feature{int64_list(3): Int64List{value(1) packed: [value]}}
    packed = _varint(value)
    inner = _TAG1 + _varint(len(packed)) + packed
    return _TAG3 + _varint(len(inner)) + inner


# Map entry {key(1), value(2)} prefixes, precomputed: this encoder runs once per
# image in the converter's hot loop.
_KEY_PREFIX = {key: _field(1, key.encode()) + _TAG2
               for key in BYTES_KEYS + INT64_KEYS}


def _entry(key: str, feature: bytes) -> bytes:
    entry = _KEY_PREFIX[key] + _varint(len(feature)) + feature
    return _TAG1 + _varint(len(entry)) + entry


@functools.lru_cache(maxsize=4096)
def _int64_entry(key: str, value: int) -> bytes:
    # Labels, sizes and channel counts repeat across a dataset: encode each once.
    return _entry(key, _int64_feature(value))


@functools.lru_cache(maxsize=4096)
def _bytes_entry(key: str, value: bytes) -> bytes:
    return _entry(key, _bytes_feature(value))


def serialize_example(
    *,
    encoded: bytes,
    image_format: str,
    label: int,
    text: str,
    height: int,
    width: int,
    channels: int,
    filename: str,
) -> bytes:
    """Serialise one image as a ``tf.train.Example`` with the TF-Slim keys."""
    if image_format not in ("jpeg", "png"):
        raise ValueError(f"image_format must be 'jpeg' or 'png', got {image_format!r}")
    # Features{feature(1): map entries}. Entries are written in sorted key order
    # (the order below) so identical inputs give identical bytes.
    entries = b"".join((
        _int64_entry(KEY_CHANNELS, channels),
        _int64_entry(KEY_LABEL, label),
        _bytes_entry(KEY_TEXT, text.encode("utf-8")),
        _entry(KEY_ENCODED, _bytes_feature(encoded)),
        _entry(KEY_FILENAME, _bytes_feature(filename.encode("utf-8"))),
        _bytes_entry(KEY_FORMAT, image_format.encode()),
        _int64_entry(KEY_HEIGHT, height),
        _int64_entry(KEY_WIDTH, width),
    ))
    # Example{features(1): Features}
    return _TAG1 + _varint(len(entries)) + entries


# --- reading: pure TensorFlow ------------------------------------------------


def feature_spec():
    """The parsing spec for ``tf.io.parse_single_example`` / ``parse_example``."""
    import tensorflow as tf

    spec = {key: tf.io.FixedLenFeature([], tf.string) for key in BYTES_KEYS}
    spec.update({key: tf.io.FixedLenFeature([], tf.int64) for key in INT64_KEYS})
    return spec


def parse_example(serialized, channels: int):
    """Parse one serialised example into ``(image uint8 [H, W, channels], label int32)``.

    ``channels`` is what the model wants (1 for grey, 3 for RGB); decode_image
    converts grey <-> RGB, so a dataset may mix both.
    """
    import tensorflow as tf

    parsed = tf.io.parse_single_example(serialized, feature_spec())
    image = tf.io.decode_image(parsed[KEY_ENCODED], channels=channels, dtype=tf.uint8,
                               expand_animations=False)
    return image, tf.cast(parsed[KEY_LABEL], tf.int32)

