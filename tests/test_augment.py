"""dataset/augment.py: laterality-safe geometry, quarter turns, frames, gamma, blur, noise, mixup
and cutmix on tiny tensors."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from dataset import augment
from official.core.config import mirror_partners

STRONG = augment.AugmentSpec(scale=0.15, translate=0.1, rotate_degrees=15, noise=0.0)


def _seed(index: int) -> tf.Tensor:
    return tf.constant([index, 7], tf.int64)


def _left_blob(size: int = 32) -> np.ndarray:
    image = np.zeros((size, size, 1), np.float32)
    image[10:22, 3:11] = 255.0  # a bright structure in the left third
    return image


def test_default_spec_changes_nothing():
    image = tf.constant(_left_blob())
    out = augment.augment_image(image, augment.AugmentSpec(), _seed(0))
    np.testing.assert_array_equal(out.numpy(), image.numpy())


def test_identity_transform_is_exact_and_a_shift_moves_content_the_stated_way():
    image = tf.constant(_left_blob())
    size = tf.constant([32.0, 32.0])

    def apply(zoom, angle, shift_y, shift_x):
        matrix = augment.affine_matrix(size, tf.constant(zoom), tf.constant(angle),
                                        tf.constant(shift_y), tf.constant(shift_x))
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=image[None], transforms=matrix[None], output_shape=[32, 32],
            fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")[0].numpy()

    np.testing.assert_allclose(apply(1.0, 0.0, 0.0, 0.0), image.numpy(), atol=1e-4)
    shifted = apply(1.0, 0.0, 2.0, 5.0)  # 2 px down, 5 px right
    np.testing.assert_allclose(shifted[12:24, 8:16], 255.0, atol=1e-3)
    assert shifted[:12].max() == 0 and shifted[:, :8].max() == 0


def test_geometry_never_mirrors_left_and_right():
    """A left-sided structure stays on the left under the strongest allowed transforms (a flip
    would turn a left kidney into a right one)."""
    image = tf.constant(_left_blob())
    columns = np.arange(32)[None, :, None]
    for index in range(40):
        out = augment.random_geometry(image, STRONG, _seed(index)).numpy()
        assert out.shape == (32, 32, 1) and out.sum() > 0
        centroid_x = float((out * columns).sum() / out.sum())
        assert centroid_x < 13.0, (index, centroid_x)  # started at 6.5 of 0..31
    # ... and the transforms do vary with the seed.
    outs = [augment.random_geometry(image, STRONG, _seed(i)).numpy() for i in range(3)]
    assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[1], outs[2])


def test_noise_has_the_stated_spread_and_stays_in_range():
    image = tf.fill((64, 64, 1), 128.0)
    out = augment.random_noise(image, augment.AugmentSpec(noise=0.05), _seed(1)).numpy()
    assert out.min() >= 0 and out.max() <= 255
    assert np.std(out - 128.0) == pytest.approx(0.05 * 255, rel=0.1)


def test_invert_flips_the_grey_scale_at_the_stated_rate():
    image = tf.constant(_left_blob())
    always = augment.random_invert(image, augment.AugmentSpec(invert=1.0), _seed(0)).numpy()
    np.testing.assert_array_equal(always, 255.0 - image.numpy())
    half = augment.AugmentSpec(invert=0.5)
    inverted = [bool(augment.random_invert(image, half, _seed(i)).numpy()[0, 0, 0] == 255.0)
                for i in range(200)]
    assert 70 < sum(inverted) < 130
    # Inversion first: a black film turns white, and the border a shift brings in is black
    # (inverting after the shift would leave the whole image white).
    blank = tf.zeros((32, 32, 1))
    shifted = augment.augment_image(blank, augment.AugmentSpec(translate=0.3, invert=1.0),
                                    _seed(3)).numpy()
    assert shifted.max() == 255.0 and shifted.min() == 0.0


def test_gamma_keeps_black_and_white_and_moves_mid_grey_within_its_range():
    image = tf.constant([[[0.0], [64.0], [255.0]]])
    spec = augment.AugmentSpec(gamma=0.5)
    mids = []
    for index in range(50):
        out = augment.random_gamma(image, spec, _seed(index)).numpy()
        assert out[0, 0, 0] == 0.0 and out[0, 2, 0] == pytest.approx(255.0)
        mids.append(out[0, 1, 0])
    # gamma in [1/1.5, 1.5]: 64 maps into [255 * (64/255)**1.5, 255 * (64/255)**(1/1.5)].
    low, high = 255 * (64 / 255) ** 1.5, 255 * (64 / 255) ** (1 / 1.5)
    assert low - 1e-3 <= min(mids) < 64.0 < max(mids) <= high + 1e-3


def test_blur_keeps_brightness_and_position_and_softens_edges():
    image = tf.constant(_left_blob())
    spec = augment.AugmentSpec(blur=1.5)
    columns = np.arange(32)[None, :, None]
    widths = []
    for index in range(20):
        out = augment.random_blur(image, spec, _seed(index)).numpy()
        assert out.shape == (32, 32, 1)
        assert out.sum() == pytest.approx(image.numpy().sum(), rel=1e-4)
        assert float((out * columns).sum() / out.sum()) == pytest.approx(6.5, abs=0.2)
        widths.append(int((out[16] > 1.0).sum()))  # pixels lit on a row through the blob
    assert min(widths) >= 8 and max(widths) > 10  # 8 wide unblurred; the sd varies by seed
    flat = tf.fill((16, 16, 1), 77.0)
    np.testing.assert_allclose(augment.random_blur(flat, spec, _seed(0)).numpy(), 77.0,
                               rtol=1e-5)


def _asymmetric(size: int = 16) -> np.ndarray:
    # Distinct values everywhere, so every turn and every mirror gives a different array.
    return np.arange(size * size, dtype=np.float32).reshape(size, size, 1)


def test_rot90_turns_by_quarter_turns_only_and_never_mirrors():
    image = _asymmetric()
    turns = {k: np.rot90(image, k, axes=(0, 1)) for k in range(4)}
    mirrors = [image[::-1], image[:, ::-1], np.transpose(image, (1, 0, 2)),
               np.rot90(image, 1, axes=(0, 1))[::-1]]
    seen = set()
    spec = augment.AugmentSpec(rot90=1.0)
    for index in range(40):
        out = augment.random_rot90(tf.constant(image), spec, _seed(index)).numpy()
        match = [k for k, turned in turns.items() if np.array_equal(out, turned)]
        assert len(match) == 1 and match[0] != 0  # probability 1: always turned
        assert not any(np.array_equal(out, mirror) for mirror in mirrors)
        seen.add(match[0])
    assert seen == {1, 2, 3}
    unturned = augment.AugmentSpec(rot90=0.3)
    kept = sum(np.array_equal(augment.random_rot90(tf.constant(image), unturned,
                                                   _seed(index)).numpy(), image)
               for index in range(200))
    assert 110 <= kept <= 170  # ~70% untouched at probability 0.3
    # A decoded image is seldom square: a quarter turn swaps its sides, whole pipeline included.
    wide = np.arange(20 * 30, dtype=np.float32).reshape(20, 30, 1)
    shapes = {augment.augment_image(tf.constant(wide), augment.AugmentSpec(rot90=1.0, frame=1.0),
                                    _seed(index)).shape for index in range(8)}
    assert shapes == {(30, 20, 1), (20, 30, 1)}


def test_frame_shrinks_the_image_inside_a_border_of_one_grey():
    image = np.full((32, 32, 1), 200.0, np.float32)
    spec = augment.AugmentSpec(frame=1.0)
    greys, sides = [], []
    for index in range(30):
        out = augment.random_frame(tf.constant(image), spec, _seed(index)).numpy()[..., 0]
        inside = np.isclose(out, 200.0, atol=0.5)
        rows, cols = np.where(inside)
        # The image is one rectangle, wholly inside, 60-95% of the side...
        height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert 0.6 * 32 - 2 <= height <= 0.95 * 32 + 1 and abs(height - width) <= 1
        sides.append(height)
        # ...and everything well outside it is one grey level.
        border = np.ones_like(inside)
        border[max(rows.min() - 1, 0):rows.max() + 2, max(cols.min() - 1, 0):cols.max() + 2] = 0
        values = out[border.astype(bool)]
        assert values.size and np.ptp(values) < 1e-3
        greys.append(float(values[0]))
    assert min(greys) < 60 and max(greys) > 195  # dark and bright borders both occur
    assert max(sides) - min(sides) >= 5
    never = augment.AugmentSpec(frame=0.0)
    np.testing.assert_array_equal(augment.random_frame(tf.constant(image), never,
                                                       _seed(0)).numpy(), image)


def test_frame_keeps_laterality():
    # The blob stays in the left part of the shrunk image: the frame shrinks and shifts, never
    # flips. (Background 100, blob 255; seeds whose border grey is close to either are skipped.)
    image = np.where(_left_blob() > 0, 255.0, 100.0).astype(np.float32)
    spec = augment.AugmentSpec(frame=1.0)
    checked = 0
    for index in range(20):
        out = augment.random_frame(tf.constant(image), spec, _seed(index)).numpy()[..., 0]
        grey = out[0, 0]
        if min(abs(grey - 100.0), abs(grey - 255.0)) < 20:
            continue
        content_cols = np.where(np.abs(out - grey) > 5)[1]
        blob_cols = np.where(out > 250)[1]
        assert blob_cols.mean() < content_cols.mean() - 3
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("kwargs", [{"scale": 1.0}, {"translate": -0.1},
                                    {"rotate_degrees": 200}, {"noise": 1.5}, {"invert": 1.5},
                                    {"gamma": 1.0}, {"blur": 3.0}, {"rot90": 1.1},
                                    {"frame": -0.1}])
def test_spec_rejects_out_of_range_values(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        augment.AugmentSpec(**kwargs)


def _constant_batch(count: int = 6, size: int = 8):
    # Image i is constant i * 10; its label is one-hot class i: a mixed pixel must equal the
    # label-weighted sum of the constants, which ties the image mixing to the label mixing.
    values = np.arange(count, dtype=np.float32) * 10.0
    images = tf.constant(np.broadcast_to(values[:, None, None, None], (count, size, size, 1)))
    labels = tf.one_hot(tf.range(count), count)
    return images, labels, values


def test_mixup_mixes_images_and_labels_with_one_weight():
    images, labels, values = _constant_batch()
    mixed, soft = augment.mixup(images, labels, alpha=0.4, seed=_seed(3))
    soft = soft.numpy()
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-6)
    expected = soft @ values
    np.testing.assert_allclose(mixed.numpy()[:, 0, 0, 0], expected, rtol=1e-5, atol=1e-4)
    assert (soft > 1e-6).sum(axis=1).max() <= 2  # each example mixes with one partner


def test_cutmix_weights_labels_by_the_pasted_area():
    images, labels, values = _constant_batch(size=16)
    for index in range(10):
        mixed, soft = augment.cutmix(images, labels, alpha=1.0, seed=_seed(index))
        mixed, soft = mixed.numpy(), soft.numpy()
        np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-6)
        for example in range(len(values)):
            own = np.isclose(mixed[example], values[example]).mean()
            if own < 1.0:  # a box was pasted from another example
                assert soft[example, example] == pytest.approx(own, abs=1e-6)


def test_mixing_rejects_a_non_positive_alpha():
    images, labels, _ = _constant_batch()
    with pytest.raises(ValueError, match="mixup alpha"):
        augment.mixup(images, labels, alpha=0.0, seed=_seed(0))
    with pytest.raises(ValueError, match="cutmix alpha"):
        augment.cutmix(images, labels, alpha=-1.0, seed=_seed(0))


def test_mirror_partners_pair_names_that_differ_only_in_side():
    names = ("kidney-left", "kidney-right", "liver", "Left Hand", "Right Hand", "lung-left",
             "leftover", "rightmost")
    # lung-left has no right partner here; "leftover" and "rightmost" are not sides.
    assert mirror_partners(names) == (1, 0, 2, 4, 3, 5, 6, 7)


def test_mirror_swap_mirrors_paired_classes_across_the_named_axis_and_relabels_them():
    image = tf.constant(_left_blob())
    image = tf.tensor_scatter_nd_update(image, [[0, 0, 0]], [99.0])  # marks the top row
    partners = tf.constant(mirror_partners(("kidney-left", "kidney-right", "liver")))
    left = tf.constant(0, tf.int32)
    out, label = augment.mirror_swap(image, left, partners, 1.0, "left_right", _seed(1))
    np.testing.assert_array_equal(out.numpy(), image.numpy()[:, ::-1])
    assert int(label) == 1
    out, label = augment.mirror_swap(image, tf.constant(1, tf.int32), partners, 1.0,
                                     "up_down", _seed(1))
    np.testing.assert_array_equal(out.numpy(), image.numpy()[::-1])
    assert int(label) == 0
    # An unpaired class and probability 0 leave image and label alone.
    for label_in, probability in ((2, 1.0), (0, 0.0)):
        out, label = augment.mirror_swap(image, tf.constant(label_in, tf.int32), partners,
                                         probability, "left_right", _seed(2))
        np.testing.assert_array_equal(out.numpy(), image.numpy())
        assert int(label) == label_in
    swapped = [int(augment.mirror_swap(image, left, partners, 0.3, "up_down", _seed(i))[1])
               for i in range(400)]
    assert 0.22 < np.mean(swapped) < 0.38  # 0.3 +- 4 standard deviations
    with pytest.raises(ValueError, match="mirror axis"):
        augment.mirror_swap(image, left, partners, 1.0, "diagonal", _seed(1))


def test_the_flags_offer_the_mirror_axes_augment_knows():
    from official.core import config
    assert config.MIRROR_AXES == augment.MIRROR_AXES
