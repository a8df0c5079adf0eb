"""A validation protocol closer to unseen patients: accuracy under fixed acquisition shifts.

  python benchmarks/stress_eval.py --model=runs/organ/export --data_dir=runs/organ/data \\
      --split=validation --preset=ct [--tta=1] [--limit=0]

Why: a validation split from the same archive, scanners and protocols as the training split
agrees with itself (OrganAMNIST: 16 validation scans say 0.98, the 70 official test scans
0.93). New patients differ mostly in how they were acquired and rendered: field of view and
centring, patient size, window/contrast, noise, and for radiographs orientation and
MONOCHROME1/2 inversion. This script evaluates a model on the split as it is and under each
shift of a fixed table (deterministic, so runs compare), through the same serving path as
dicom_eval (the images are re-encoded as PNG and fed to the Predictor), and prints accuracy and
the worst class's recall for each, then the mean over the shifts: the "stress accuracy".

Presets (never a mirror: left/right organs are separate classes):
  ct          zoom 0.85 / 1.15, shift 8% right / down, rotation -10 / +10 degrees,
              contrast 0.7 / 1.3, gamma 0.7 / 1.4, Gaussian noise sd 4%
  radiograph  rotation 90 / 180 / 270, grey scale inverted, framed (75% size in a black
              border), contrast 0.6, gamma 0.6 / 1.6

Last line: "stress accuracy X (clean Y)" so scripts can collect it.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from dataset import augment, reader  # noqa: E402
from official.core.inference import load_predictor  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model_dir or SavedModel; several, "
                        "comma-separated, form an ensemble")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--tta", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--limit", type=int, default=0, help="evaluate the first N images only")
    args = parser.parse_args()

    predictor = load_predictor(args.model.split(","), None, args.tta)
    info = reader.split_info(args.data_dir, args.split)
    channels = int(predictor.members[0].config["channels"])
    dataset = reader.make_dataset(info.files, channels=channels)
    if args.limit:
        dataset = dataset.take(args.limit)
    # Every image of a split at its stored size; the batches below need one size.
    pairs = list(dataset.as_numpy_iterator())
    shapes = {image.shape for image, _ in pairs}
    if len(shapes) != 1:
        sys.exit(f"stress_eval.py: {args.data_dir} split {args.split}: images of several sizes "
                 f"{sorted(shapes)[:3]}; this protocol needs one size")
    images = np.stack([image for image, _ in pairs])
    labels = np.array([label for _, label in pairs])
    rows = stress(predictor, images, labels, args.preset, args.batch_size)
    print(f"{args.model} on {args.data_dir} {args.split} ({len(labels)} images), preset "
          f"{args.preset}, tta {args.tta}")
    print(f"{'shift':<16} {'accuracy':>8}  worst class recall")
    for name, accuracy, recall, worst in rows:
        print(f"{name:<16} {accuracy:8.4f}  {recall:.4f} {worst}")
    shifted = [accuracy for name, accuracy, _, _ in rows if name != "clean"]
    print(f"stress accuracy {np.mean(shifted):.4f} (clean {rows[0][1]:.4f})")


if __name__ == "__main__":
    main()
