"""Tests for networks/resnet/resnet_model.py: every size x version, one train step, precision."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from networks.resnet import conv_layers, resnet_model
from networks.resnet.resnet_model import RESNET_SIZES, build_resnet

TINY = (32, 32, 1)


def _images(batch: int, shape=TINY, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (batch, *shape)).astype(np.float32)


@pytest.mark.parametrize("resnet_size,version",
                         list(itertools.product(sorted(RESNET_SIZES), (1, 2))))
def test_every_size_and_version_builds(resnet_size, version):
    model = build_resnet(resnet_size, version, 3, input_shape=TINY)
    assert model.name == f"resnet{resnet_size}_v{version}"
    assert model.output_shape == (None, 3)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    block_kind, stage_blocks = RESNET_SIZES[resnet_size]
    convs_per_block = 2 if block_kind == "basic" else 3
    # stem + block convs + one projection per stage where the shape changes (all four stages for
    # bottlenecks, stages 2-4 for basic blocks, whose stage 1 keeps 64 channels and stride 1).
    projections = 4 if block_kind == "bottleneck" else 3
    assert len(convs) == 1 + convs_per_block * sum(stage_blocks) + projections
    # depth counts the weighted layers: every non-projection conv plus the dense layer.
    assert len(convs) - projections + 1 == resnet_size


@pytest.mark.parametrize("resnet_size,version", [(18, 1), (18, 2), (34, 1), (34, 2),
                                                 (50, 1), (50, 2)])
def test_one_train_step_is_finite_and_moves_weights(resnet_size, version):
    model = build_resnet(resnet_size, version, 3, input_shape=TINY)
    optimizer = keras.optimizers.SGD(learning_rate=0.1, momentum=0.9)
    images = _images(4)
    labels = np.array([0, 1, 2, 1])
    before = [v.numpy().copy() for v in model.trainable_variables]
    moving_before = [v.numpy().copy() for v in model.non_trainable_variables]

    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        cross_entropy = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        loss = cross_entropy + tf.add_n(model.losses)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))

    assert np.isfinite(loss.numpy())
    assert all(g is not None for g in grads)
    changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)]
    assert all(changed), "every trainable variable should receive an update"
    # training=True must update the batch-norm moving statistics.
    assert any(not np.array_equal(b, v.numpy())
               for b, v in zip(moving_before, model.non_trainable_variables))


def test_resnet50_v1_has_the_canonical_parameter_count():
    model = build_resnet(50, 1, 1000, input_shape=(224, 224, 3))
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    # 25,557,032 is the canonical (torchvision / paper) count of learned parameters; Keras'
    # count_params() also includes the 53,120 BN moving means and variances.
    assert trainable == 25_557_032
    assert model.count_params() == 25_557_032 + 53_120


def test_resnet18_parameter_count():
    model = build_resnet(18, 1, 1000, input_shape=(224, 224, 3))
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == 11_689_512


@pytest.mark.parametrize("policy,compute", [("mixed_float16", "float16"),
                                            ("mixed_bfloat16", "bfloat16"),
                                            ("float32", "float32")])
def test_logits_are_float32_under_every_policy(policy, compute):
    global_before = keras.config.dtype_policy().name
    model = build_resnet(18, 2, 3, input_shape=TINY, dtype_policy=policy)
    logits = model(_images(2), training=False)
    assert logits.dtype == tf.float32
    assert np.all(np.isfinite(logits.numpy()))
    conv = model.get_layer("stem_conv")
    assert conv.compute_dtype == compute
    assert all(v.dtype == "float32" for v in model.variables)
    assert keras.config.dtype_policy().name == global_before, "global policy must not change"


@pytest.mark.parametrize("version", [1, 2])
def test_small_input_stem_at_28px(version):
    model = build_resnet(18, version, 11, input_shape=(28, 28, 1), small_input=True)
    assert "stem_pool" not in [layer.name for layer in model.layers]
    # 28 -> 28 (stem, stage 1) -> 14 -> 7 -> 4: spatial detail survives to the last stage.
    last_stage = [layer for layer in model.layers if layer.name.startswith("stage4")][-1]
    assert tuple(last_stage.output.shape[1:3]) == (4, 4)
    logits = model(np.zeros((3, 28, 28, 1), np.float32), training=False)
    assert logits.shape == (3, 11)


def test_three_channel_input():
    model = build_resnet(18, 1, 5, input_shape=(32, 32, 3))
    assert model(_images(2, (32, 32, 3)), training=False).shape == (2, 5)


def test_channels_first_matches_channels_last():
    images = _images(2)
    last = build_resnet(18, 1, 3, input_shape=TINY)
    first = build_resnet(18, 1, 3, input_shape=TINY, data_format="channels_first")
    first.set_weights(last.get_weights())
    np.testing.assert_allclose(first(images, training=False).numpy(),
                               last(images, training=False).numpy(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kwargs,message", [
    (dict(resnet_size=20), "resnet_size must be one of [18, 34, 50, 101, 152, 200]"),
    (dict(version=3), "version must be one of [1, 2]"),
    (dict(data_format="NCHW"), "data_format must be one of ['channels_last', 'channels_first']"),
    (dict(dtype_policy="fp16"), "mixed_float16"),
    (dict(input_shape=(32, 32, 2)), "channels 1 or 3"),
    (dict(num_classes=0), "num_classes"),
])
def test_bad_arguments_raise_value_error_naming_valid_values(kwargs, message):
    args = dict(resnet_size=18, version=1, num_classes=3, input_shape=TINY) | kwargs
    with pytest.raises(ValueError) as error:
        build_resnet(args.pop("resnet_size"), args.pop("version"), args.pop("num_classes"),
                     **args)
    assert message in str(error.value)


def test_weight_decay_covers_exactly_the_non_batch_norm_weights():
    weight_decay = 1e-4
    model = build_resnet(18, 1, 3, input_shape=TINY, weight_decay=weight_decay)
    decayed = [v for v in model.trainable_variables if "_bn" not in v.path]
    batch_norm = [v for v in model.trainable_variables if "_bn" in v.path]
    assert batch_norm and all(v.name in ("gamma", "beta") for v in batch_norm)
    assert len(model.losses) == len(decayed)  # conv kernels + dense kernel and bias
    # TF official semantics: weight_decay * sum(tf.nn.l2_loss(w)).
    expected = weight_decay * sum(tf.nn.l2_loss(v).numpy() for v in decayed)
    np.testing.assert_allclose(float(tf.add_n(model.losses)), expected, rtol=1e-5)
    assert all(loss.dtype == tf.float32 for loss in model.losses)


def test_zero_weight_decay_adds_no_losses():
    assert build_resnet(18, 2, 3, input_shape=TINY, weight_decay=0.0).losses == []


def test_batch_norm_and_initializer_settings_follow_tf_official():
    assert (resnet_model.BATCH_NORM_MOMENTUM, resnet_model.BATCH_NORM_EPSILON) == (0.997, 1e-5)
    model = build_resnet(18, 1, 3, input_shape=TINY)
    bn = model.get_layer("stem_bn")
    assert (bn.momentum, bn.epsilon) == (0.997, 1e-5)
    init = model.get_layer("stem_conv").kernel_initializer.get_config()
    assert (init["scale"], init["mode"], init["distribution"]) == (1.0, "fan_in",
                                                                   "truncated_normal")
    kernel = model.get_layer("stage3_block1_conv1").kernel.numpy()
    fan_in = np.prod(kernel.shape[:3])
    # Truncated normal with stddev sqrt(1 / fan_in) (before truncation).
    assert abs(kernel.std() - np.sqrt(1 / fan_in)) < 0.15 * np.sqrt(1 / fan_in)


@pytest.mark.parametrize("axis,shape", [(-1, (8, 5, 5, 6)), (1, (8, 6, 5, 5))])
def test_fused_batch_norm_matches_keras_batch_norm(axis, shape):
    x = tf.constant(np.random.default_rng(1).normal(3, 2, shape).astype(np.float32))
    layers = [cls(axis=axis, momentum=0.9, epsilon=1e-5)
              for cls in (keras.layers.BatchNormalization, resnet_model.FusedBatchNormalization)]
    for layer in layers:
        layer.build(shape)
        layer.set_weights(layers[0].get_weights())
        layer.gamma.assign(np.linspace(0.5, 1.5, 6))
        layer.beta.assign(np.linspace(-1, 1, 6))
    results = []
    for layer in layers:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            objective = tf.reduce_sum(tf.sin(y))
        grads = tape.gradient(objective, [x, layer.gamma, layer.beta])
        results.append((y, grads, layer.moving_mean.numpy(), layer.moving_variance.numpy(),
                        layer(x, training=False)))
    (y0, g0, mean0, var0, inf0), (y1, g1, mean1, var1, inf1) = results
    np.testing.assert_allclose(y1.numpy(), y0.numpy(), atol=1e-4)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(mean1, mean0, rtol=1e-5)
    np.testing.assert_allclose(var1, var0, rtol=1e-5)
    assert not np.allclose(inf1.numpy(), y1.numpy())  # inference uses the moving statistics
    assert inf1.shape == inf0.shape


def test_fused_batch_norm_keeps_half_precision_activations():
    layer = resnet_model.FusedBatchNormalization(dtype="mixed_float16")
    y = layer(tf.random.normal((4, 3, 3, 2)), training=True)
    assert y.dtype == tf.float16 and layer.moving_mean.dtype == "float32"
    assert np.all(np.isfinite(y.numpy()))


def test_only_small_channels_last_maps_use_matmuls_and_results_do_not_change():
    shape = (56, 56, 1)  # the OrganAMNIST recipe: stage 3 is 4x4, stage 4 2x2
    fast = build_resnet(18, 2, 3, input_shape=shape)
    plain = build_resnet(18, 2, 3, input_shape=shape,
                         conv_plan=conv_layers.PLAIN_CONVOLUTIONS)

    def names(model, kind):
        return [layer.name for layer in model.layers if type(layer) is kind]

    def output_pixels(layer):
        return int(np.prod(layer.output.shape[1:3]))

    patched = names(fast, conv_layers.PatchMatmulConv2D)
    kernel_grad = names(fast, conv_layers.MatmulKernelGradConv2D)
    convolutions = [layer for layer in fast.layers if isinstance(layer, keras.layers.Conv2D)]
    assert patched == [layer.name for layer in convolutions if output_pixels(layer) <= 4]
    assert kernel_grad == [layer.name for layer in convolutions
                           if 4 < output_pixels(layer) <= 16]
    assert patched and all(name.startswith("stage4") for name in patched)
    assert kernel_grad and all(name.startswith("stage3") for name in kernel_grad)
    assert not names(plain, conv_layers.PatchMatmulConv2D)
    assert not names(plain, conv_layers.MatmulKernelGradConv2D)
    channels_first = build_resnet(18, 2, 3, input_shape=shape, data_format="channels_first")
    assert all(type(layer) is keras.layers.Conv2D for layer in channels_first.layers
               if isinstance(layer, keras.layers.Conv2D))
    # Same variables in the same order: a checkpoint of one restores into the other.
    assert [v.path for v in fast.weights] == [v.path for v in plain.weights]
    plain.set_weights(fast.get_weights())
    images = _images(4, shape)
    np.testing.assert_allclose(fast(images, training=True).numpy(),
                               plain(images, training=True).numpy(), rtol=1e-4, atol=1e-4)
    for name in (patched[0], kernel_grad[0]):
        layer = fast.get_layer(name)
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(layer))
        assert type(restored) is type(layer)
