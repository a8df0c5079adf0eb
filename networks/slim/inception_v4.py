"""Inception-v4 (Szegedy et al. 2016, "Inception-v4, Inception-ResNet and the Impact of Residual
Connections on Learning", figures 3-9) as TF-Slim's nets/inception_v4.py builds it, in Keras 3
layers (pure Keras, no weights are ever downloaded).

    stem (Conv2d_1a .. Mixed_5a)  299 -> 35 x 35 x 384
    4 x Inception-A   Mixed_5b .. Mixed_5e   35 x 35 x 384
    Reduction-A       Mixed_6a               17 x 17 x 1024
    7 x Inception-B   Mixed_6b .. Mixed_6h   17 x 17 x 1024
    Reduction-B       Mixed_7a                8 x  8 x 1536
    3 x Inception-C   Mixed_7b .. Mixed_7d    8 x  8 x 1536

Every convolution is Slim's inception_v4_arg_scope: no bias, batch norm (decay 0.9997, epsilon
0.001, beta but no gamma: Slim's scale=False), ReLU. Layer names are Slim's variable scopes with
"_" for "/" (Keras names cannot contain "/"), e.g. "Mixed_6b_Branch_1_Conv2d_0b_1x7" and its
"..._BatchNorm"; the model is named "InceptionV4", so Slim's scope "InceptionV4/Mixed_7d" is a
valid --trainable_scopes / --checkpoint_exclude_scopes prefix as it was in Slim.
Not built: the auxiliary head (AuxLogits), like every network of networks/slim; the final
pool, dropout and logits are nets.build_network's head.
"""

from __future__ import annotations

from typing import Callable

import keras
from keras import layers

# Slim's batch_norm_decay for Inception-v4. A slow average: after N steps the moving statistics
# still hold 0.9997**N of their initial (0, 1), e.g. 60% after 1,680 steps, so evaluation lags
# training in short runs (as it did in Slim).
BATCH_NORM_MOMENTUM = 0.9997
BATCH_NORM_EPSILON = 0.001
MIN_IMAGE_SIZE = 75  # the smallest input whose Mixed_7d output is still 1 x 1
NUM_FEATURES = 1536


def conv_bn(x, filters: int, kernel_size: tuple[int, int], scope: str, *, strides: int = 1,
            padding: str = "same"):
    """Slim's conv2d under inception_v4_arg_scope: convolution, batch norm, ReLU."""
    # he_normal is Slim's variance_scaling_initializer() (factor 2, fan in, truncated normal);
    # Keras corrects the truncation's variance exactly where Slim used a factor of 1.3.
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding=padding, use_bias=False,
                      kernel_initializer="he_normal", name=scope)(x)
    x = layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON,
                                  scale=False, name=f"{scope}_BatchNorm")(x)
    return layers.Activation("relu", name=f"{scope}_Relu")(x)


def _max_pool(x, scope: str):
    return layers.MaxPooling2D(3, strides=2, padding="valid", name=scope)(x)


def _avg_pool(x, scope: str):
    # SAME average pooling ignores the padding in the count (tf.nn.avg_pool, as in Slim).
    return layers.AveragePooling2D(3, strides=1, padding="same", name=scope)(x)


def _concat(branches, scope: str):
    return layers.Concatenate(axis=-1, name=scope)(branches)


def stem(x):
    """Conv2d_1a_3x3 .. Mixed_5a: 299 x 299 x 3 -> 35 x 35 x 384 (paper figure 3)."""
    x = conv_bn(x, 32, (3, 3), "Conv2d_1a_3x3", strides=2, padding="valid")
    x = conv_bn(x, 32, (3, 3), "Conv2d_2a_3x3", padding="valid")
    x = conv_bn(x, 64, (3, 3), "Conv2d_2b_3x3")
    x = _concat([_max_pool(x, "Mixed_3a_Branch_0_MaxPool_0a_3x3"),
                 conv_bn(x, 96, (3, 3), "Mixed_3a_Branch_1_Conv2d_0a_3x3", strides=2,
                         padding="valid")], "Mixed_3a")
    b0 = conv_bn(x, 64, (1, 1), "Mixed_4a_Branch_0_Conv2d_0a_1x1")
    b0 = conv_bn(b0, 96, (3, 3), "Mixed_4a_Branch_0_Conv2d_1a_3x3", padding="valid")
    b1 = conv_bn(x, 64, (1, 1), "Mixed_4a_Branch_1_Conv2d_0a_1x1")
    b1 = conv_bn(b1, 64, (1, 7), "Mixed_4a_Branch_1_Conv2d_0b_1x7")
    b1 = conv_bn(b1, 64, (7, 1), "Mixed_4a_Branch_1_Conv2d_0c_7x1")
    b1 = conv_bn(b1, 96, (3, 3), "Mixed_4a_Branch_1_Conv2d_1a_3x3", padding="valid")
    x = _concat([b0, b1], "Mixed_4a")
    return _concat([conv_bn(x, 192, (3, 3), "Mixed_5a_Branch_0_Conv2d_1a_3x3", strides=2,
                            padding="valid"),
                    _max_pool(x, "Mixed_5a_Branch_1_MaxPool_1a_3x3")], "Mixed_5a")


def inception_a(x, scope: str):
    """35 x 35 x 384 -> same (figure 4)."""
    b0 = conv_bn(x, 96, (1, 1), f"{scope}_Branch_0_Conv2d_0a_1x1")
    b1 = conv_bn(x, 64, (1, 1), f"{scope}_Branch_1_Conv2d_0a_1x1")
    b1 = conv_bn(b1, 96, (3, 3), f"{scope}_Branch_1_Conv2d_0b_3x3")
    b2 = conv_bn(x, 64, (1, 1), f"{scope}_Branch_2_Conv2d_0a_1x1")
    b2 = conv_bn(b2, 96, (3, 3), f"{scope}_Branch_2_Conv2d_0b_3x3")
    b2 = conv_bn(b2, 96, (3, 3), f"{scope}_Branch_2_Conv2d_0c_3x3")
    b3 = _avg_pool(x, f"{scope}_Branch_3_AvgPool_0a_3x3")
    b3 = conv_bn(b3, 96, (1, 1), f"{scope}_Branch_3_Conv2d_0b_1x1")
    return _concat([b0, b1, b2, b3], scope)


def reduction_a(x, scope: str):
    """35 x 35 x 384 -> 17 x 17 x 1024 (figure 7 with k, l, m, n = 192, 224, 256, 384)."""
    b0 = conv_bn(x, 384, (3, 3), f"{scope}_Branch_0_Conv2d_1a_3x3", strides=2, padding="valid")
    b1 = conv_bn(x, 192, (1, 1), f"{scope}_Branch_1_Conv2d_0a_1x1")
    b1 = conv_bn(b1, 224, (3, 3), f"{scope}_Branch_1_Conv2d_0b_3x3")
    b1 = conv_bn(b1, 256, (3, 3), f"{scope}_Branch_1_Conv2d_1a_3x3", strides=2, padding="valid")
    b2 = _max_pool(x, f"{scope}_Branch_2_MaxPool_1a_3x3")
    return _concat([b0, b1, b2], scope)


def inception_b(x, scope: str):
    """17 x 17 x 1024 -> same (figure 5)."""
    b0 = conv_bn(x, 384, (1, 1), f"{scope}_Branch_0_Conv2d_0a_1x1")
    b1 = conv_bn(x, 192, (1, 1), f"{scope}_Branch_1_Conv2d_0a_1x1")
    b1 = conv_bn(b1, 224, (1, 7), f"{scope}_Branch_1_Conv2d_0b_1x7")
    b1 = conv_bn(b1, 256, (7, 1), f"{scope}_Branch_1_Conv2d_0c_7x1")
    b2 = conv_bn(x, 192, (1, 1), f"{scope}_Branch_2_Conv2d_0a_1x1")
    b2 = conv_bn(b2, 192, (7, 1), f"{scope}_Branch_2_Conv2d_0b_7x1")
    b2 = conv_bn(b2, 224, (1, 7), f"{scope}_Branch_2_Conv2d_0c_1x7")
    b2 = conv_bn(b2, 224, (7, 1), f"{scope}_Branch_2_Conv2d_0d_7x1")
    b2 = conv_bn(b2, 256, (1, 7), f"{scope}_Branch_2_Conv2d_0e_1x7")
    b3 = _avg_pool(x, f"{scope}_Branch_3_AvgPool_0a_3x3")
    b3 = conv_bn(b3, 128, (1, 1), f"{scope}_Branch_3_Conv2d_0b_1x1")
    return _concat([b0, b1, b2, b3], scope)


def reduction_b(x, scope: str):
    """17 x 17 x 1024 -> 8 x 8 x 1536 (figure 8)."""
    b0 = conv_bn(x, 192, (1, 1), f"{scope}_Branch_0_Conv2d_0a_1x1")
    b0 = conv_bn(b0, 192, (3, 3), f"{scope}_Branch_0_Conv2d_1a_3x3", strides=2, padding="valid")
    b1 = conv_bn(x, 256, (1, 1), f"{scope}_Branch_1_Conv2d_0a_1x1")
    b1 = conv_bn(b1, 256, (1, 7), f"{scope}_Branch_1_Conv2d_0b_1x7")
    b1 = conv_bn(b1, 320, (7, 1), f"{scope}_Branch_1_Conv2d_0c_7x1")
    b1 = conv_bn(b1, 320, (3, 3), f"{scope}_Branch_1_Conv2d_1a_3x3", strides=2, padding="valid")
    b2 = _max_pool(x, f"{scope}_Branch_2_MaxPool_1a_3x3")
    return _concat([b0, b1, b2], scope)


def inception_c(x, scope: str):
    """8 x 8 x 1536 -> same (figure 6)."""
    b0 = conv_bn(x, 256, (1, 1), f"{scope}_Branch_0_Conv2d_0a_1x1")
    b1 = conv_bn(x, 384, (1, 1), f"{scope}_Branch_1_Conv2d_0a_1x1")
    b1 = _concat([conv_bn(b1, 256, (1, 3), f"{scope}_Branch_1_Conv2d_0b_1x3"),
                  conv_bn(b1, 256, (3, 1), f"{scope}_Branch_1_Conv2d_0c_3x1")],
                 f"{scope}_Branch_1_concat")
    b2 = conv_bn(x, 384, (1, 1), f"{scope}_Branch_2_Conv2d_0a_1x1")
    b2 = conv_bn(b2, 448, (3, 1), f"{scope}_Branch_2_Conv2d_0b_3x1")
    b2 = conv_bn(b2, 512, (1, 3), f"{scope}_Branch_2_Conv2d_0c_1x3")
    b2 = _concat([conv_bn(b2, 256, (1, 3), f"{scope}_Branch_2_Conv2d_0d_1x3"),
                  conv_bn(b2, 256, (3, 1), f"{scope}_Branch_2_Conv2d_0e_3x1")],
                 f"{scope}_Branch_2_concat")
    b3 = _avg_pool(x, f"{scope}_Branch_3_AvgPool_0a_3x3")
    b3 = conv_bn(b3, 256, (1, 1), f"{scope}_Branch_3_Conv2d_0b_1x1")
    return _concat([b0, b1, b2, b3], scope)


STAGES: tuple[tuple[Callable, int, str], ...] = (  # block, how many, Slim scope of the first
    (inception_a, 4, "Mixed_5b"),  # Mixed_5b .. Mixed_5e
    (reduction_a, 1, "Mixed_6a"),
    (inception_b, 7, "Mixed_6b"),  # Mixed_6b .. Mixed_6h
    (reduction_b, 1, "Mixed_7a"),
    (inception_c, 3, "Mixed_7b"),  # Mixed_7b .. Mixed_7d
)


def InceptionV4(*, include_top: bool = False, weights: None = None,  # noqa: N802 (Keras style)
                input_shape: tuple[int, int, int] = (299, 299, 3)) -> keras.Model:
    """Inception-v4's feature extractor: [N, H, W, C] -> [N, h, w, 1536] (8 x 8 at 299 px).

    Called like the keras.applications constructors (nets.NETWORKS calls them all alike); there
    is no top and no pretrained file, so include_top must be False and weights None.

    Raises:
      ValueError: include_top or weights given, or an input smaller than MIN_IMAGE_SIZE.
    """
    if include_top or weights is not None:
        raise ValueError("InceptionV4: only include_top=False, weights=None (no top, nothing "
                         "to download)")
    height, width, _ = input_shape
    if min(height, width) < MIN_IMAGE_SIZE:
        raise ValueError(f"InceptionV4: input {height}x{width} is smaller than "
                         f"{MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}")
    images = keras.Input(input_shape, name="input_layer")
    x = stem(images)
    for block, count, first_scope in STAGES:
        for index in range(count):
            x = block(x, first_scope[:-1] + chr(ord(first_scope[-1]) + index))
    return keras.Model(images, x, name="InceptionV4")
