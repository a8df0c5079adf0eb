"""Tests for dataset/preprocess.py: shapes, determinism, normalisation range, flip control."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from dataset import preprocess
from dataset.preprocess import normalize, preprocess_for_eval, preprocess_for_train


def _random_image(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), np.uint8)


def _left_bright_image(size: int = 48, channels: int = 1) -> np.ndarray:
    """Bright left half, dark right half: a left-right flip moves the brightness to the right."""
    image = np.zeros((size, size, channels), np.uint8)
    image[:, : size // 2] = 255
    return image


def test_normalize_maps_0_255_to_minus_one_one():
    pixels = np.array([0, 127, 255], np.uint8)
    out = normalize(pixels)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), [-1.0, 127 / 127.5 - 1, 1.0], atol=1e-6)
    # uint8 and float inputs on the same scale normalise identically.
    np.testing.assert_array_equal(normalize(pixels.astype(np.float32)).numpy(), out.numpy())


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("height,width", [(32, 32), (50, 70), (300, 120), (20, 20)])
def test_eval_shape_dtype_range_and_channels(height, width, channels):
    out = preprocess_for_eval(_random_image(height, width, channels), image_size=28)
    assert out.shape == (28, 28, channels)
    assert out.dtype == tf.float32
    assert -1.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 1.0


def test_eval_is_deterministic_and_keeps_the_whole_image():
    image = _random_image(64, 96, 1)
    first = preprocess_for_eval(image, image_size=32).numpy()
    np.testing.assert_array_equal(first, preprocess_for_eval(image, image_size=32).numpy())
    # No crop: a bright 1-px frame at the image border is still visible after resizing.
    framed = np.zeros((64, 96, 1), np.uint8)
    framed[0, :] = framed[-1, :] = framed[:, 0] = framed[:, -1] = 255
    out = preprocess_for_eval(framed, image_size=32).numpy()[..., 0]
    for edge in (out[0, :], out[-1, :], out[:, 0], out[:, -1]):
        assert edge.min() > -1.0


def test_eval_same_size_is_identity_up_to_normalisation():
    image = _random_image(32, 32, 1)
    np.testing.assert_allclose(preprocess_for_eval(image, image_size=32).numpy(),
                               image / 127.5 - 1.0, atol=1e-4)


def test_eval_supports_batches_equal_to_per_image():
    batch = np.stack([_random_image(40, 40, 3, seed) for seed in range(3)])
    out = preprocess_for_eval(batch, image_size=24)
    assert out.shape == (3, 24, 24, 3)
    for index in range(3):
        np.testing.assert_allclose(out[index].numpy(),
                                   preprocess_for_eval(batch[index], image_size=24).numpy(),
                                   atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_train_shape_dtype_range_and_channels(channels):
    out = preprocess_for_train(_random_image(50, 70, channels), image_size=32, random_flip=True,
                               seed=3, color_jitter=0.2)
    assert out.shape == (32, 32, channels)
    assert out.dtype == tf.float32
    assert -1.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 1.0


def test_train_output_shape_is_static_inside_tf_data():
    dataset = tf.data.Dataset.from_tensors(_random_image(50, 70, 1)).map(
        lambda image: preprocess_for_train(image, image_size=32, random_flip=False))
    assert dataset.element_spec.shape.as_list() == [32, 32, 1]
    assert dataset.element_spec.dtype == tf.float32


def test_train_is_reproducible_for_a_seed_and_differs_across_seeds():
    image = _random_image(64, 64, 1)
    outputs = [preprocess_for_train(image, image_size=32, random_flip=True, seed=seed).numpy()
               for seed in range(6)]
    np.testing.assert_array_equal(
        outputs[0], preprocess_for_train(image, image_size=32, random_flip=True, seed=0).numpy())
    distinct = {output.tobytes() for output in outputs}
    assert len(distinct) == len(outputs)


def test_train_accepts_tensor_seed_and_none():
    image = _random_image(40, 40, 1)
    a = preprocess_for_train(image, image_size=16, random_flip=False, seed=tf.constant([1, 2]))
    b = preprocess_for_train(image, image_size=16, random_flip=False, seed=tf.constant([1, 2]))
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert preprocess_for_train(image, image_size=16, random_flip=False).shape == (16, 16, 1)


@pytest.mark.parametrize("channels", [1, 3])
def test_flip_off_never_flips(channels):
    image = _left_bright_image(channels=channels)
    for seed in range(20):
        out = preprocess_for_train(image, image_size=32, random_flip=False, seed=seed).numpy()
        assert out[:, :8].mean() > out[:, -8:].mean(), f"flipped with seed {seed}"


def test_flip_on_flips_some_seeds():
    image = _left_bright_image()
    flipped = [preprocess_for_train(image, image_size=32, random_flip=True, seed=seed).numpy()
               for seed in range(20)]
    left_brighter = [out[:, :8].mean() > out[:, -8:].mean() for out in flipped]
    assert 0 < sum(left_brighter) < len(left_brighter)


def test_crop_keeps_at_least_the_minimum_area_and_aspect_bounds():
    shape = tf.constant([90, 150, 1])
    for seed in range(50):
        offset, size = preprocess._random_crop_window(shape, tf.constant([seed, 7], tf.int64))
        height, width = int(size[0]), int(size[1])
        assert int(offset[0]) + height <= 90 and int(offset[1]) + width <= 150
        area = height * width / (90 * 150)
        relative_aspect = (width / height) / (150 / 90)
        assert area >= 0.74, (seed, height, width)
        assert 0.74 <= relative_aspect <= 1.35, (seed, height, width)


@pytest.mark.parametrize("call,message", [
    (lambda: preprocess_for_eval(np.zeros((4, 4), np.uint8), image_size=8), "rank 3 or 4"),
    (lambda: preprocess_for_train(np.zeros((2, 4, 4, 1), np.uint8), image_size=8,
                                  random_flip=False), "rank 3"),
    (lambda: preprocess_for_eval(np.zeros((4, 4, 1), np.uint8), image_size=0), "image_size"),
    (lambda: preprocess_for_train(np.zeros((4, 4, 1), np.uint8), image_size=8,
                                  random_flip=False, color_jitter=1.5), "color_jitter"),
    (lambda: preprocess_for_train(np.zeros((4, 4, 1), np.uint8), image_size=8,
                                  random_flip=False, seed=tf.constant([1, 2, 3])), "seed"),
])
def test_bad_arguments_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_per_example_seeds_from_tf_data_are_distinct_and_reproducible():
    image = _random_image(50, 70, 1)

    def augmented(dataset_seed: int) -> list[bytes]:
        seeds = tf.data.Dataset.random(seed=dataset_seed).batch(2)  # static shape [None]
        dataset = tf.data.Dataset.zip(tf.data.Dataset.from_tensors(image).repeat(4), seeds).map(
            lambda im, seed: preprocess_for_train(im, image_size=32, random_flip=True,
                                                  seed=seed))
        return [element.numpy().tobytes() for element in dataset]

    first = augmented(5)
    assert len(set(first)) == 4
    assert first == augmented(5)
