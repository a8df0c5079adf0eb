"""The Slim trainer's names and paths checked before TensorFlow is imported (so its --help and
its errors answer at once): the optimizer and decay names (slim_train.py validates them, and
train_image_classifier.py offers them as flag choices), the network names (nets.NETWORKS
builds each; a test keeps the two lists equal) and --checkpoint_path's existence."""

from __future__ import annotations

import os

OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")
DECAY_TYPES = ("fixed", "exponential", "polynomial")
NETWORK_NAMES = ("inception_v3", "inception_v4", "inception_resnet_v2", "vgg_16", "resnet_v2_50",
                 "resnet_v2_152", "mobilenet_v3_small", "mobilenet_v3_large",
                 "efficientnet_v2_b0", "efficientnet_v2_s", "densenet_121", "convnext_tiny")

# TF-Slim nets_factory names (and Keras class names, lower-cased) -> a NETWORK_NAMES name.
LEGACY_NAMES = {
    "inceptionv4": "inception_v4",
    "vgg_16": "vgg_16", "vgg16": "vgg_16",
    "resnet_v2_50": "resnet_v2_50", "resnet50v2": "resnet_v2_50",
    "resnet_v2_152": "resnet_v2_152", "resnet152v2": "resnet_v2_152",
    "inceptionv3": "inception_v3", "inceptionresnetv2": "inception_resnet_v2",
    "mobilenetv3small": "mobilenet_v3_small", "mobilenetv3large": "mobilenet_v3_large",
    "efficientnetv2b0": "efficientnet_v2_b0", "efficientnetv2s": "efficientnet_v2_s",
    "densenet121": "densenet_121", "convnexttiny": "convnext_tiny",
}


def resolve_name(model_name: str) -> str:
    """The nets.NETWORKS name for `model_name` (a table name, a Slim name or a Keras class name).

    Raises:
      ValueError: unknown name; the message lists the valid ones.
    """
    key = model_name.strip().lower()
    if key in NETWORK_NAMES:
        return key
    if key in LEGACY_NAMES:
        return LEGACY_NAMES[key]
    raise ValueError(f"--model_name={model_name}: unknown network; valid names: "
                     f"{', '.join(NETWORK_NAMES)} (or their Keras class names)")


def check_checkpoint_path(path: str) -> None:
    """--checkpoint_path names something: a train_dir, a checkpoint prefix (ckpt-N) or a
    file. Checked before a new run writes its config.json too (the load comes once the
    network is built).

    Raises:
      FileNotFoundError: it names nothing.
    """
    if not (os.path.isdir(path) or os.path.exists(path + ".index") or os.path.isfile(path)):
        raise FileNotFoundError(f"--checkpoint_path={path}: no such file or folder")
