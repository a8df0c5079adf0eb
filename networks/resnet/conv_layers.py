"""Convolutions computed through matmuls on small feature maps, and the plan that picks them.

Pure TensorFlow/Keras. Each layer has the variables, config and results (up to summation order)
of keras.layers.Conv2D, so checkpoints and exports of either load into the other; only the
speed differs, on CPUs whose matrix units oneDNN's convolution kernels use poorly at 2x2-4x4
(benchmarks/RESULTS.md sections 7 and 11). resnet_model.build_resnet asks conv_class which
layer each convolution is.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class ConvPlan:
    """How channels-last convolutions are computed (never what), by their output size.

    oneDNN's convolution kernels run tiny feature maps at a few percent of an AMX Xeon's
    matrix units, its kernel gradient worst of all; a matmul over the gathered patches runs
    them well. Profiles of the OrganAMNIST recipe's bf16 step (56 px, ImageNet stem: stage 3 at
    4x4, stage 4 at 2x2) chose the defaults (benchmarks/RESULTS.md sections 7 and 11):
    * output <= patch_matmul_max_pixels: the whole convolution as one matmul of its patches
      (PatchMatmulConv2D); at 2x2 the step ran 1.9x faster. At 4x4 that was no faster;
    * output <= kernel_grad_matmul_max_pixels: the convolution and its input gradient by
      oneDNN, only the kernel gradient as a matmul of the patches (MatmulKernelGradConv2D); at
      4x4x256 oneDNN's bf16 kernel gradient ran at ~250 GFLOP/s, gather and matmul ~3x faster,
      and the step 1.10x. Taking 7x7 (stage 2) too made the step no faster: it stops at 4x4.
    Channels-first (GPU) models always use Conv2D.
    """

    patch_matmul_max_pixels: int = 4
    kernel_grad_matmul_max_pixels: int = 16


PLAIN_CONVOLUTIONS = ConvPlan(patch_matmul_max_pixels=0, kernel_grad_matmul_max_pixels=0)


@dataclasses.dataclass(frozen=True)
class _Geometry:
    paddings: list[list[int]]  # tf.pad's, of a SAME convolution (zeros for VALID)
    out: tuple[int, int]  # the output's size


def _matmul_geometry(layer: keras.layers.Conv2D, inputs) -> _Geometry | None:
    """Sizes for computing `layer` on `inputs` through patches, or None where that does not
    apply and Conv2D's own op runs: channels-first, unknown map size, groups, dilation, or a
    strided SAME (it pads by the input size; ResNet pads those itself and convolves VALID)."""
    if (layer.data_format != "channels_last" or layer.groups != 1
            or tuple(layer.dilation_rate) != (1, 1) or None in inputs.shape[1:]
            or (layer.padding == "same" and tuple(layer.strides) != (1, 1))):
        return None
    (kernel_h, kernel_w), (stride_h, stride_w) = layer.kernel_size, layer.strides
    pad_h, pad_w = (kernel_h - 1, kernel_w - 1) if layer.padding == "same" else (0, 0)
    height, width = inputs.shape[1] + pad_h, inputs.shape[2] + pad_w
    return _Geometry(
        paddings=[[0, 0], [pad_h // 2, pad_h - pad_h // 2], [pad_w // 2, pad_w - pad_w // 2],
                  [0, 0]],
        out=((height - kernel_h) // stride_h + 1, (width - kernel_w) // stride_w + 1))


@keras.saving.register_keras_serializable(package="resnet")
class PatchMatmulConv2D(keras.layers.Conv2D):
    """Keras Conv2D (channels_last) computed as one matmul of its gathered patches by its kernel.

    Same variables, config and outputs (up to summation order) as Conv2D: checkpoints and
    exports of either load into the other. For tiny feature maps only: the k*k shifted slices
    are concatenated into a [pixels, k*k*channels] matrix, which costs memory traffic that a
    large map does not repay, but at 2x2 turns the convolution's three products (forward, input
    and kernel gradients) into matmuls the matrix units run 2-4x faster than the convolution
    kernels do at that size.
    """

    def convolution_op(self, inputs, kernel):
        geometry = _matmul_geometry(self, inputs)
        if geometry is None:
            return super().convolution_op(inputs, kernel)
        kernel_h, kernel_w, channels, filters = kernel.shape
        if self.padding == "same":
            inputs = tf.pad(inputs, geometry.paddings)
        patches = _gather_patches(inputs, (kernel_h, kernel_w), tuple(self.strides),
                                  geometry.out)
        outputs = tf.matmul(tf.reshape(patches, (-1, kernel_h * kernel_w * channels)),
                            tf.reshape(kernel, (kernel_h * kernel_w * channels, filters)))
        return tf.reshape(outputs, (-1, *geometry.out, filters))


def _gather_patches(inputs, kernel: tuple[int, int], strides: tuple[int, int],
                    out: tuple[int, int]):
    """[N, out_h, out_w, k_h * k_w * C]: each output pixel's receptive field, in the kernel's
    (row, column, channel) order, from an already padded NHWC input.

    Gathered by _take_patches. The gradient is written out: TensorFlow's own gradient of
    the k*k strided slices this used to be (StridedSliceGrad, one zero-filled input-sized
    tensor per slice) cost more than the matmuls it sits between. Here each tap's part is
    spread back by one pad (and, for strides, one interleave of zeros), then all are summed.
    """
    (kernel_h, kernel_w), (stride_h, stride_w), (out_h, out_w) = kernel, strides, out
    height, width, channels = inputs.shape[1], inputs.shape[2], inputs.shape[3]
    span_h, span_w = stride_h * (out_h - 1) + 1, stride_w * (out_w - 1) + 1
    taps = [(i, j) for i in range(kernel_h) for j in range(kernel_w)]

    @tf.custom_gradient
    def gather(x):
        patches = _take_patches(x, kernel, strides, out)

        def grad(upstream):
            batch = tf.shape(upstream)[0]
            spread = []
            for (i, j), part in zip(taps, tf.split(upstream, len(taps), axis=-1)):
                if (stride_h, stride_w) != (1, 1):
                    # Put each value at its strided position: [N, oh, 1, ow, 1, C] padded
                    # to [N, oh, sh, ow, sw, C], flattened, cut to the span.
                    part = tf.reshape(part, (batch, out_h, 1, out_w, 1, channels))
                    part = tf.pad(part, [[0, 0], [0, 0], [0, stride_h - 1], [0, 0],
                                         [0, stride_w - 1], [0, 0]])
                    part = tf.reshape(part, (batch, out_h * stride_h, out_w * stride_w,
                                             channels))[:, :span_h, :span_w, :]
                spread.append(tf.pad(part, [[0, 0], [i, height - i - span_h],
                                            [j, width - j - span_w], [0, 0]]))
            return tf.add_n(spread)

        return patches, grad

    return gather(inputs)


def _take_patches(x, kernel: tuple[int, int], strides: tuple[int, int], out: tuple[int, int]):
    """[N, out_h, out_w, k_h * k_w * C]: each output pixel's receptive field, in the kernel's
    (row, column, channel) order, from an already padded NHWC map of static size. One
    tf.gather of precomputed indices: half the time of k*k strided slices and a concat."""
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    index = [(row * strides[0] + i) * width + column * strides[1] + j
             for row in range(out[0]) for column in range(out[1])
             for i in range(kernel[0]) for j in range(kernel[1])]
    patches = tf.gather(tf.reshape(x, (-1, height * width, channels)), index, axis=1)
    return tf.reshape(patches, (-1, *out, kernel[0] * kernel[1] * channels))


@keras.saving.register_keras_serializable(package="resnet")
class MatmulKernelGradConv2D(keras.layers.Conv2D):
    """Keras Conv2D (channels_last) whose kernel gradient is a matmul of the input's patches
    by the output gradient; the convolution and its input gradient are TensorFlow's own ops.

    Same variables, config and results (up to summation order) as Conv2D. For small maps (4x4
    in the recipes), where oneDNN's kernel-gradient op runs at a fraction of the matrix units
    while its forward and input-gradient ops do well (ConvPlan says why).
    """

    def convolution_op(self, inputs, kernel):
        geometry = _matmul_geometry(self, inputs)
        if geometry is None:
            return super().convolution_op(inputs, kernel)
        kernel = tf.convert_to_tensor(kernel)  # the autocast value under mixed precision
        kernel_h, kernel_w, channels, filters = kernel.shape
        stride_h, stride_w = self.strides
        padding = self.padding.upper()

        @tf.custom_gradient
        def convolve(x, k):
            def grad(upstream):
                d_x = tf.raw_ops.Conv2DBackpropInput(
                    input_sizes=tf.shape(x), filter=k, out_backprop=upstream,
                    strides=[1, stride_h, stride_w, 1], padding=padding)
                padded = tf.pad(x, geometry.paddings) if padding == "SAME" else x
                patches = _take_patches(padded, (kernel_h, kernel_w), (stride_h, stride_w),
                                        geometry.out)
                d_k = tf.matmul(tf.reshape(patches, (-1, kernel_h * kernel_w * channels)),
                                tf.reshape(upstream, (-1, filters)), transpose_a=True)
                return d_x, tf.reshape(d_k, (kernel_h, kernel_w, channels, filters))

            return tf.nn.conv2d(x, k, [1, stride_h, stride_w, 1], padding), grad

        return convolve(inputs, kernel)


def conv_class(x, kernel_size: int, strides: int, data_format: str, plan: ConvPlan):
    """The layer class `plan` gives a convolution of input `x` (Conv2D if not channels-last)."""
    height, width = x.shape[1], x.shape[2]
    if data_format != "channels_last" or height is None or width is None:
        return keras.layers.Conv2D
    if strides > 1:  # fixed padding was applied: a VALID convolution
        height, width = (height - kernel_size) // strides + 1, (width - kernel_size) // strides + 1
    if height * width <= plan.patch_matmul_max_pixels:
        return PatchMatmulConv2D
    if height * width <= plan.kernel_grad_matmul_max_pixels:
        return MatmulKernelGradConv2D
    return keras.layers.Conv2D
