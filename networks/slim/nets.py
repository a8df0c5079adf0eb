"""The networks of the TF-Slim side: keras.applications backbones (and Inception-v4, which
keras.applications lacks: inception_v4.py) with a new head (pure Keras).

NETWORKS is the table: name -> (constructor, preprocess_input, default image size, min size,
dropout before the logits). Every model is built with weights=None (nothing is ever downloaded)
and include_top=False, and wrapped as

    images [N, H, W, channels], float32 in [-1, 1] (dataset.preprocess.normalize)
      -> NetworkInput: back to 0..255, grey repeated to 3 channels, the network's preprocess_input
      -> backbone (the keras.applications or inception_v4 model, nested under its own name)
      -> GlobalAveragePooling2D "avg_pool" [-> Dropout "dropout", where Slim's net had one]
      -> Dense "logits" (float32 under mixed precision)

so the shared input pipeline, export and prediction stay unchanged: each network's own input
scaling lives inside the model, where no caller can forget it.

networks/slim/choices.py's LEGACY_NAMES maps TF-Slim's model names (the original README's
commands) and Keras class names to this table; a name always means that network, never a
stand-in.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from typing import Callable

import keras
from keras import applications as apps
from keras.src.backend.common import global_state  # no public API for the layer-name counter

from networks.slim import inception_v4
from networks.slim.choices import resolve_name

HEAD_LAYERS = ("avg_pool", "dropout", "logits")  # the new layers on top of every backbone
INPUT_LAYER = "network_input"
KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")  # what --weight_decay decays


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    constructor: Callable[..., keras.Model]
    preprocess_input: Callable
    default_image_size: int
    min_image_size: int
    dropout_rate: float = 0.0  # before the logits, in training only


NETWORKS = {  # name: (constructor, its preprocess_input, default, min size[, dropout])
    "inception_v3": NetworkSpec(apps.InceptionV3, apps.inception_v3.preprocess_input, 299, 75),
    # Slim's inception_v4(): dropout_keep_prob=0.8 before the logits; its inception
    # preprocessing scales to [-1, 1], as inception_v3.preprocess_input does.
    "inception_v4": NetworkSpec(inception_v4.InceptionV4, apps.inception_v3.preprocess_input,
                                299, inception_v4.MIN_IMAGE_SIZE, dropout_rate=0.2),
    "inception_resnet_v2": NetworkSpec(apps.InceptionResNetV2,
                                       apps.inception_resnet_v2.preprocess_input, 299, 75),
    "vgg_16": NetworkSpec(apps.VGG16, apps.vgg16.preprocess_input, 224, 32),
    "resnet_v2_50": NetworkSpec(apps.ResNet50V2, apps.resnet_v2.preprocess_input, 224, 32),
    "resnet_v2_152": NetworkSpec(apps.ResNet152V2, apps.resnet_v2.preprocess_input, 224, 32),
    "mobilenet_v3_small": NetworkSpec(apps.MobileNetV3Small, apps.mobilenet_v3.preprocess_input,
                                      224, 32),
    "mobilenet_v3_large": NetworkSpec(apps.MobileNetV3Large, apps.mobilenet_v3.preprocess_input,
                                      224, 32),
    "efficientnet_v2_b0": NetworkSpec(apps.EfficientNetV2B0,
                                      apps.efficientnet_v2.preprocess_input, 224, 32),
    "efficientnet_v2_s": NetworkSpec(apps.EfficientNetV2S, apps.efficientnet_v2.preprocess_input,
                                     384, 32),
    "densenet_121": NetworkSpec(apps.DenseNet121, apps.densenet.preprocess_input, 224, 32),
    "convnext_tiny": NetworkSpec(apps.ConvNeXtTiny, apps.convnext.preprocess_input, 224, 32),
}

def check_image_size(name: str, image_size: int) -> None:
    spec = NETWORKS[name]
    if image_size < spec.min_image_size:
        raise ValueError(f"--image_size={image_size}: {name} needs at least "
                         f"{spec.min_image_size} px (default {spec.default_image_size})")


@keras.saving.register_keras_serializable(package="slim")
class NetworkInput(keras.layers.Layer):
    """[-1, 1] images (the project's one normalisation) -> the input the backbone was trained
    on: 0..255, three channels (a grey channel repeated, as ImageNet weights expect), then the
    network's own preprocess_input. No weights."""

    def __init__(self, model_name: str, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.model_name = model_name
        self.channels = channels

    def call(self, images):
        pixels = (keras.ops.cast(images, self.compute_dtype) + 1.0) * 127.5
        if self.channels == 1:
            pixels = keras.ops.repeat(pixels, 3, axis=-1)
        return NETWORKS[self.model_name].preprocess_input(pixels)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)

    def get_config(self):
        return {**super().get_config(), "model_name": self.model_name,
                "channels": self.channels}


@contextlib.contextmanager
def _fresh_layer_names():
    """Keras numbers auto-named layers per process (conv2d, conv2d_1, ...); InceptionV3 and
    InceptionResNetV2 name most convolutions that way. Building the backbone with a fresh
    counter gives it the names of a fresh process every time (what `model.summary()` shows
    after `import keras`), so --trainable_scopes and --checkpoint_exclude_scopes mean the same
    layers in every run. The process's counter is put back afterwards."""
    saved = global_state.get_global_attribute("object_name_uids")
    global_state.set_global_attribute("object_name_uids", collections.defaultdict(int))
    try:
        yield
    finally:
        global_state.set_global_attribute("object_name_uids", saved)


def build_backbone(name: str, image_size: int) -> keras.Model:
    """The network's feature extractor, 3-channel input, random init, no download."""
    with _fresh_layer_names():
        return NETWORKS[name].constructor(include_top=False, weights=None,
                                          input_shape=(image_size, image_size, 3))


def build_network(model_name: str, num_classes: int, *, image_size: int, channels: int = 1,
                  dtype_policy: str = "float32", weight_decay: float = 0.0) -> keras.Model:
    """The backbone of `model_name` with a new `num_classes` head; float32 logits.

    Args:
      model_name: a NETWORKS name (see choices.resolve_name for aliases).
      image_size: input height and width; at least the network's min_image_size.
      channels: 1 (grey, repeated to 3 inside the model) or 3.
      dtype_policy: Keras dtype policy, e.g. "mixed_float16"; set on every layer.
      weight_decay: Slim's L2 on every convolution and dense kernel (0: none); see
        add_weight_decay.

    Raises:
      ValueError: unknown name, image too small, bad channels or num_classes.
    """
    name = resolve_name(model_name)
    check_image_size(name, image_size)
    if channels not in (1, 3):
        raise ValueError(f"--channels={channels}: must be 1 or 3")
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}: needs at least 2")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype_policy)  # the backbone's layers take the global policy
    try:
        images = keras.Input((image_size, image_size, channels), name="images")
        x = NetworkInput(name, channels, name=INPUT_LAYER)(images)
        x = build_backbone(name, image_size)(x)
        x = keras.layers.GlobalAveragePooling2D(name=HEAD_LAYERS[0])(x)
        if NETWORKS[name].dropout_rate:
            x = keras.layers.Dropout(NETWORKS[name].dropout_rate, name=HEAD_LAYERS[1])(x)
        # float32 logits: softmax cross-entropy in float16 overflows for confident predictions.
        logits = keras.layers.Dense(num_classes, name=HEAD_LAYERS[2], dtype="float32")(x)
        model = keras.Model(images, logits, name=name)
    finally:
        keras.config.set_dtype_policy(previous)
    if weight_decay > 0:
        add_weight_decay(model, weight_decay)
    return model


def add_weight_decay(model: keras.Model, weight_decay: float) -> None:
    """L2 on the convolution and dense kernels (Slim's weights_regularizer).

    Keras adds it to model.losses for trainable variables only, so layers frozen later get
    none. Slim's l2_regularizer(wd) is wd * tf.nn.l2_loss(w) = wd / 2 * sum(w**2), Keras' L2(l)
    is l * sum(w**2): halved, so --weight_decay means what it meant in Slim.
    """
    l2 = keras.regularizers.L2(weight_decay / 2)
    for layer in weighted_layers(model):
        for name in KERNEL_NAMES:
            variable = getattr(layer, name, None)
            if isinstance(variable, keras.Variable):
                variable.regularizer = l2


def backbone_of(model: keras.Model) -> keras.Model:
    """The nested backbone model inside a build_network model."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise ValueError(f"{model.name}: expected one nested backbone, found {len(nested)}")
    return nested[0]


def weighted_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Leaf layers that own variables, in the model's (topological) order, nested included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.extend(weighted_layers(layer))
        elif layer.weights:
            found.append(layer)
    return found
