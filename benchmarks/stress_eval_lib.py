"""benchmarks/stress_eval.py's fixed acquisition shifts and their scoring (its docstring says
why); TensorFlow, so the program imports it once its flags are parsed."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from dataset import augment, converted, reader
from official.utils.metrics import laterality_pairs

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
    # Image corruptions only, no geometry: the corruption families and severities MedMNIST-C
    # (Di Salvo et al. 2024, arXiv:2406.17536) chose for OrganAMNIST (pixelation, JPEG, four
    # noises, blur, brightness, contrast, gamma), levels 1 and 3 of their 5, with MedMNIST-C's
    # 224-px blur kernels scaled to the 28-px images. A table chosen by others, so the
    # protocol is not only the flags' own ranges played back (the "ct" table is).
    "ct-corruptions": (
        ("pixelate 0.7", "pixelate", 0.7),
        ("pixelate 0.5", "pixelate", 0.5),
        ("jpeg 50", "jpeg", 50),
        ("jpeg 15", "jpeg", 15),
        ("noise 4%", "noise", 0.04),
        ("noise 12%", "noise", 0.12),
        ("speckle 0.05", "speckle", 0.05),
        ("speckle 0.2", "speckle", 0.2),
        ("impulse 1%", "impulse", 0.01),
        ("impulse 3%", "impulse", 0.03),
        ("blur sd 0.6", "blur", 0.6),
        ("blur sd 1.0", "blur", 1.0),
        ("brightness 1.2", "brightness", 1.2),
        ("brightness 0.8", "brightness", 0.8),
        ("brightness 1.4", "brightness", 1.4),
        ("brightness 0.7", "brightness", 0.7),
        ("contrast 1.3", "contrast", 1.3),
        ("contrast 0.8", "contrast", 0.8),
        ("contrast 1.6", "contrast", 1.6),
        ("contrast 0.6", "contrast", 0.6),
        ("gamma 1.3", "gamma", 1.3),
        ("gamma 0.9", "gamma", 0.9),
        ("gamma 1.6", "gamma", 1.6),
        ("gamma 0.7", "gamma", 0.7),
    ),
    # Stretches along one image axis: no training flag draws one (--augment_scale zooms both
    # axes alike). In OrganAMNIST every crop is an organ's bounding box resized to a square,
    # so an organ's proportions, which differ between patients, reach the model as such a
    # stretch. A factor below 1 also leaves black bands on two sides (as a zoom-out of
    # --augment_scale does on four): there a geometry-trained model has seen something alike.
    "ct-aspect": (
        ("rows x0.85", "stretch", (0.85, 1.0)),
        ("rows x1.15", "stretch", (1.15, 1.0)),
        ("cols x0.85", "stretch", (1.0, 0.85)),
        ("cols x1.15", "stretch", (1.0, 1.15)),
        ("rows x0.87 cols x1.15", "stretch", (0.87, 1.15)),
        ("rows x1.15 cols x0.87", "stretch", (1.15, 0.87)),
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
    # Mirrors on purpose: which image axis carries the labels' left and right. The flip along
    # that axis swaps X-left and X-right; the other flip does not (OrganAMNIST's rows run along
    # the patient's left-right axis, so there it is the up-down flip; RESULTS.md section 10).
    "orientation": (
        ("flip left-right", "flip", "left_right"),
        ("flip up-down", "flip", "up_down"),
        ("rotate 180", "rot90", 2),
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
        x = augment.warp(x, matrix)
    elif kind == "stretch":  # (rows, cols) factors about the centre
        stretch_y, stretch_x = parameter
        size = tf.cast(tf.shape(x)[1:3], tf.float32)
        centre_y, centre_x = (size[0] - 1.0) / 2.0, (size[1] - 1.0) / 2.0
        # ImageProjectiveTransformV3 maps each output pixel to its input pixel.
        matrix = tf.stack([1.0 / stretch_x, 0.0, centre_x * (1.0 - 1.0 / stretch_x),
                           0.0, 1.0 / stretch_y, centre_y * (1.0 - 1.0 / stretch_y), 0.0, 0.0])
        x = augment.warp(x, matrix)
    elif kind == "rot90":
        x = tf.image.rot90(x, parameter)  # a rotation: the square image keeps its size
    elif kind == "flip":
        x = tf.reverse(x, axis=[2] if parameter == "left_right" else [1])
    elif kind == "invert":
        x = 255.0 - x
    elif kind == "contrast":  # about each image's mean, like a narrower/wider window
        mean = tf.reduce_mean(x, axis=(1, 2, 3), keepdims=True)
        x = (x - mean) * parameter + mean
    elif kind == "gamma":
        x = 255.0 * tf.pow(x / 255.0, parameter)
    elif kind == "noise":
        x = x + tf.random.stateless_normal(tf.shape(x), (17, 4), stddev=parameter * 255.0)
    elif kind == "speckle":  # multiplicative: brighter tissue, more noise
        x = x * (1.0 + tf.random.stateless_normal(tf.shape(x), (17, 5), stddev=parameter))
    elif kind == "impulse":  # salt and pepper on a `parameter` fraction of the pixels
        hit = tf.random.stateless_uniform(tf.shape(x), (17, 6)) < parameter
        salt = tf.random.stateless_uniform(tf.shape(x), (17, 7)) < 0.5
        x = tf.where(hit, tf.where(salt, 255.0, 0.0), x)
    elif kind == "brightness":
        x = x * parameter
    elif kind == "blur":
        x = augment.gaussian_blur(x, parameter, radius=max(1, math.ceil(3.0 * parameter)))
    elif kind == "pixelate":  # fewer detector pixels: down by `parameter`, back up blocky
        size = tf.shape(x)[1:3]
        small = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * parameter), tf.int32), 1)
        x = tf.image.resize(tf.image.resize(x, small, "area"), size, "nearest")
    elif kind == "jpeg":
        x = tf.cast(tf.map_fn(lambda image: tf.image.adjust_jpeg_quality(image, parameter),
                              tf.cast(x, tf.uint8)), tf.float32)
    else:
        raise ValueError(f"unknown perturbation kind {kind!r}")
    return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)


def _encode(images: tf.Tensor) -> tf.Tensor:
    return tf.map_fn(tf.io.encode_png, images, fn_output_signature=tf.string)


def chosen_shifts(preset: str, names: list[str] | tuple[str, ...] = ()) -> tuple:
    """The preset's (name, kind, parameter) shifts named in `names` (empty: all), in the
    preset's order.

    Raises:
      ValueError: a name the preset does not have (the message lists those it has).
    """
    table = PRESETS[preset]
    unknown = [name for name in names if name not in {shift[0] for shift in table}]
    if unknown:
        raise ValueError(f"--shifts: preset {preset} has no shift {', '.join(map(repr, unknown))}"
                         f"; its shifts: {', '.join(shift[0] for shift in table)}")
    return tuple(shift for shift in table if not names or shift[0] in names)


def stress(predictor, images: np.ndarray, labels: np.ndarray, preset: str,
           batch_size: int, shifts: list[str] | tuple[str, ...] = ()
           ) -> list[tuple[str, float, float, str, np.ndarray]]:
    """(name, accuracy, worst class recall, worst class, confusion matrix [true, predicted])
    for the clean split and each shift of the preset (only those named in `shifts`, if any).

    Raises:
      ValueError: `shifts` names a shift the preset does not have.
    """
    rows = []
    names = predictor.class_names
    for name, kind, parameter in (("clean", None, None), *chosen_shifts(preset, shifts)):
        predictions = []
        for start in range(0, len(images), batch_size):
            batch = tf.constant(images[start:start + batch_size])
            if kind is not None:
                batch = perturb(batch, kind, parameter)
            predictions.append(predictor(_encode(batch)).argmax(axis=1))
        predicted = np.concatenate(predictions)
        confusion = np.zeros((len(names), len(names)), np.int64)
        np.add.at(confusion, (labels, predicted), 1)
        recalls = _recalls(confusion)
        worst = int(np.argmin(recalls))
        rows.append((name, float(np.mean(predicted == labels)), recalls[worst], names[worst],
                     confusion))
    return rows


def _recalls(confusion: np.ndarray) -> list[float]:
    # A class absent from the split cannot be missed: recall 1, so it is never the "worst".
    support = confusion.sum(axis=1)
    return [float(confusion[k, k] / support[k]) if support[k] else 1.0
            for k in range(len(confusion))]


def load_split(data_dir: str, split: str, channels: int, limit: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, H, W, C], labels [N]) of a converted split, the first `limit` (0: all).

    Raises:
      ValueError: the split's images are not all of one size (the batches need one).
    """
    dataset = reader.make_dataset(converted.split_info(data_dir, split).files, channels=channels)
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
           rows: list[tuple[str, float, float, str, np.ndarray]], examples: int,
           class_names: list[str]) -> str:
    """The table `stress` rows make, then each class's recall clean and over the shifts and the
    commonest confusions under the shifts; last line "stress accuracy X (clean Y)"."""
    lines = [f"{model} on {data_dir} {split} ({examples} images), preset {preset}, tta {tta}",
             f"{'shift':<16} {'accuracy':>8}  worst class recall"]
    lines += [f"{name:<16} {accuracy:8.4f}  {recall:.4f} {worst}"
              for name, accuracy, recall, worst, _ in rows]
    shifted = sum(confusion for name, *_, confusion in rows if name != "clean")
    lines.append(f"{'class':<16} {'clean':>8} {'shifted':>8}  (recall)")
    lines += [f"{name:<16} {clean:8.4f} {stressed:8.4f}" for name, clean, stressed
              in zip(class_names, _recalls(rows[0][4]), _recalls(shifted))]
    errors = shifted * (1 - np.eye(len(class_names), dtype=shifted.dtype))
    top = np.argsort(errors, axis=None)[::-1][:5]
    lines.append("commonest confusions under the shifts: " + ", ".join(
        f"{class_names[i]}->{class_names[j]} {errors[i, j]}"
        for i, j in zip(*np.unravel_index(top, errors.shape)) if errors[i, j]))
    pairs = laterality_pairs(class_names)
    if pairs:
        # A mirror along the laterality axis moves most left/right images to the other side.
        support = sum(rows[0][4][k].sum() for pair in pairs for k in pair)
        lines.append(f"left/right swaps ({len(pairs)} pairs, {support} images):")
        for name, *_, confusion in rows:
            swaps = sum(confusion[a, b] + confusion[b, a] for a, b in pairs)
            lines.append(f"  {name:<16} {swaps:>6}  {swaps / max(support, 1):.4f}")
    accuracies = [accuracy for name, accuracy, *_ in rows if name != "clean"]
    lines.append(f"stress accuracy {np.mean(accuracies):.4f} (clean {rows[0][1]:.4f})")
    return "\n".join(lines)
