"""Slim's --trainable_scopes and --checkpoint_exclude_scopes over Keras layer names, and
--checkpoint_path: pretrained weights from a local file or a model_dir (never downloaded).

A scope is a layer-name prefix. A layer matches when its own name or its path
("<backbone>/<layer>", e.g. "inception_v3/mixed7", or "logits" for the head) starts with the
scope, so "logits" is the new head and "inception_v3" the whole backbone. For the original
README's commands, a Slim scope ending in "/Logits" (e.g. "InceptionV4/Logits") means the head
and one ending in "/AuxLogits" is ignored: Keras networks have no auxiliary head.
Layer names are those of `keras.applications.<Network>(weights=None, include_top=False)
.summary()` in a fresh Python process (nets.build_backbone guarantees the same names); for
inception_v4 they are Slim's scopes with "_" for "/", so "InceptionV4/Mixed_7d" works as in Slim.

Checkpoints are matched to the model by position, not by name: the backbone's weighted layers
in topological order, checked layer by layer (class and every weight's shape), so weights saved
by any Keras process (whatever its automatic layer numbering) load into the right layers.
"""

from __future__ import annotations

import dataclasses
import os

import keras
import tensorflow as tf
from absl import logging

from networks import registry
from networks.slim import nets
from networks.slim.choices import check_checkpoint_path
from official.core import restore
from official.core.config import CONFIG_FILE

SLIM_HEAD = "logits"
SLIM_AUX_HEAD = "auxlogits"


def normalize_scopes(scopes: tuple[str, ...]) -> tuple[str, ...]:
    """Slim's "<Net>/Logits" -> "logits"; "<Net>/AuxLogits" dropped; others unchanged."""
    result = []
    for scope in scopes:
        scope = scope.strip()
        last = scope.rstrip("/").rsplit("/", 1)[-1].lower()
        if not scope:
            continue
        if last == SLIM_AUX_HEAD:
            logging.info("scope %s ignored: Keras networks have no auxiliary head", scope)
        elif last == SLIM_HEAD:
            result.append(SLIM_HEAD)
        else:
            result.append(scope)
    return tuple(dict.fromkeys(result))


def layer_paths(model: keras.Model) -> list[tuple[str, keras.layers.Layer]]:
    """(path, layer) for every weighted leaf layer of a nets.build_network model."""
    paths = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            paths.extend((f"{layer.name}/{leaf.name}", leaf)
                         for leaf in nets.weighted_layers(layer))
        elif layer.weights:
            paths.append((layer.name, layer))
    return paths


def _matches(path: str, scopes: tuple[str, ...]) -> bool:
    name = path.rsplit("/", 1)[-1]
    return any(path.startswith(scope) or name.startswith(scope) for scope in scopes)


def select(model: keras.Model, scopes: tuple[str, ...], flag: str) -> set[str]:
    """Paths of the layers matched by `scopes`.

    Raises:
      ValueError: a scope matches no weighted layer (names a few valid ones).
    """
    paths = layer_paths(model)
    for scope in scopes:
        if not any(_matches(path, (scope,)) for path, _ in paths):
            examples = ", ".join(p for p, _ in paths[:3] + paths[-2:])
            raise ValueError(f"{flag}: {scope!r} matches no layer of {model.name} (layer names "
                             f"look like: {examples})")
    return {path for path, _ in paths if _matches(path, scopes)}


def freeze_all_but(model: keras.Model, trainable_scopes: tuple[str, ...]) -> int:
    """Only the layers under `trainable_scopes` train; returns how many layers are frozen.

    A frozen layer has no trainable variables (no gradient, no optimizer slot, no weight decay)
    and, for batch norm, runs in inference mode: Keras 3 BatchNormalization normalises with its
    moving statistics and leaves them unchanged when `trainable` is False, so frozen weights
    stay bit-identical.
    """
    keep = select(model, trainable_scopes, "--trainable_scopes")
    frozen = 0
    for path, layer in layer_paths(model):
        if path not in keep:
            layer.trainable = False
            frozen += 1
    return frozen


@dataclasses.dataclass(frozen=True)
class _Source:
    backbone: list  # weighted layers, topological order
    head: dict  # layer name -> layer (only for checkpoints of this tool)
    description: str


def _source_from_model(model: keras.Model, description: str) -> _Source:
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) == 1 and any(layer.name == SLIM_HEAD for layer in model.layers):
        head = {layer.name: layer for layer in model.layers
                if layer.weights and not isinstance(layer, keras.Model)}
        return _Source(nets.weighted_layers(nested[0]), head, description)
    # A plain keras.applications model (with or without its ImageNet top).
    return _Source(nets.weighted_layers(model), {}, description)


def _names_a_run(path: str) -> bool:
    """A --train_dir of this tool or one of its checkpoint prefixes (ckpt-N)."""
    return os.path.isdir(path) or tf.io.gfile.exists(path + ".index")


def _open_source(path: str, model_name: str, image_size: int) -> _Source:
    if _names_a_run(path):
        model_dir, checkpoint = (path, None) if os.path.isdir(path) else (
            os.path.dirname(path), path)
        if not os.path.isfile(os.path.join(model_dir, CONFIG_FILE)):
            raise ValueError(f"--checkpoint_path={path}: a folder must be a --train_dir of this "
                             f"tool (with {CONFIG_FILE})")
        source, config = restore.load_model_from_dir(model_dir, checkpoint)
        trained = registry.spec_from_config(config).name
        if trained != model_name:
            raise ValueError(f"--checkpoint_path={path} holds the network {trained}, not "
                             f"{model_name}")
        return _source_from_model(source, f"{path} ({trained})")
    check_checkpoint_path(path)
    if path.endswith(".keras"):
        try:
            source = keras.models.load_model(path, compile=False)
        except Exception as error:  # Keras raises many types for a bad archive
            raise ValueError(f"--checkpoint_path={path}: not a loadable Keras model "
                             f"({type(error).__name__}: {str(error)[:200]})") from None
        return _source_from_model(source, path)
    if path.endswith(".h5"):
        # The backbone's weights (keras.applications' *_notop.h5, or backbone.save_weights):
        # exactly what keras.applications does with weights=<path>.
        source = nets.build_backbone(model_name, image_size)
        try:
            source.load_weights(path)
        except Exception as error:
            raise ValueError(f"--checkpoint_path={path}: not weights of {model_name} without "
                             f"its top (use the *_notop.h5 file; {type(error).__name__}: "
                             f"{str(error)[:200]})") from None
        return _Source(nets.weighted_layers(source), {}, path)
    raise ValueError(f"--checkpoint_path={path}: expected a .weights.h5/.h5 file, a .keras "
                     "model, or a --train_dir (or its ckpt-N prefix) of this tool")


def _describe(layer) -> str:
    return f"{type(layer).__name__} {[tuple(w.shape) for w in layer.weights]}"


def load_pretrained(model: keras.Model, model_name: str, image_size: int, path: str,
                    exclude_scopes: tuple[str, ...]) -> tuple[int, int]:
    """Copy weights from `path` into `model`, except the layers under `exclude_scopes`.

    Returns:
      (layers loaded, layers left at their fresh initialisation).
    Raises:
      ValueError: a file of another network, or a layer whose shapes differ (e.g. a head for
        another number of classes: exclude it with --checkpoint_exclude_scopes=logits).
      FileNotFoundError: no such file or folder.
    """
    excluded = select(model, exclude_scopes, "--checkpoint_exclude_scopes") if (
        exclude_scopes) else set()
    source = _open_source(path, model_name, image_size)
    targets = layer_paths(model)
    backbone = [(p, layer) for p, layer in targets if "/" in p]
    if len(source.backbone) < len(backbone):
        raise ValueError(f"--checkpoint_path={source.description}: {len(source.backbone)} "
                         f"weighted layers, {model_name} has {len(backbone)}; is it a "
                         f"{model_name} checkpoint?")
    loaded = 0
    for (target_path, target), origin in zip(backbone, source.backbone):
        if _describe(target) != _describe(origin):
            raise ValueError(f"--checkpoint_path={source.description}: layer {origin.name} "
                             f"({_describe(origin)}) does not fit {target_path} "
                             f"({_describe(target)}); is it a {model_name} checkpoint?")
        if target_path not in excluded:
            target.set_weights(origin.get_weights())
            loaded += 1
    for target_path, target in targets:
        origin = source.head.get(target_path)
        if "/" in target_path or origin is None or target_path in excluded:
            continue
        if _describe(target) != _describe(origin):
            raise ValueError(f"--checkpoint_path={source.description}: {target_path} has "
                             f"{_describe(origin)}, the model {_describe(target)} (another "
                             f"number of classes?); add {target_path} to "
                             "--checkpoint_exclude_scopes")
        target.set_weights(origin.get_weights())
        loaded += 1
    return loaded, len(targets) - loaded
