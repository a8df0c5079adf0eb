"""Test-time augmentation: a fixed table of laterality-safe views of an image batch (pure TF).

Averaging a model's probabilities over a few slightly moved copies of each image smooths out
its sensitivity to exact framing. The views are data, not random draws, so a prediction is
reproducible and the same on every machine. Like dataset/augment.py, nothing here mirrors an
image: left and right kidney are different classes, so every view is a zoom, a rotation and a
shift (determinant > 0).

Views apply to images on the 0-255 scale already resized to the model's image_size, before
`preprocess.normalize`; pixels moved in from outside are 0 (black).
"""

from __future__ import annotations

import math

import tensorflow as tf

from dataset import augment

# (zoom, rotation in degrees clockwise as displayed (rows run down), shift down, shift right),
# shifts as fractions of the side. The first is the identity, so num_views=1 is plain
# inference; after it the views come in opposite pairs, so every odd num_views is symmetric
# (no net rotation, zoom or shift). Small on purpose: a radiograph's field of view carries the
# label. The training crop zooms in and shifts, but never rotates or zooms out: the ±5 degree
# and 0.9 zoom views are inside what training showed only with --augment_rotate and
# --augment_scale.
TTA_VIEWS = (
    (1.0, 0.0, 0.0, 0.0),
    (1.0, 5.0, 0.0, 0.0),
    (1.0, -5.0, 0.0, 0.0),
    (1.1, 0.0, 0.0, 0.0),
    (0.9, 0.0, 0.0, 0.0),
    (1.0, 0.0, 1 / 16, 1 / 16),
    (1.0, 0.0, -1 / 16, -1 / 16),
)


def check_num_views(num_views: int) -> int:
    """Returns num_views if it is an int in [1, len(TTA_VIEWS)], else raises ValueError."""
    if isinstance(num_views, bool) or not isinstance(num_views, int) \
            or not 1 <= num_views <= len(TTA_VIEWS):
        raise ValueError(f"test-time views must be an int in [1, {len(TTA_VIEWS)}] "
                         f"(1 = off), got {num_views!r}")
    return num_views


def test_time_views(images: tf.Tensor, num_views: int) -> tf.Tensor:
    """The first `num_views` views of TTA_VIEWS of every image, view-major.

    Args:
      images: [N, H, W, C] on the 0-255 scale (uint8 or float).
      num_views: 1..len(TTA_VIEWS); 1 returns the images themselves (as float32).

    Returns:
      float32 [num_views * N, H, W, C]; view v of image n is row v * N + n, so
      `tf.reshape(result, [num_views, N, ...])` separates the views.
    Raises:
      ValueError: images not of rank 4, or num_views out of range.
    """
    check_num_views(num_views)
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4:
        raise ValueError(f"images must have rank 4 ([N, H, W, C]), got shape {images.shape}")
    images = tf.cast(images, tf.float32)
    size = tf.cast(tf.shape(images)[1:3], tf.float32)
    views = [images]  # the identity, exactly
    for zoom, degrees, shift_y, shift_x in TTA_VIEWS[1:num_views]:
        transform = augment.affine_matrix(
            size, tf.constant(zoom), tf.constant(degrees * math.pi / 180.0),
            shift_y * size[0], shift_x * size[1])
        views.append(augment.warp(images, transform))
    return tf.concat(views, axis=0)
