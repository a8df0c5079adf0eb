"""ResNet v1 ("v1.5") and v2 (pre-activation), sizes 18-200, as a Keras 3 functional model.

Pure TensorFlow/Keras: no I/O, no flags. The architecture follows the TF official ResNet
(tensorflow/models official/resnet, the Estimator-era model this project descends from):

* v1 [He et al. 2015, arXiv:1512.03385] in its "v1.5" form: the bottleneck's stride sits on the
  3x3 convolution, not the first 1x1 (better accuracy, same parameters). Post-activation:
  conv -> BN -> ReLU, with BN on the projection shortcut and ReLU after the addition.
* v2 [He et al. 2016, arXiv:1603.05027]: full pre-activation, BN -> ReLU -> conv; the projection
  shortcut is taken from the pre-activated input; one final BN -> ReLU before pooling.

The v1/v2 difference lives in the block functions and in one small per-version spec
(`_VERSIONS`); the stage loop in `build_resnet` is shared.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras
import tensorflow as tf

from networks.resnet.conv_layers import ConvPlan, conv_class

# depth: (block kind, blocks per stage)
RESNET_SIZES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
STAGE_FILTERS = (64, 128, 256, 512)  # bottleneck blocks output 4x these
DATA_FORMATS = ("channels_last", "channels_first")
DTYPE_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")

# TF official ResNet's _BATCH_NORM_DECAY / _BATCH_NORM_EPSILON. A momentum of 0.997 makes the
# moving statistics average over ~300 steps, which is right for long ImageNet runs; short runs on
# small data may evaluate with statistics that lag the weights for the first few hundred steps.
BATCH_NORM_MOMENTUM = 0.997
BATCH_NORM_EPSILON = 1e-5


@keras.saving.register_keras_serializable(package="resnet")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras BatchNormalization computed by TensorFlow's single FusedBatchNormV3 kernel.

    Same variables, config, outputs and moving-average updates as the Keras layer, whose TF
    backend builds BN from separate moments/normalise ops (several passes over each activation,
    and an upcast of float16 activations to float32). One fused kernel (oneDNN on CPU, cuDNN on
    GPU) measured 1.1-1.2x faster training steps for ResNet-18/50 on this project's 2-core CPU.
    Falls back to the Keras code for masks and rank != 4.
    """

    # Set by MomentumVariable: the traced update reads the momentum from its variable (the
    # Keras fallback reads the float `momentum`, as traced). None: the float.
    momentum_variable = None

    def call(self, inputs, training=None, mask=None):
        if mask is not None or len(inputs.shape) != 4 or not (self.scale and self.center):
            return super().call(inputs, training=training, mask=mask)
        data_format = "NCHW" if self.axis in (1, -3) else "NHWC"
        update = bool(training) and self.trainable
        empty = tf.zeros((0,), tf.float32)
        outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=self.gamma.value, offset=self.beta.value,
            mean=empty if update else self.moving_mean.value,
            variance=empty if update else self.moving_variance.value,
            epsilon=self.epsilon, data_format=data_format, is_training=update)
        if update:
            # The kernel returns the unbiased (n / (n - 1)) batch variance; Keras averages the
            # biased one, which also makes the moving statistics independent of how a global
            # batch is split across replicas when the replicas see the same statistics.
            count = tf.cast(tf.size(inputs) // tf.shape(inputs)[self.axis], tf.float32)
            variance = variance * ((count - 1.0) / count)
            if self.momentum_variable is None:
                momentum, complement = self.momentum, 1.0 - self.momentum
            else:
                momentum, complement = tf.unstack(self.momentum_variable.pair)
            self.moving_mean.assign(self.moving_mean * momentum + mean * complement)
            self.moving_variance.assign(self.moving_variance * momentum + variance * complement)
        return outputs


class MomentumVariable:
    """The momentum of `model`'s FusedBatchNormalization layers in a variable their traced
    update reads, so that `assign` changes the momentum of a step already traced (a budgeted
    run lays its timed copy over a shorter plan: official/core/budget.py).

    Holds momentum and 1 - momentum, each rounded from Python's float as the constants were:
    the moving averages are the same bit for bit (1 - momentum in float32 is not). A plain
    object, not a Trackable, and not the layers' `momentum` (a variable there is saved in every
    checkpoint, which then no longer restores an older model_dir, and breaks get_config()):
    checkpoints, the export and the model's config never see it; `momentum` follows it.
    """

    def __init__(self, model: keras.Model):
        self.layers = [layer for layer in model.layers
                       if isinstance(layer, FusedBatchNormalization)]
        momenta = {layer.momentum for layer in self.layers} or {BATCH_NORM_MOMENTUM}
        if len(momenta) > 1:
            raise ValueError(f"{model.name}: batch-norm layers with momenta {sorted(momenta)}: "
                             "one variable holds one")
        self.pair = tf.Variable(_momentum_pair(momenta.pop()), trainable=False)
        for layer in self.layers:
            layer.momentum_variable = self

    def assign(self, momentum: float) -> None:
        self.pair.assign(_momentum_pair(momentum))
        for layer in self.layers:
            layer.momentum = float(momentum)


def _momentum_pair(momentum: float) -> list[float]:
    return [momentum, 1.0 - momentum]


@dataclasses.dataclass(frozen=True)
class _Ops:
    """Layer factories shared by every block: one place for dtype, format and regularisation."""

    dtype: keras.DTypePolicy
    data_format: str
    weight_decay: float
    conv_plan: ConvPlan

    @property
    def channel_axis(self) -> int:
        return 1 if self.data_format == "channels_first" else -1

    def regularizer(self) -> keras.regularizers.Regularizer | None:
        # TF official adds weight_decay * sum(tf.nn.l2_loss(w)) = weight_decay / 2 * sum(w**2) for
        # every trainable non-BN variable. Keras L2(l) adds l * sum(w**2), so l = weight_decay / 2
        # reproduces the official loss (and hence the official learning-rate/decay balance).
        if self.weight_decay <= 0:
            return None
        return keras.regularizers.L2(self.weight_decay / 2)

    def conv(self, x, filters: int, kernel_size: int, strides: int, name: str):
        """Convolution with the official "fixed padding": the padding of a strided conv depends
        only on the kernel size, never on whether the input size is odd or even."""
        if strides > 1 and kernel_size > 1:
            pad_begin = (kernel_size - 1) // 2
            pad_end = kernel_size - 1 - pad_begin
            x = keras.layers.ZeroPadding2D(
                ((pad_begin, pad_end), (pad_begin, pad_end)), data_format=self.data_format,
                dtype=self.dtype, name=f"{name}_pad")(x)
        layer_class = conv_class(x, kernel_size, strides, self.data_format, self.conv_plan)
        return layer_class(
            filters, kernel_size, strides=strides,
            padding="same" if strides == 1 else "valid", use_bias=False,
            # tf.variance_scaling_initializer() of the official model: scale 1, fan_in,
            # truncated normal.
            kernel_initializer=keras.initializers.VarianceScaling(
                scale=1.0, mode="fan_in", distribution="truncated_normal"),
            kernel_regularizer=self.regularizer(), data_format=self.data_format,
            dtype=self.dtype, name=name)(x)

    def bn(self, x, name: str):
        # No regularizer: the official model excludes batch-norm variables from weight decay.
        return FusedBatchNormalization(
            axis=self.channel_axis, momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON,
            dtype=self.dtype, name=name)(x)

    def relu(self, x, name: str):
        return keras.layers.ReLU(dtype=self.dtype, name=name)(x)

    def bn_relu(self, x, name: str):
        return self.relu(self.bn(x, f"{name}_bn"), f"{name}_relu")

    def add(self, a, b, name: str):
        return keras.layers.Add(dtype=self.dtype, name=name)([a, b])


def _channels(x, ops: _Ops) -> int:
    return x.shape[ops.channel_axis]


# --- v1 blocks: conv -> BN -> ReLU, ReLU after the addition. ------------------------------------

def basic_block_v1(x, filters: int, strides: int, ops: _Ops, name: str):
    shortcut = x
    if strides != 1 or _channels(x, ops) != filters:
        shortcut = ops.bn(ops.conv(x, filters, 1, strides, f"{name}_proj"), f"{name}_proj_bn")
    y = ops.bn_relu(ops.conv(x, filters, 3, strides, f"{name}_conv1"), f"{name}_1")
    y = ops.bn(ops.conv(y, filters, 3, 1, f"{name}_conv2"), f"{name}_2_bn")
    return ops.relu(ops.add(y, shortcut, f"{name}_add"), f"{name}_out")


def bottleneck_block_v1(x, filters: int, strides: int, ops: _Ops, name: str):
    shortcut = x
    if strides != 1 or _channels(x, ops) != 4 * filters:
        shortcut = ops.bn(ops.conv(x, 4 * filters, 1, strides, f"{name}_proj"),
                          f"{name}_proj_bn")
    y = ops.bn_relu(ops.conv(x, filters, 1, 1, f"{name}_conv1"), f"{name}_1")
    # "v1.5": the stride is on the 3x3, so the 1x1 above sees every input pixel.
    y = ops.bn_relu(ops.conv(y, filters, 3, strides, f"{name}_conv2"), f"{name}_2")
    y = ops.bn(ops.conv(y, 4 * filters, 1, 1, f"{name}_conv3"), f"{name}_3_bn")
    return ops.relu(ops.add(y, shortcut, f"{name}_add"), f"{name}_out")


# --- v2 blocks: BN -> ReLU -> conv, identity path left untouched. -------------------------------

def basic_block_v2(x, filters: int, strides: int, ops: _Ops, name: str):
    shortcut = x
    preact = ops.bn_relu(x, f"{name}_preact")
    if strides != 1 or _channels(x, ops) != filters:
        # The projection reads the pre-activated input, as in the official v2 model.
        shortcut = ops.conv(preact, filters, 1, strides, f"{name}_proj")
    y = ops.conv(preact, filters, 3, strides, f"{name}_conv1")
    y = ops.conv(ops.bn_relu(y, f"{name}_1"), filters, 3, 1, f"{name}_conv2")
    return ops.add(y, shortcut, f"{name}_add")


def bottleneck_block_v2(x, filters: int, strides: int, ops: _Ops, name: str):
    shortcut = x
    preact = ops.bn_relu(x, f"{name}_preact")
    if strides != 1 or _channels(x, ops) != 4 * filters:
        shortcut = ops.conv(preact, 4 * filters, 1, strides, f"{name}_proj")
    y = ops.conv(preact, filters, 1, 1, f"{name}_conv1")
    y = ops.conv(ops.bn_relu(y, f"{name}_1"), filters, 3, strides, f"{name}_conv2")
    y = ops.conv(ops.bn_relu(y, f"{name}_2"), 4 * filters, 1, 1, f"{name}_conv3")
    return ops.add(y, shortcut, f"{name}_add")


BlockFn = Callable[..., keras.KerasTensor]


@dataclasses.dataclass(frozen=True)
class _VersionSpec:
    blocks: dict[str, BlockFn]
    # v1 normalises+activates the stem output; v2 leaves that to the first block's pre-activation
    # and instead needs one BN+ReLU after the last block (its blocks end on a bare addition).
    stem_bn_relu: bool
    final_bn_relu: bool


_VERSIONS = {
    1: _VersionSpec({"basic": basic_block_v1, "bottleneck": bottleneck_block_v1},
                    stem_bn_relu=True, final_bn_relu=False),
    2: _VersionSpec({"basic": basic_block_v2, "bottleneck": bottleneck_block_v2},
                    stem_bn_relu=False, final_bn_relu=True),
}


def build_resnet(resnet_size: int, version: int, num_classes: int, *,
                 input_shape: tuple[int, int, int] = (224, 224, 1),
                 dtype_policy: str = "float32", weight_decay: float = 1e-4,
                 small_input: bool = False,
                 data_format: str = "channels_last",
                 conv_plan: ConvPlan = ConvPlan()) -> keras.Model:
    """Builds an uncompiled ResNet classifier that maps images to float32 logits.

    Args:
      resnet_size: a key of RESNET_SIZES (18, 34, 50, 101, 152, 200).
      version: 1 (v1.5, post-activation) or 2 (pre-activation).
      num_classes: number of logits.
      input_shape: (height, width, channels) of the model input, always channels-last; channels
        is 1 (radiographs) or 3. Height/width may be None for variable-size inputs.
      dtype_policy: "float32", "mixed_float16" or "mixed_bfloat16". Applied per layer, so the
        global Keras policy is neither read nor changed. Variables stay float32.
      weight_decay: L2 decay with the TF official semantics (weight_decay * sum(l2_loss(w)))
        on conv kernels and the dense kernel and bias; never on batch-norm variables. The
        terms are in `model.losses` (float32); add their sum to the training loss. 0 disables.
      small_input: a stem for 28-64 px images: one 3x3 stride-1 conv and no max-pool. The
        ImageNet stem (7x7 stride 2 + max-pool) shrinks the input 4x before the first block,
        which leaves a 28 px image 1x1 after stage 4 and throws away fine detail early; the
        small stem keeps full resolution into stage 1 (28 px -> 4x4 at the end), at the cost of
        ~16x the stage compute of the ImageNet stem at the same input size.
      data_format: "channels_last" or "channels_first". The model input stays NHWC either way
        (as in the official model, a transpose at the top converts to NCHW); channels_first is
        for GPUs, where cuDNN is faster in NCHW. On CPU, TensorFlow's oneDNN kernels accept
        NCHW convolutions and Keras transposes around pooling, so it runs, only more slowly.
      conv_plan: which channels-last convolutions are computed through matmuls (same weights
        and results, faster on small maps; see conv_layers.ConvPlan);
        conv_layers.PLAIN_CONVOLUTIONS makes every convolution a plain Conv2D.

    Returns:
      A keras.Model named "resnet{size}_v{version}" with one input and one output, the logits
      [batch, num_classes] in float32.

    Raises:
      ValueError: unknown resnet_size, version, dtype_policy or data_format, bad channel count
        or num_classes.
    """
    if resnet_size not in RESNET_SIZES:
        raise ValueError(f"resnet_size must be one of {sorted(RESNET_SIZES)}, got {resnet_size!r}")
    if version not in _VERSIONS:
        raise ValueError(f"version must be one of {sorted(_VERSIONS)}, got {version!r}")
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {list(DATA_FORMATS)}, got {data_format!r}")
    if dtype_policy not in DTYPE_POLICIES:
        raise ValueError(
            f"dtype_policy must be one of {list(DTYPE_POLICIES)}, got {dtype_policy!r}")
    if len(input_shape) != 3 or input_shape[-1] not in (1, 3):
        raise ValueError(
            f"input_shape must be (height, width, channels) with channels 1 or 3, "
            f"got {input_shape!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")

    block_kind, stage_blocks = RESNET_SIZES[resnet_size]
    spec = _VERSIONS[version]
    block = spec.blocks[block_kind]
    # A policy object passed to each layer (rather than keras.mixed_precision.set_global_policy)
    # keeps building the model free of process-wide side effects.
    ops = _Ops(keras.DTypePolicy(dtype_policy), data_format, weight_decay, conv_plan)

    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = inputs
    if data_format == "channels_first":
        x = keras.layers.Permute((3, 1, 2), dtype=ops.dtype, name="to_nchw")(x)

    if small_input:
        x = ops.conv(x, STAGE_FILTERS[0], 3, 1, "stem_conv")
    else:
        x = ops.conv(x, STAGE_FILTERS[0], 7, 2, "stem_conv")
    if spec.stem_bn_relu:
        x = ops.bn_relu(x, "stem")
    if not small_input:
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same", data_format=data_format,
                                      dtype=ops.dtype, name="stem_pool")(x)

    for stage, (filters, num_blocks) in enumerate(zip(STAGE_FILTERS, stage_blocks), start=1):
        for index in range(num_blocks):
            strides = 2 if stage > 1 and index == 0 else 1
            x = block(x, filters, strides, ops, f"stage{stage}_block{index + 1}")

    if spec.final_bn_relu:
        x = ops.bn_relu(x, "final")
    x = keras.layers.GlobalAveragePooling2D(data_format=data_format, dtype=ops.dtype,
                                            name="avg_pool")(x)
    # tf.layers.dense defaults of the official model: Glorot-uniform kernel, zero bias; its
    # weight decay also covers the bias (every non-BN trainable variable).
    x = keras.layers.Dense(num_classes, kernel_initializer="glorot_uniform",
                           kernel_regularizer=ops.regularizer(),
                           bias_regularizer=ops.regularizer(), dtype=ops.dtype, name="logits")(x)
    # Softmax and cross-entropy in float16 lose precision and can overflow; a float32 identity
    # makes the model output float32 under every policy, so losses and exported probabilities
    # never see half precision (the Model Garden does the same).
    outputs = keras.layers.Activation("linear", dtype="float32", name="logits_float32")(x)
    return keras.Model(inputs, outputs, name=f"resnet{resnet_size}_v{version}")
