"""benchmarks/stress_eval.py's fixed acquisition shifts and their scoring (its docstring says
why); TensorFlow, so the program imports it once its flags are parsed."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from dataset import augment, reader

# name -> (kind, parameter). Geometry: (zoom, degrees, shift_y, shift_x as fractions of the side).
PRESETS = {
    "ct": (
        ("zoom 0.85", "affine", (0.85, 0.0, 0.0, 0.0)),
        ("zoom 1.15", "affine", (1.15, 0.0, 0.0, 0.0)),
        ("shift right 8%", "affine", (1.0, 0.0, 0.0, 0.08)),
        ("shift down 8%", "affine", (1.0, 0.0, 0.08, 0.0)),
        ("rotate -10", "affine", (1.0, -10.0, 0.0, 0.0)),
        ("rotate +10", "affine", (1.0, 10.0, 0.0, 0.0)),
        ("contrast 0.7", "contrast", 0.7),
        ("contrast 1.3", "contrast", 1.3),
        ("gamma 0.7", "gamma", 0.7),
        ("gamma 1.4", "gamma", 1.4),
        ("noise 4%", "noise", 0.04),
    ),
    "radiograph": (
        ("rotate 90", "rot90", 1),
        ("rotate 180", "rot90", 2),
        ("rotate 270", "rot90", 3),
        ("inverted", "invert", None),
        ("framed 75%", "affine", (0.75, 0.0, 0.0, 0.0)),
        ("contrast 0.6", "contrast", 0.6),
        ("gamma 0.6", "gamma", 0.6),
        ("gamma 1.6", "gamma", 1.6),
    ),
}


def perturb(images: tf.Tensor, kind: str, parameter) -> tf.Tensor:
    """One fixed shift of a uint8 batch [N, H, W, C]; returns uint8 of the same shape."""
    x = tf.cast(images, tf.float32)
    if kind == "affine":
        zoom, degrees, shift_y, shift_x = parameter
        size = tf.cast(tf.shape(x)[1:3], tf.float32)
        matrix = augment.affine_matrix(size, tf.constant(zoom), tf.constant(
            degrees * math.pi / 180.0), shift_y * size[0], shift_x * size[1])
        x = tf.raw_ops.ImageProjectiveTransformV3(
            images=x, transforms=tf.tile(matrix[None], [tf.shape(x)[0], 1]),
            output_shape=tf.shape(x)[1:3], fill_value=0.0, interpolation="BILINEAR",
            fill_mode="CONSTANT")
    elif kind == "rot90":
        x = tf.image.rot90(x, parameter)  # a rotation: the square image keeps its size
    elif kind == "invert":
        x = 255.0 - x
    elif kind == "contrast":  # about each image's mean, like a narrower/wider window
        mean = tf.reduce_mean(x, axis=(1, 2, 3), keepdims=True)
        x = (x - mean) * parameter + mean
    elif kind == "gamma":
        x = 255.0 * tf.pow(x / 255.0, parameter)
    elif kind == "noise":
        x = x + tf.random.stateless_normal(tf.shape(x), (17, 4), stddev=parameter * 255.0)
    else:
        raise ValueError(f"unknown perturbation kind {kind!r}")
    return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)


def _encode(images: tf.Tensor) -> tf.Tensor:
    return tf.map_fn(tf.io.encode_png, images, fn_output_signature=tf.string)


def stress(predictor, images: np.ndarray, labels: np.ndarray, preset: str,
           batch_size: int) -> list[tuple[str, float, float, str]]:
    """(name, accuracy, worst class recall, worst class) for the clean split and each shift."""
    rows = []
    names = predictor.class_names
    for name, kind, parameter in (("clean", None, None), *PRESETS[preset]):
        predictions = []
        for start in range(0, len(images), batch_size):
            batch = tf.constant(images[start:start + batch_size])
            if kind is not None:
                batch = perturb(batch, kind, parameter)
            predictions.append(predictor(_encode(batch)).argmax(axis=1))
        predicted = np.concatenate(predictions)
        recalls = [float(np.mean(predicted[labels == k] == k)) if np.any(labels == k) else 1.0
                   for k in range(len(names))]
        worst = int(np.argmin(recalls))
        rows.append((name, float(np.mean(predicted == labels)), recalls[worst], names[worst]))
    return rows


def load_split(data_dir: str, split: str, channels: int, limit: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, H, W, C], labels [N]) of a converted split, the first `limit` (0: all).

    Raises:
      ValueError: the split's images are not all of one size (the batches need one).
    """
    dataset = reader.make_dataset(reader.split_info(data_dir, split).files, channels=channels)
    if limit:
        dataset = dataset.take(limit)
    # Every image of a split at its stored size; the batches need one size.
    pairs = list(dataset.as_numpy_iterator())
    shapes = {image.shape for image, _ in pairs}
    if len(shapes) != 1:
        raise ValueError(f"{data_dir} split {split}: images of several sizes "
                         f"{sorted(shapes)[:3]}; this protocol needs one size")
    return np.stack([image for image, _ in pairs]), np.array([label for _, label in pairs])


def report(model: str, data_dir: str, split: str, preset: str, tta: int,
           rows: list[tuple[str, float, float, str]], examples: int) -> str:
    """The table `stress` rows make; last line "stress accuracy X (clean Y)"."""
    lines = [f"{model} on {data_dir} {split} ({examples} images), preset {preset}, tta {tta}",
             f"{'shift':<16} {'accuracy':>8}  worst class recall"]
    lines += [f"{name:<16} {accuracy:8.4f}  {recall:.4f} {worst}"
              for name, accuracy, recall, worst in rows]
    shifted = [accuracy for name, accuracy, _, _ in rows if name != "clean"]
    lines.append(f"stress accuracy {np.mean(shifted):.4f} (clean {rows[0][1]:.4f})")
    return "\n".join(lines)
