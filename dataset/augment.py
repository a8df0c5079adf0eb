"""Laterality-safe training augmentation beyond the crop: geometry, quarter turns, frames, gamma,
blur, noise, mixup and cutmix, and the one mirror that keeps labels true (mirror_swap).

Pure TensorFlow: tensors in, tensors out. Left kidney and right kidney are different classes,
so every geometric transform is a rotation plus a scale plus a shift (determinant > 0), never a
reflection; the only mirror is mirror_swap, which relabels what it mirrors as the other side.

Per-image transforms take float images on the 0-255 scale ([H, W, C], before `normalize`) and a
shape-[2] stateless seed, as dataset.preprocess does. Batch mixing (mixup, cutmix) takes a
normalised batch and one-hot (or already soft) labels and returns soft labels, so the loss must
accept probabilities.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

# Largest blur standard deviation, in pixels: the kernel's radius is fixed at 3 * blur, and
# beyond ~3 px a 28-px organ crop is a smudge.
BLUR_MAX = 3.0
# A framed image keeps this share of its side: below ~0.6 a 64-px radiograph is a thumbnail.
FRAME_SIDE = (0.6, 0.95)


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
    """How strongly to augment. All zero (the default) leaves images untouched.

    scale: zoom factor drawn from [1 - scale, 1 + scale].
    translate: shift of up to this fraction of the side, in each direction.
    rotate_degrees: rotation drawn from [-rotate_degrees, rotate_degrees].
    noise: standard deviation of additive Gaussian noise, as a fraction of 255.
    invert: probability of inverting the grey scale (255 - x): radiographs come as
      MONOCHROME1 or MONOCHROME2 and archives hold both renderings of the same anatomy.
    gamma: gamma drawn log-uniformly from [1 / (1 + gamma), 1 + gamma] (a different
      window/level curve or contrast phase brightens or darkens mid-grey tissue).
    blur: Gaussian blur with a standard deviation drawn from [0, blur] pixels (thicker
      slices, softer reconstruction kernels, lower-resolution detectors).
    rot90: probability of turning the image by a random quarter turn (90, 180 or 270 degrees):
      radiographs are stored sideways or upside down, and a turn is a rotation, never a mirror.
    frame: probability of shrinking the image (to FRAME_SIDE of its side) and setting it at
      a random place on a border of one random grey level: film scanned on a light box,
      collimator edges, a photographed monitor. Without it a model may learn "dark border =
      hand" or "fills the frame = chest" from the archive's habits.
    """
    scale: float = 0.0
    translate: float = 0.0
    rotate_degrees: float = 0.0
    noise: float = 0.0
    invert: float = 0.0
    gamma: float = 0.0
    blur: float = 0.0
    rot90: float = 0.0
    frame: float = 0.0

    def __post_init__(self):
        for name, value, high in (("scale", self.scale, 1.0), ("translate", self.translate, 0.5),
                                  ("rotate_degrees", self.rotate_degrees, 180.0),
                                  ("noise", self.noise, 1.0), ("gamma", self.gamma, 1.0),
                                  ("blur", self.blur, BLUR_MAX)):
            if not 0.0 <= value < high:
                raise ValueError(f"augmentation {name} must be in [0, {high:g}), got {value!r}")
        for name, value in (("invert", self.invert), ("rot90", self.rot90),
                            ("frame", self.frame)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augmentation {name} must be a probability in [0, 1], got "
                                 f"{value!r}")

    @property
    def active(self) -> bool:
        return bool(self.geometric or self.noise or self.invert or self.gamma or self.blur
                    or self.rot90 or self.frame)

    @property
    def geometric(self) -> bool:
        return bool(self.scale or self.translate or self.rotate_degrees)


def affine_matrix(size: tf.Tensor, zoom: tf.Tensor, angle: tf.Tensor, shift_y: tf.Tensor,
                   shift_x: tf.Tensor) -> tf.Tensor:
    """ImageProjectiveTransformV3's 8 numbers mapping each *output* pixel to its input pixel.

    The output is the input zoomed by `zoom` and rotated by `angle` about the image centre, then
    shifted by (shift_y, shift_x) pixels; the inverse of that map is what the op wants.
    """
    height, width = size[0], size[1]
    centre_y, centre_x = (height - 1.0) / 2.0, (width - 1.0) / 2.0
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    # input = R(-angle) / zoom @ (output - centre - shift) + centre
    out_y, out_x = centre_y + shift_y, centre_x + shift_x
    a0, a1 = cos, sin
    b0, b1 = -sin, cos
    a2 = centre_x - a0 * out_x - a1 * out_y
    b2 = centre_y - b0 * out_x - b1 * out_y
    zero = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zero, zero])


def warp(images: tf.Tensor, transform: tf.Tensor, fill_value=0.0) -> tf.Tensor:
    """Float images [N, H, W, C] through one affine_matrix transform (every image alike),
    bilinear, with the pixels from outside set to `fill_value`; the shape is kept."""
    output = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transform[None], output_shape=tf.shape(images)[1:3],
        fill_value=fill_value, interpolation="BILINEAR", fill_mode="CONSTANT")
    return tf.ensure_shape(output, images.shape)


def random_geometry(image: tf.Tensor, spec: AugmentSpec, seed: tf.Tensor) -> tf.Tensor:
    """Random zoom, rotation and shift of one image [H, W, C]; the size is kept.

    Pixels shifted in from outside are 0 (black, the background of most radiographs and CT
    slices after windowing); reflecting the border in would draw mirrored anatomy.
    """
    if not spec.geometric:
        return image
    zoom_seed, angle_seed, shift_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3))
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    zoom = tf.random.stateless_uniform((), zoom_seed, 1.0 - spec.scale, 1.0 + spec.scale)
    max_angle = spec.rotate_degrees * math.pi / 180.0
    angle = tf.random.stateless_uniform((), angle_seed, -max_angle, max_angle)
    shift = tf.random.stateless_uniform((2,), shift_seed, -spec.translate, spec.translate) * size
    transform = affine_matrix(size, zoom, angle, shift[0], shift[1])
    return warp(tf.cast(image, tf.float32)[None], transform)[0]


def random_rot90(image: tf.Tensor, spec: AugmentSpec, seed: tf.Tensor) -> tf.Tensor:
    """With probability spec.rot90, one of the three quarter turns, equally likely.

    A quarter turn swaps height and width (the training crop and resize come after it).
    """
    if not spec.rot90:
        return image
    turn_seed, which_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    turns = tf.random.stateless_uniform((), which_seed, 1, 4, dtype=tf.int32)
    turns = tf.where(tf.random.stateless_uniform((), turn_seed) < spec.rot90, turns, 0)
    return tf.ensure_shape(tf.image.rot90(image, turns), [None, None, image.shape[-1]])


def random_frame(image: tf.Tensor, spec: AugmentSpec, seed: tf.Tensor) -> tf.Tensor:
    """With probability spec.frame, the image shrunk to a random FRAME_SIDE share of its side,
    placed at a random spot (wholly inside), on a border of one grey level uniform in 0-255."""
    if not spec.frame:
        return image
    apply_seed, side_seed, place_seed, grey_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4))
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    zoom = tf.random.stateless_uniform((), side_seed, *FRAME_SIDE)
    # The shrunk image's centre may move by up to the border's width either way.
    shift = tf.random.stateless_uniform((2,), place_seed, -1.0, 1.0) * (1.0 - zoom) * size / 2.0
    grey = tf.random.stateless_uniform((), grey_seed, 0.0, 255.0)
    transform = affine_matrix(size, zoom, tf.constant(0.0), shift[0], shift[1])
    image = tf.cast(image, tf.float32)
    # A cond, not a where: most images are not framed, and their warp is never computed.
    return tf.cond(tf.random.stateless_uniform((), apply_seed) < spec.frame,
                   lambda: warp(image[None], transform, grey)[0], lambda: image)


def random_noise(image: tf.Tensor, spec: AugmentSpec, seed: tf.Tensor) -> tf.Tensor:
    """Additive Gaussian noise (sd = spec.noise * 255), clipped back to 0-255."""
    if not spec.noise:
        return image
    image = tf.cast(image, tf.float32)
    noise = tf.random.stateless_normal(tf.shape(image), seed, stddev=spec.noise * 255.0)
    return tf.clip_by_value(image + noise, 0.0, 255.0)


def random_gamma(image: tf.Tensor, spec: AugmentSpec, seed: tf.Tensor) -> tf.Tensor:
    """255 * (x / 255) ** g, g log-uniform in [1 / (1 + spec.gamma), 1 + spec.gamma]."""
    if not spec.gamma:
        return image
    image = tf.cast(image, tf.float32)
    log_range = math.log1p(spec.gamma)
    gamma = tf.exp(tf.random.stateless_uniform((), seed, -log_range, log_range))
    return 255.0 * tf.pow(tf.clip_by_value(image, 0.0, 255.0) / 255.0, gamma)


def gaussian_blur(images: tf.Tensor, sigma, radius: int) -> tf.Tensor:
    """Separable Gaussian blur of float images [N, H, W, C] with standard deviation `sigma`
    pixels (a float or a scalar tensor > 0) and taps out to `radius` pixels.

    The border is repeated (symmetric padding): a blur is local, so this never moves anatomy
    across the midline the way a mirrored image would.
    """
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    taps = tf.exp(-0.5 * tf.square(offsets / sigma))
    taps /= tf.reduce_sum(taps)
    channels = images.shape[-1]
    x = tf.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="SYMMETRIC")
    for shape in ((-1, 1, 1, 1), (1, -1, 1, 1)):
        kernel = tf.tile(tf.reshape(taps, shape), (1, 1, channels, 1))
        x = tf.nn.depthwise_conv2d(x, kernel, (1, 1, 1, 1), "VALID")
    return x


def random_blur(image: tf.Tensor, spec: AugmentSpec, seed: tf.Tensor) -> tf.Tensor:
    """Gaussian blur of one image [H, W, C], sd uniform in [0, spec.blur] pixels."""
    if not spec.blur:
        return image
    image = tf.cast(image, tf.float32)
    # sd 0 would divide by zero; 0.05 px is already a delta (its side taps are ~e^-200).
    sigma = tf.random.stateless_uniform((), seed, 0.05, spec.blur)
    blurred = gaussian_blur(image[None], sigma, radius=max(1, math.ceil(3.0 * spec.blur)))
    return tf.ensure_shape(blurred[0], image.shape)


def random_invert(image: tf.Tensor, spec: AugmentSpec, seed: tf.Tensor) -> tf.Tensor:
    """255 - image with probability spec.invert."""
    if not spec.invert:
        return image
    image = tf.cast(image, tf.float32)
    flip = tf.random.stateless_uniform((), seed) < spec.invert
    return tf.where(flip, 255.0 - image, image)


def augment_image(image: tf.Tensor, spec: AugmentSpec, seed: tf.Tensor) -> tf.Tensor:
    """random_invert, random_rot90, random_geometry, random_frame, random_gamma, random_blur,
    then random_noise, each with its own part of `seed`.

    Inversion comes first so that the border shifted in by the geometry is black either way;
    the frame comes after the geometry (it is part of the acquisition, not of the anatomy's
    pose); noise comes last, as a detector adds it after the optics have blurred the image.
    """
    (invert_seed, geometry_seed, noise_seed, gamma_seed, blur_seed, rot90_seed,
     frame_seed) = tf.unstack(tf.random.experimental.stateless_split(seed, 7))
    image = random_invert(image, spec, invert_seed)
    image = random_rot90(image, spec, rot90_seed)
    image = random_geometry(image, spec, geometry_seed)
    image = random_frame(image, spec, frame_seed)
    image = random_blur(random_gamma(image, spec, gamma_seed), spec, blur_seed)
    return random_noise(image, spec, noise_seed)


# The image axis that runs along the patient's left-right axis (official/core/config.py, which
# imports no TensorFlow, holds the same tuple for the flags; tests/test_augment.py checks).
MIRROR_AXES = ("left_right", "up_down")


def mirror_swap(image: tf.Tensor, label: tf.Tensor, partners: tf.Tensor, probability: float,
                axis: str, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """With `probability`, an image of a class with a mirror partner (official/core/config.py
    mirror_partners, plain Python: dicom_main.py checks the pairs before TensorFlow) is
    mirrored across the patient's left-right axis and relabelled as the partner: a left kidney
    seen in a mirror is a right kidney's shape, so each side also learns from the other's
    examples. (On unseen OrganAMNIST scans it did not reduce left/right swaps: RESULTS.md
    section 23.)

    Args:
      image: [H, W, C] (any dtype).
      label: scalar int class index.
      partners: int tensor [num_classes], mirror_partners of the class names.
      axis: "left_right" when the image's columns run along the patient's left-right axis
        (the radiological convention), "up_down" when its rows do (OrganAMNIST).
    """
    if axis not in MIRROR_AXES:
        raise ValueError(f"mirror axis must be one of {MIRROR_AXES}, got {axis!r}")
    partner = tf.gather(tf.cast(partners, label.dtype), label)
    mirror = tf.logical_and(tf.not_equal(partner, label),
                            tf.random.stateless_uniform((), seed) < probability)
    mirrored = tf.reverse(image, [1 if axis == "left_right" else 0])
    return tf.where(mirror, mirrored, image), tf.where(mirror, partner, label)


def _partner(batch_size: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    # Each example is mixed with another of the same batch: a random permutation, stateless.
    keys = tf.random.stateless_uniform((batch_size,), seed)
    return tf.argsort(keys)


def mixup(images: tf.Tensor, labels: tf.Tensor, alpha: float, seed: tf.Tensor
          ) -> tuple[tf.Tensor, tf.Tensor]:
    """mixup (Zhang et al. 2018): x = lam * x_i + (1 - lam) * x_j, labels likewise.

    One lam ~ Beta(alpha, alpha) per batch, as in the paper's reference code.

    Args:
      images: [N, H, W, C] float.
      labels: [N, K] probabilities (one-hot or smoothed).
      alpha: Beta parameter, > 0.
    Returns:
      (mixed images, mixed labels), the labels still summing to 1.
    """
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha!r}")
    lam_seed, perm_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    lam = _beta(alpha, lam_seed)
    order = _partner(tf.shape(images)[0], perm_seed)
    images = tf.cast(images, tf.float32)
    mixed_images = lam * images + (1.0 - lam) * tf.gather(images, order)
    mixed_labels = lam * labels + (1.0 - lam) * tf.gather(labels, order)
    return mixed_images, mixed_labels


def cutmix(images: tf.Tensor, labels: tf.Tensor, alpha: float, seed: tf.Tensor
           ) -> tuple[tf.Tensor, tf.Tensor]:
    """CutMix (Yun et al. 2019): a box of another image pasted in; labels weighted by area.

    The box's area fraction is 1 - lam, lam ~ Beta(alpha, alpha), its centre uniform; where it
    is clipped by the border the labels follow the area actually pasted.
    """
    if alpha <= 0:
        raise ValueError(f"cutmix alpha must be > 0, got {alpha!r}")
    lam_seed, perm_seed, y_seed, x_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4))
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    lam = _beta(alpha, lam_seed)
    cut = tf.sqrt(1.0 - lam)
    box_h = tf.cast(tf.round(cut * tf.cast(height, tf.float32)), tf.int32)
    box_w = tf.cast(tf.round(cut * tf.cast(width, tf.float32)), tf.int32)
    centre_y = tf.random.stateless_uniform((), y_seed, 0, height, tf.int32)
    centre_x = tf.random.stateless_uniform((), x_seed, 0, width, tf.int32)
    top, bottom = tf.maximum(centre_y - box_h // 2, 0), tf.minimum(centre_y + box_h // 2, height)
    left, right = tf.maximum(centre_x - box_w // 2, 0), tf.minimum(centre_x + box_w // 2, width)
    rows = tf.range(height)[:, None]
    cols = tf.range(width)[None, :]
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    mask = tf.cast(inside, tf.float32)[None, :, :, None]
    order = _partner(shape[0], perm_seed)
    images = tf.cast(images, tf.float32)
    mixed_images = images * (1.0 - mask) + tf.gather(images, order) * mask
    pasted = tf.reduce_mean(mask)
    mixed_labels = (1.0 - pasted) * labels + pasted * tf.gather(labels, order)
    return mixed_images, mixed_labels


def _beta(alpha: float, seed: tf.Tensor) -> tf.Tensor:
    # Beta(a, a) as X / (X + Y) with X, Y ~ Gamma(a): TF has a stateless gamma, no stateless beta.
    x_seed, y_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    x = tf.random.stateless_gamma((), x_seed, alpha)
    y = tf.random.stateless_gamma((), y_seed, alpha)
    return x / (x + y)
