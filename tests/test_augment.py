"""dataset/augment.py: laterality-safe geometry, gamma, blur, noise, mixup and cutmix on tiny
tensors."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from dataset import augment

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


@pytest.mark.parametrize("kwargs", [{"scale": 1.0}, {"translate": -0.1},
                                    {"rotate_degrees": 200}, {"noise": 1.5}, {"invert": 1.5},
                                    {"gamma": 1.0}, {"blur": 3.0}])
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
