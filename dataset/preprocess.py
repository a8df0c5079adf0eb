"""Image preprocessing shared by training, evaluation, export and prediction (pure TF, no I/O).

Images arrive as decoded pixels, uint8 [H, W, C] (or float on the same 0-255 scale), with C = 1
for radiographs or 3. Every path ends in `normalize`, so a model never sees two different input
scalings. Both paths resize the (cropped) image to a square, ignoring its aspect ratio: the
training crop's aspect is sampled *relative to the image's own aspect* so that train images
differ from eval images only by a mild stretch.
"""

from __future__ import annotations

import tensorflow as tf

# Random resized crop bounds for radiographs, much tighter than Inception's (8%-100% area,
# 3/4-4/3 absolute aspect): a body-part label depends on the whole field of view, and a crop
# that keeps 8% of a chest film may show only ribs. Keeping >= 75% of the area at most trims the
# borders (collimation edges, markers), and the aspect range (relative to the image's own
# aspect, so non-square films are handled alike) stretches anatomy by at most 4/3.
CROP_AREA_RANGE = (0.75, 1.0)
CROP_ASPECT_RANGE = (3 / 4, 4 / 3)


def normalize(image: tf.Tensor) -> tf.Tensor:
    """Maps pixels on the 0-255 scale (uint8 or float) to float32 in [-1, 1].

    Fixed constants rather than dataset mean/std: nothing has to be stored with the model for
    export or prediction to reproduce training exactly, and a modality's mean varies with
    scanner and window anyway. [-1, 1] is zero-centred, and the first batch norm takes care of
    the remaining scale.
    """
    return tf.cast(image, tf.float32) * (1.0 / 127.5) - 1.0


def resize_square(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """The resize of every path: any size to image_size x image_size, on the 0-255 scale."""
    # Antialiasing matters when shrinking large films (512-4096 px) to 28-224 px: without it
    # the bilinear kernel samples only a few source pixels and fine structure aliases into
    # noise. The triangle filter has non-negative weights, so the output stays within 0-255.
    return tf.image.resize(image, (image_size, image_size), method="bilinear", antialias=True)


def _check(image: tf.Tensor, image_size: int, ranks: tuple[int, ...]) -> tf.Tensor:
    image = tf.convert_to_tensor(image)
    if image.shape.rank not in ranks:
        raise ValueError(f"image must have rank {' or '.join(map(str, ranks))} "
                         f"([H, W, C]{' or [N, H, W, C]' if 4 in ranks else ''}), "
                         f"got shape {image.shape}")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    return image


def preprocess_for_eval(image: tf.Tensor, *, image_size: int) -> tf.Tensor:
    """Deterministic: the whole image resized to image_size x image_size, then normalised.

    Never crops: a radiograph's borders can hold the anatomy that identifies it. Accepts one
    image [H, W, C] or a batch [N, H, W, C] (the export signatures call it per batch).

    Returns:
      float32 [image_size, image_size, C] or [N, image_size, image_size, C].
    Raises:
      ValueError: image not of rank 3 or 4, or image_size not a positive int.
    """
    image = _check(image, image_size, (3, 4))
    return normalize(resize_square(image, image_size))


def fresh_seed() -> tf.Tensor:
    """A new shape-[2] seed for the stateless random ops at every call. A global seed gives
    the op a fixed seed, but in a parallel tf.data map its draws go to whichever call runs
    first: reproducible only under op determinism too (--deterministic), which runs such
    a map in order."""
    return tf.random.uniform((2,), maxval=2**31 - 1, dtype=tf.int32)


def _seed_pair(seed) -> tf.Tensor:
    if seed is None:
        return fresh_seed()
    if isinstance(seed, int):
        return tf.constant((seed, 0), tf.int64)
    seed = tf.convert_to_tensor(seed)
    if not seed.shape.is_compatible_with((2,)):
        raise ValueError(f"seed must be None, an int or a shape-[2] tensor, got {seed!r}")
    # e.g. Dataset.random(seed).batch(2) has static shape [None]; check its length at run time.
    return tf.ensure_shape(seed, (2,))


def _random_crop_window(shape: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Samples (offset, size) of a crop with area and aspect (relative to the image's) in
    CROP_AREA_RANGE and CROP_ASPECT_RANGE. Unlike rejection sampling it always succeeds: a side
    that would overflow is clipped, which keeps the area fraction >= sqrt(min_area / max_aspect)
    (0.75 with the default bounds)."""
    area_seed, aspect_seed, y_seed, x_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4))
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    area = tf.random.stateless_uniform((), area_seed, *CROP_AREA_RANGE)
    log_aspect = tf.random.stateless_uniform(
        (), aspect_seed, tf.math.log(CROP_ASPECT_RANGE[0]), tf.math.log(CROP_ASPECT_RANGE[1]))
    aspect = tf.exp(log_aspect)
    crop_height = tf.clip_by_value(tf.round(height * tf.sqrt(area / aspect)), 1.0, height)
    crop_width = tf.clip_by_value(tf.round(width * tf.sqrt(area * aspect)), 1.0, width)
    offset_y = tf.floor(tf.random.stateless_uniform((), y_seed) * (height - crop_height + 1))
    offset_x = tf.floor(tf.random.stateless_uniform((), x_seed) * (width - crop_width + 1))
    offset = tf.cast(tf.stack([offset_y, offset_x, 0.0]), tf.int32)
    size = tf.stack([tf.cast(crop_height, tf.int32), tf.cast(crop_width, tf.int32), -1])
    return offset, size


def preprocess_for_train(image: tf.Tensor, *, image_size: int, random_flip: bool,
                         seed=None, color_jitter: float = 0.0) -> tf.Tensor:
    """Light augmentation for radiographs: random resized crop, optional flip and jitter.

    Args:
      image: one image, uint8 [H, W, C] (or float on the 0-255 scale).
      image_size: output height and width.
      random_flip: flip left-right with probability 1/2. Not when the image's left-right
        axis carries the labels' laterality: the flip would turn a left kidney into a right
        one (in OrganAMNIST that axis is the up-down one, and a left-right flip keeps sides).
      seed: None (a fresh random seed per call), an int, or a shape-[2] int tensor for the
        stateless ops. A fixed int gives every image the *same* augmentation; in a tf.data
        pipeline pass a per-example seed (e.g. zip with tf.data.Dataset.random(seed).batch(2))
        or None.
      color_jitter: if > 0, brightness shifted by up to color_jitter * 255 and contrast scaled
        by a factor in [1 - color_jitter, 1 + color_jitter] (like a different VOI window). Off
        by default: window settings carry little label information, but strong jitter can
        wash out low-contrast films.

    Returns:
      float32 [image_size, image_size, C], normalised.
    Raises:
      ValueError: image not of rank 3, bad image_size, seed or color_jitter.
    """
    image = _check(image, image_size, (3,))
    if not 0.0 <= color_jitter < 1.0:
        raise ValueError(f"color_jitter must be in [0, 1), got {color_jitter!r}")
    channels = image.shape[-1]
    crop_seed, flip_seed, brightness_seed, contrast_seed = tf.unstack(
        tf.random.experimental.stateless_split(_seed_pair(seed), 4))

    offset, size = _random_crop_window(tf.shape(image), crop_seed)
    image = resize_square(tf.slice(image, offset, size), image_size)
    if random_flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    if color_jitter > 0:
        image = tf.image.stateless_random_brightness(image, color_jitter * 255.0,
                                                     brightness_seed)
        image = tf.image.stateless_random_contrast(image, 1.0 - color_jitter,
                                                   1.0 + color_jitter, contrast_seed)
        image = tf.clip_by_value(image, 0.0, 255.0)
    image = tf.ensure_shape(image, (image_size, image_size, channels))
    return normalize(image)
