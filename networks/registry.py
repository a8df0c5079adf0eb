"""Every network the trainer can build, and the one place that dispatches on its name.

A ModelSpec says which network and everything needed to rebuild it (a frozen dataclass, saved as
config.json's "model"); build_model(spec) builds it. "resnet" is networks/resnet/resnet_model.py
(its size table), every other name a networks/slim network (nets.NETWORKS: keras.applications
backbones and Inception-v4). The trainer, export, evaluation and prediction under official/
reach networks only through this module.
"""

from __future__ import annotations

import dataclasses

import keras

from networks.resnet import conv_layers, resnet_model
from networks.slim import nets

RESNET = "resnet"
ARCHITECTURES = (RESNET, *nets.NETWORKS)
RESNET_FIELDS = ("resnet_size", "version", "small_input", "data_format")  # only a ResNet's


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A network, fully resolved (no "decide later" values): what build_model needs.

    resnet_size, version, small_input and data_format belong to architecture "resnet" and are
    None for every other network.
    """
    architecture: str  # "resnet" or a nets.NETWORKS name
    num_classes: int
    image_size: int
    channels: int = 1
    resnet_size: int | None = None
    version: int | None = None
    small_input: bool | None = None
    data_format: str | None = None

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture={self.architecture!r}: must be one of "
                             f"{', '.join(ARCHITECTURES)}")
        if self.channels not in (1, 3):
            raise ValueError(f"--channels={self.channels}: must be 1 or 3")
        resnet_fields = [getattr(self, name) for name in RESNET_FIELDS]
        if self.architecture != RESNET:
            if any(value is not None for value in resnet_fields):
                raise ValueError(f"{self.architecture}: {', '.join(RESNET_FIELDS)} are a "
                                 "ResNet's fields; leave them unset")
            nets.check_image_size(self.architecture, self.image_size)
            return
        check_resnet(self.resnet_size, self.version)
        if self.small_input is None or self.data_format is None:
            raise ValueError("a ResNet spec needs small_input and data_format resolved")
        if self.data_format not in resnet_model.DATA_FORMATS:
            raise ValueError(f"--data_format={self.data_format}: must be one of "
                             f"{list(resnet_model.DATA_FORMATS)}")

    @property
    def name(self) -> str:
        """What logs and the benchmark logger call the model: "resnet50_v2", "inception_v4"."""
        if self.architecture != RESNET:
            return self.architecture
        return f"resnet{self.resnet_size}_v{self.version}"

    def to_dict(self) -> dict:
        """The fields that apply to this architecture (config.json's "model")."""
        return {key: value for key, value in dataclasses.asdict(self).items()
                if value is not None}


def check_resnet(resnet_size: int, version: int) -> None:
    """Raises ValueError naming the valid values for an unknown size or version."""
    if resnet_size not in resnet_model.RESNET_SIZES:
        raise ValueError(f"--resnet_size={resnet_size}: must be one of "
                         f"{sorted(resnet_model.RESNET_SIZES)}")
    if version not in (1, 2):
        raise ValueError(f"--version={version}: must be 1 or 2")


def spec_from_config(config: dict) -> ModelSpec:
    """The ModelSpec a config.json records: its "model", or in older runs the top-level keys
    (no "architecture" = a ResNet; a Slim run's leftover resnet_size/version are ignored)."""
    if "model" in config:
        return ModelSpec(**config["model"])
    architecture = config.get("architecture", RESNET)
    common = dict(architecture=architecture, num_classes=config["num_classes"],
                  image_size=config["image_size"], channels=config.get("channels", 1))
    if architecture != RESNET:
        return ModelSpec(**common)
    return ModelSpec(**common, resnet_size=config["resnet_size"], version=config["version"],
                     small_input=bool(config.get("small_input", False)),
                     data_format=config.get("data_format") or "channels_last")


def build_model(spec: ModelSpec, *, dtype_policy: str = "float32", weight_decay: float = 0.0,
                batch_norm_momentum: float | None = None,
                conv_plan: conv_layers.ConvPlan | None = None) -> keras.Model:
    """The network of `spec`, randomly initialised, with float32 logits.

    Args:
      spec: which network, for which classes and input.
      dtype_policy: "float32", "mixed_float16" or "mixed_bfloat16".
      weight_decay: L2 in the network family's own convention (the ResNet's TF-official
        weight_decay * l2_loss(w) on conv/dense kernels and the dense bias; Slim's
        wd * sum(w^2) / 2 on every kernel); the terms are in `model.losses`. 0 disables.
      batch_norm_momentum: momentum of every batch-norm layer's moving averages (None: the
        network's own).
      conv_plan: ResNet only, how its convolutions are computed, not what they compute
        (conv_layers.ConvPlan); None: the model's default. The benchmarks' peers.
    """
    if spec.architecture == RESNET:
        options = {} if conv_plan is None else {"conv_plan": conv_plan}
        model = resnet_model.build_resnet(
            spec.resnet_size, spec.version, spec.num_classes,
            input_shape=(spec.image_size, spec.image_size, spec.channels),
            dtype_policy=dtype_policy, weight_decay=weight_decay,
            small_input=spec.small_input, data_format=spec.data_format, **options)
    else:
        model = nets.build_network(spec.architecture, spec.num_classes,
                                   image_size=spec.image_size, channels=spec.channels,
                                   dtype_policy=dtype_policy, weight_decay=weight_decay)
    if batch_norm_momentum is not None:
        for layer in _leaf_layers(model):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = batch_norm_momentum  # read when the step is traced
    return model


def _leaf_layers(model: keras.Model) -> list[keras.layers.Layer]:
    leaves = []
    for layer in model.layers:
        leaves.extend(_leaf_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return leaves
