"""The Slim programs' names and paths checked before TensorFlow is imported (so their --help and
their errors answer at once): the optimizer and decay names (slim_train.py validates them, and
train_image_classifier.py offers them as flag choices), the network names (nets.NETWORKS
builds each; a test keeps the two lists equal), the trainer's --checkpoint_path's existence,
and the evaluator's --model_name against the network a config.json records."""

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


def trained_network_name(config: dict) -> str | None:
    """The network a train_dir's (or an export's) config.json records, as --model_name is
    compared with it: a NETWORK_NAMES name, or a ResNet's "resnet50_v2" (its "model", else an
    older run's top-level keys, as networks/registry.py spec_from_config and ModelSpec.name
    read them; tests keep the two equal). None when the config does not say: the restore
    reports that."""
    model = config.get("model", config)
    network = model.get("architecture", "resnet")
    if network in NETWORK_NAMES:
        return network
    if model.get("resnet_size") is None or model.get("version") is None:
        return None
    return f"resnet{model['resnet_size']}_v{model['version']}"


def check_model_name(model_name: str | None, checkpoint_path: str, config: dict) -> None:
    """--model_name, when given, names the network that --checkpoint_path holds, from its
    config.json: eval_image_classifier.py before TensorFlow's import, and
    networks/slim/slim_eval.py evaluate for its other callers.

    Raises:
      ValueError: an unknown name (resolve_name), or not the network trained.
    """
    trained = trained_network_name(config)
    if not model_name or trained is None:
        return
    if trained in NETWORK_NAMES:
        named = resolve_name(model_name)
    else:  # a ResNet: by its full name
        named = model_name.strip().lower()
    if named != trained:
        # "an inception_v4", "a vgg_16": the first letter decides for every name here.
        article = "an" if trained.startswith(tuple("aeiou")) else "a"
        raise ValueError(f"--model_name={model_name}: {checkpoint_path} holds {article} "
                         f"{trained}")
