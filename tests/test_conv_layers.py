"""Tests for networks/resnet/conv_layers.py: the matmul convolutions equal Conv2D's, forward
and both gradients, in float32 and mixed bfloat16. Which layer a ResNet uses where:
test_resnet_model.py."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from networks.resnet import conv_layers


def _images(batch: int, shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (batch, *shape)).astype(np.float32)


PATCH, KERNEL_GRAD = conv_layers.PatchMatmulConv2D, conv_layers.MatmulKernelGradConv2D


@pytest.mark.parametrize("layer_class,size,kernel,strides,padding", [
    (PATCH, 2, 3, 1, "same"),        # stage 4 at 56 px: 2x2, SAME
    (PATCH, 1, 3, 1, "same"),        # stage 4 at 32 px: one pixel, all but the centre is padding
    (PATCH, 5, 3, 2, "valid"),       # a strided 3x3 after the fixed padding (4 -> 5 -> 2x2)
    (PATCH, 4, 1, 2, "valid"),       # a strided 1x1 projection shortcut
    (PATCH, 6, 3, 1, "same"),        # larger than it is used for: the layer is still exact
    (PATCH, 4, 3, 2, "same"),        # a strided SAME: Conv2D's own op (padding depends on size)
    (KERNEL_GRAD, 4, 3, 1, "same"),   # stage 3 at 56 px: 4x4, SAME
    (KERNEL_GRAD, 9, 3, 2, "valid"),  # its strided first conv after the fixed padding (7 -> 4)
    (KERNEL_GRAD, 7, 1, 2, "valid"),  # its strided 1x1 projection shortcut (7 -> 4)
    (KERNEL_GRAD, 3, 3, 1, "same"),   # odd size
    (KERNEL_GRAD, 4, 3, 2, "same"),   # a strided SAME: Conv2D's own op
])
def test_matmul_convs_match_conv2d_forward_and_gradients(layer_class, size, kernel, strides,
                                                         padding):
    images = tf.constant(_images(3, (size, size, 5)))
    args = dict(filters=4, kernel_size=kernel, strides=strides, padding=padding, use_bias=False)
    plain = keras.layers.Conv2D(**args)
    fast = layer_class(**args)
    plain.build(images.shape)
    fast.build(images.shape)
    fast.set_weights(plain.get_weights())
    weights = tf.constant(np.random.default_rng(1).normal(
        size=plain.compute_output_shape(images.shape)[1:]).astype(np.float32))
    results = []
    for layer in (plain, fast):
        with tf.GradientTape() as tape:
            tape.watch(images)
            outputs = layer(images)
            loss = tf.reduce_sum(outputs * weights)
        results.append([outputs, *tape.gradient(loss, [images, layer.kernel])])
    for expected, actual in zip(*results):
        np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_matmul_kernel_grad_conv_trains_in_mixed_bfloat16():
    # The kernel gradient reaches the float32 variable through the bf16 autocast.
    layer = conv_layers.MatmulKernelGradConv2D(8, 3, padding="same", use_bias=False,
                                                dtype=keras.DTypePolicy("mixed_bfloat16"))
    images = tf.constant(_images(2, (4, 4, 16)))
    layer.build(images.shape)
    with tf.GradientTape() as tape:
        outputs = layer(images)
        loss = tf.reduce_sum(tf.cast(outputs, tf.float32) ** 2)
    gradient = tape.gradient(loss, layer.kernel)
    assert outputs.dtype == tf.bfloat16 and layer.kernel.dtype == "float32"
    assert gradient is not None and gradient.dtype == tf.float32
    reference = tf.raw_ops.Conv2DBackpropFilter(
        input=tf.cast(tf.cast(images, tf.bfloat16), tf.float32), filter_sizes=[3, 3, 16, 8],
        out_backprop=2.0 * tf.cast(outputs, tf.float32), strides=[1, 1, 1, 1], padding="SAME")
    np.testing.assert_allclose(gradient.numpy(), reference.numpy(), rtol=0.05,
                               atol=0.02 * float(tf.reduce_max(tf.abs(reference))))
