"""The Slim side's network, optimizer and schedule, plugged into the shared training loop.

official/core/train_lib.train(config, strategy, SlimNetwork(...)) keeps the loop, input
pipeline, distribution, precision, resume, evaluation and export; this module only says which
model to build (a networks.registry.ModelSpec of a nets.py network), how to initialise and
freeze it (scopes.py), and which optimizer and learning rate to use (Slim's choices and
defaults).

config.json of a Slim run has "model": its ModelSpec (what export and prediction rebuild)
and "slim": the SlimConfig fields. A train_dir resumes only with the same network,
trainable scopes and optimizer (the checkpoint's variables and optimizer slots depend on them).
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf
from absl import logging

from networks import registry
from networks.slim import nets, scopes
from networks.slim.choices import DECAY_TYPES, OPTIMIZERS, check_checkpoint_path
from official.core import steps
from official.core.config import (DTYPE_POLICIES, OptimizerSpec, ScheduleSpec,
                                  config_to_resume)

RESUME_KEYS = ("model_name", "trainable_scopes", "optimizer")


@dataclasses.dataclass(frozen=True)
class SlimConfig:
    model_name: str  # a nets.NETWORKS name (resolve aliases with choices.resolve_name first)
    checkpoint_path: str | None = None
    checkpoint_exclude_scopes: tuple[str, ...] = ()
    trainable_scopes: tuple[str, ...] = ()  # empty: everything trains
    optimizer: str = "rmsprop"
    learning_rate: float = 0.01
    learning_rate_decay_type: str = "exponential"
    learning_rate_decay_factor: float = 0.94
    num_epochs_per_decay: float = 2.0
    end_learning_rate: float = 0.0001
    momentum: float = 0.9
    rmsprop_momentum: float = 0.9
    rmsprop_decay: float = 0.9
    opt_epsilon: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999

    def __post_init__(self):
        if self.model_name not in nets.NETWORKS:
            raise ValueError(f"--model_name={self.model_name}: must be one of "
                             f"{', '.join(nets.NETWORKS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer={self.optimizer}: must be one of "
                             f"{', '.join(OPTIMIZERS)}")
        if self.learning_rate_decay_type not in DECAY_TYPES:
            raise ValueError(f"--learning_rate_decay_type={self.learning_rate_decay_type}: "
                             f"must be one of {', '.join(DECAY_TYPES)}")
        if self.learning_rate <= 0:
            raise ValueError(f"--learning_rate={self.learning_rate}: must be > 0")
        if self.num_epochs_per_decay <= 0:
            raise ValueError(f"--num_epochs_per_decay={self.num_epochs_per_decay}: must be > 0")


def check_resume(model_dir: str, slim: SlimConfig) -> None:
    """A train_dir resumes only with the network, trainable scopes and optimizer it started
    with (the training loop checks the data and image settings); a new run's
    --checkpoint_path must name something, before its config.json is written."""
    saved = config_to_resume(model_dir)
    if saved is None:
        if slim.checkpoint_path:
            check_checkpoint_path(slim.checkpoint_path)
        return
    previous = saved.get("slim")
    if previous is None:
        raise ValueError(f"--train_dir={model_dir} holds a {saved.get('architecture', 'resnet')} "
                         "run of networks/resnet; use a new --train_dir")
    current = _jsonable(slim)
    for key in RESUME_KEYS:
        if previous.get(key) != current[key]:
            raise ValueError(f"--train_dir={model_dir} was trained with {key}={previous.get(key)!r}"
                             f", this run has {current[key]!r}; use the same settings or a new "
                             "--train_dir (start it with --checkpoint_path=" + model_dir + ")")


def _jsonable(slim: SlimConfig) -> dict:
    fields = dataclasses.asdict(slim)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}


class SlimNetwork:
    """The network plug-in of train_image_classifier.py (see official/core/train_lib.train)."""

    def __init__(self, slim: SlimConfig):
        self.slim = slim

    def model_spec(self, num_classes: int, *, image_size: int,
                   channels: int) -> registry.ModelSpec:
        return registry.ModelSpec(architecture=self.slim.model_name, num_classes=num_classes,
                                  image_size=image_size, channels=channels)

    def config_entries(self) -> dict:
        return {"slim": _jsonable(self.slim)}

    def learning_rate_schedule(self, schedule: ScheduleSpec):
        """Slim's: fixed, or decayed every num_epochs_per_decay epochs (exponential with
        staircase, or linearly to end_learning_rate)."""
        slim = self.slim
        decay_steps = max(1, int(schedule.steps_per_epoch * slim.num_epochs_per_decay))
        if slim.learning_rate_decay_type == "exponential":
            return keras.optimizers.schedules.ExponentialDecay(
                slim.learning_rate, decay_steps, slim.learning_rate_decay_factor, staircase=True)
        if slim.learning_rate_decay_type == "polynomial":
            return keras.optimizers.schedules.PolynomialDecay(
                slim.learning_rate, decay_steps, slim.end_learning_rate, power=1.0)
        return keras.optimizers.schedules.PolynomialDecay(  # constant, but a schedule object
            slim.learning_rate, 1, slim.learning_rate, power=1.0)

    def _optimizer(self, schedule, loss_scale_factor: float | None):
        slim, extra = self.slim, {}
        if loss_scale_factor is not None:
            extra["loss_scale_factor"] = loss_scale_factor
        if slim.optimizer == "sgd":
            return keras.optimizers.SGD(schedule, **extra)
        if slim.optimizer == "momentum":
            return keras.optimizers.SGD(schedule, momentum=slim.momentum, **extra)
        if slim.optimizer == "adam":
            return keras.optimizers.Adam(schedule, beta_1=slim.adam_beta1,
                                         beta_2=slim.adam_beta2, epsilon=slim.opt_epsilon,
                                         **extra)
        return keras.optimizers.RMSprop(schedule, rho=slim.rmsprop_decay,
                                        momentum=slim.rmsprop_momentum,
                                        epsilon=slim.opt_epsilon, **extra)

    def build_training_state(self, spec: registry.ModelSpec, optimizer: OptimizerSpec,
                             schedule, strategy: tf.distribute.Strategy, *,
                             resuming: bool = False) -> steps.TrainingState:
        """Model (pretrained weights loaded unless `resuming`, scopes frozen, Slim's weight
        decay), optimizer, step, checkpoint."""
        slim = self.slim
        with strategy.scope():
            model = registry.build_model(spec, dtype_policy=DTYPE_POLICIES[optimizer.dtype],
                                         weight_decay=optimizer.weight_decay)
        if slim.checkpoint_path and not resuming:
            # Only for a new run: a resumed one restores its own checkpoint right after this.
            loaded, fresh = scopes.load_pretrained(
                model, slim.model_name, spec.image_size, slim.checkpoint_path,
                scopes.normalize_scopes(slim.checkpoint_exclude_scopes))
            logging.info("loaded %d layers from %s; %d left at their initialisation", loaded,
                         slim.checkpoint_path, fresh)
        trainable = scopes.normalize_scopes(slim.trainable_scopes)
        if slim.trainable_scopes and not trainable:
            raise ValueError(f"--trainable_scopes={','.join(slim.trainable_scopes)}: names only "
                             "auxiliary heads, which Keras networks do not have")
        if trainable:
            frozen = scopes.freeze_all_but(model, trainable)
            logging.info("trainable scopes %s: %d layers frozen", ",".join(trainable), frozen)
        with strategy.scope():
            # Built now so a checkpoint restores the slots immediately (as the ResNet's).
            return steps.training_state(
                model, lambda **extra: self._optimizer(schedule, extra.get("loss_scale_factor")),
                dtype=optimizer.dtype, loss_scale=optimizer.loss_scale)
