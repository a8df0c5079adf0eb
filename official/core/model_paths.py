"""What a --model path names, and whether several models can form one ensemble, decided from
their files alone (saved_model.pb, config.json, the checkpoint list; for an older model's DICOM
rendering, its training data's manifest): no TensorFlow here, so the programs refuse a wrong
model before TensorFlow's import. official/core/inference.py and export.py, which load the
models, raise the same errors through these functions.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

from absl import logging

from dataset import converted
from dataset.dicom_options import describe_rendering, rendering_of
from dataset.sources import clean_label
from official.core.config import CONFIG_FILE, read_config

ASSETS_EXTRA = "assets.extra"  # where the SavedModel keeps config.json
# The newest checkpoint in a model_dir's `checkpoint` file (a text protobuf), when its name
# needs no unescaping.
_LATEST_CHECKPOINT = re.compile(r'^model_checkpoint_path:\s*"([^"\\]*)"\s*$', re.MULTILINE)


def newest_version(export_dir: str) -> str | None:
    """The newest numbered SavedModel in ``export_dir`` (what TF Serving serves), or None."""
    if not os.path.isdir(export_dir):
        return None
    versions = [name for name in os.listdir(export_dir) if name.isdigit()
                and os.path.isfile(os.path.join(export_dir, name, "saved_model.pb"))]
    return os.path.join(export_dir, max(versions, key=int)) if versions else None


def resolve_saved_model(path: str) -> str | None:
    """The SavedModel folder at ``path``: itself, or its newest numbered version.

    Returns None when ``path`` holds no SavedModel, or is a training model_dir (its
    config.json), even one holding exports: its newest checkpoint is the model, not an export
    made at some earlier step (an older run's --export_dir equal to its --model_dir).
    """
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    if os.path.isfile(os.path.join(path, CONFIG_FILE)):
        return None
    return newest_version(path)


def saved_model_config(saved_model: str, model_path: str, checkpoint: str | None,
                       tta_views: int) -> dict:
    """The training config a SavedModel carries, once it is sure the SavedModel can be used
    as asked (no --checkpoint, no views on top of views built in).

    Raises:
      ValueError: naming the SavedModel and the problem.
    """
    if checkpoint:
        raise ValueError(f"--checkpoint applies to a training model_dir, but {model_path} "
                         "is a SavedModel")
    config_path = os.path.join(saved_model, ASSETS_EXTRA, CONFIG_FILE)
    try:
        with open(config_path) as handle:
            config = json.load(handle)
    except (OSError, ValueError) as error:  # not exported by this tool, or damaged
        raise ValueError(f"{config_path}: cannot read the export's class names and "
                         f"settings ({error})") from None
    baked = int(config.get("tta_views", 1))  # absent in older exports
    if baked > 1 and tta_views > 1:
        raise ValueError(f"{saved_model} was exported with {baked} test-time views "
                         f"built in; asking for {tta_views} more would augment twice "
                         "(use --tta=1: the export averages its views itself)")
    return config


def neither_model_error(model_path: str) -> FileNotFoundError:
    return FileNotFoundError(f"{model_path}: neither a SavedModel (saved_model.pb) nor a "
                             f"training model_dir ({CONFIG_FILE})")


def checkpoint_step(checkpoint: str) -> int:
    """The step of a checkpoint's path (``model_dir/ckpt-N``, as tf.train.CheckpointManager
    names them)."""
    return int(checkpoint.rsplit("-", 1)[1])


def latest_checkpoint(model_dir: str) -> str | None:
    """model_dir's newest checkpoint prefix, as tf.train.latest_checkpoint names it, read
    from its `checkpoint` file; None when there is none, or when the file says it in a way
    only TensorFlow reads (an escaped name, an old checkpoint format): TensorFlow decides."""
    try:
        with open(os.path.join(model_dir, "checkpoint"), encoding="utf-8") as handle:
            found = _LATEST_CHECKPOINT.search(handle.read())
    except (OSError, UnicodeDecodeError):
        return None
    if not found:
        return None
    path = found.group(1)
    if not os.path.isabs(path):
        path = os.path.join(model_dir, path)
    return path if os.path.isfile(path + ".index") else None


def describe_class_difference(first: list[str], second: list[str], first_name: str,
                              second_name: str) -> str:
    """One line saying how two models' class name lists differ."""
    only_first = [name for name in first if name not in second]
    only_second = [name for name in second if name not in first]
    if only_first or only_second:
        # Only the sides that have some: "only in b: []" read as if b were missing a list.
        return "; ".join(f"classes only in {name}: {only}" for name, only in
                         ((first_name, only_first), (second_name, only_second)) if only)
    if len(first) != len(second):
        return f"{len(first)} class names vs {len(second)} (a repeated name)"
    position = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
    return (f"same classes in a different order: class {position} is {first[position]!r} "
            f"in {first_name} but {second[position]!r} in {second_name}")


def training_rendering(config: dict) -> tuple[dict | None, str | None]:
    """How the training data of the model with ``config`` (a model_dir's config.json or an
    export's) rendered DICOM files, as recorded: (the rendering, None), the rendering None for
    a conversion from before it was recorded (the defaults); or (None, why it is unknown).

    config.json records it since 2026-12-05. For a model trained before, it is read where the
    trainer read it, from its training data's manifest (converted.dicom_rendering) through the
    config's data_dir while that is there; an older config's data_dir was recorded as typed,
    so a relative one is read from the working directory (as evaluation's default folder is).
    A conversion there of other classes than the model's (its class names are its training
    manifest's) is not its training data: converted again since, or another working
    directory's folder of that name.
    """
    if "dicom_rendering" in config:
        return config["dicom_rendering"], None
    data_dir = config.get("data_dir")
    if not data_dir:
        return None, f"its {CONFIG_FILE} names no data_dir"
    try:
        manifest = converted.read_manifest(data_dir)
    except (OSError, ValueError) as error:  # the folder is gone, or is no longer a conversion
        return None, str(error)
    classes, rendering = manifest["classes"], converted.manifest_rendering(manifest)
    model_classes = config.get("class_names")
    if model_classes is not None and ([clean_label(name) for name in classes]
                                      != [clean_label(name) for name in model_classes]):
        return None, (f"{data_dir} holds another conversion now: classes {classes}, not the "
                      f"model's {model_classes}")
    return rendering, None


# The models model_rendering has said it renders with the defaults: once each.
_DEFAULTS_SAID: set[str] = set()


def model_rendering(config: dict, model: str | None = None) -> dict:
    """The DICOM rendering that feeds the model with ``config``, every field given
    (rendering_of): training_rendering's, or the defaults when that is unknown (what every
    model from before the rendering was recorded was fed).

    Args:
      model: how the warning that the defaults stand in names the model (absl, once per
        model and program); None for no warning (a check of models that are loaded, and
        warned of, after it).
    """
    recorded, unknown = training_rendering(config)
    if unknown is not None and model is not None and model not in _DEFAULTS_SAID:
        _DEFAULTS_SAID.add(model)
        logging.warning("%s: its %s does not record how its training DICOMs were rendered "
                        "(trained before 2026-12-05), nor can its training data say (%s): "
                        "DICOM files are rendered with the defaults (%s)", model, CONFIG_FILE,
                        unknown, describe_rendering(rendering_of(None)))
    return rendering_of(recorded)


def check_same_rendering(members: list[tuple[str, dict]]) -> None:
    """Members of one ensemble (source, config) must have been trained on DICOMs rendered
    alike (model_rendering): one rendering of a new DICOM file feeds them all
    (dicom_predict.py).

    Raises:
      ValueError: naming two members and their renderings.
    """
    (first, first_config), *others = members
    first_rendering = model_rendering(first_config)
    for source, config in others:
        rendering = model_rendering(config)
        if rendering != first_rendering:
            raise ValueError(
                f"cannot ensemble {first} and {source}: their training DICOMs were rendered "
                f"differently ({describe_rendering(first_rendering)} vs "
                f"{describe_rendering(rendering)}); use one model at a time")


def check_ensemble(members: list[tuple[str, dict]], same: tuple[str, ...] = ()) -> None:
    """Members of one ensemble (source, config): the same class names in the same order, the
    same values of the config keys ``same`` (an export's one input: image_size, channels),
    DICOMs rendered alike (check_same_rendering).

    Raises:
      ValueError: no members, or naming the first two that differ and how.
    """
    if not members:
        raise ValueError("an ensemble needs at least one model")
    first_source, first = members[0]
    for source, other in members[1:]:
        if (list(map(clean_label, other["class_names"]))
                != list(map(clean_label, first["class_names"]))):
            difference = describe_class_difference(list(first["class_names"]),
                                                   list(other["class_names"]),
                                                   first_source, source)
            raise ValueError(f"cannot ensemble {first_source} and {source}: {difference}")
        for key in same:
            if other[key] != first[key]:
                raise ValueError(f"cannot ensemble {first_source} and {source}: {key} "
                                 f"{first[key]!r} vs {other[key]!r}")
    check_same_rendering(members)


def check_distinct(model_paths: list[str]) -> None:
    """An ensemble names each model once: a repeat averages it with itself (a typo, most
    likely, for another run), weighing it double.

    Raises:
      ValueError: naming the repeated model.
    """
    seen = {}
    for path in model_paths:
        # An export folder and its newest version are one model.
        real = os.path.realpath(resolve_saved_model(path) or path)
        if real in seen:
            raise ValueError(f"{path} is named twice in the ensemble (as {seen[real]}): each "
                             "model once")
        seen[real] = path


def check_models(model_paths: list[str], checkpoint: str | None = None,
                 tta_views: int = 1) -> list[str] | None:
    """What inference.load_predictor would refuse before loading any weights: no model, a
    model named twice, --checkpoint with several, a path that is no model, a SavedModel
    asked for a checkpoint or for views on top of its own, and members that cannot form one
    ensemble (their classes or DICOM rendering).

    Returns:
      The models' class names (for check_data_classes), or None when their configs do not
      agree on them or do not say (whether they can form one ensemble is then TensorFlow's
      to decide, and its error comes first).

    Raises:
      ValueError, FileNotFoundError: as load_predictor, with the same messages.
    """
    if not model_paths:
        raise ValueError("no model given")
    check_distinct(model_paths)
    if len(model_paths) > 1 and checkpoint:
        raise ValueError("--checkpoint picks one model_dir's checkpoint; it cannot be used "
                         f"with {len(model_paths)} models")
    members = []
    for path in model_paths:
        saved_model = resolve_saved_model(path)
        if saved_model is not None:
            members.append((saved_model, saved_model_config(saved_model, path, checkpoint,
                                                            tta_views)))
        elif os.path.isfile(os.path.join(path, CONFIG_FILE)):
            # A member is named by its checkpoint (Predictor.source).
            members.append((latest_checkpoint(path), read_config(path)))
        else:
            raise neither_model_error(path)
    if len(members) > 1 and all(source is not None for source, _ in members):
        check_ensemble(members)
    names = [config.get("class_names") for _, config in members]
    if not isinstance(names[0], list) or any(other != names[0] for other in names[1:]):
        return None
    return names[0]


def check_data_classes(data_dir: str, data_classes, model_classes: list[str]
                       ) -> dict[str, int]:
    """Every class of the data is one of the model's (a model scores only the classes it
    knows; some of them missing from the data is fine). dicom_eval.py checks it before
    TensorFlow's import, official/core/evaluation.py label_map for every evaluation.

    Returns:
      The model's class_index, which has every class of the data (label_map maps with it).

    Raises:
      ValueError: naming the data, its classes the model lacks and the model's classes.
    """
    index = class_index(model_classes)
    unknown = [name for name in data_classes if clean_label(name) not in index]
    if unknown:
        # A name that prints like one of the model's (another letter of the same look) is
        # told apart by its code points.
        points = (f" (as code points: {ascii(unknown)})"
                  if any(not name.isascii() for name in unknown) else "")
        raise ValueError(f"{data_dir}: classes {unknown} are not among the model's "
                         f"{model_classes}{points}")
    return index


def class_index(model_classes: list[str]) -> dict[str, int]:
    """The model's class index by name as sources.clean_label writes it: a model trained
    before class names were written in NFC (2026-12-05) may spell "Å" as "A" + a combining
    ring, which data converted since spells as one letter; both are the one class.

    Raises:
      ValueError: two of the model's classes are one name in two spellings.
    """
    index = {}
    for position, name in enumerate(model_classes):
        if index.setdefault(clean_label(name), position) != position:
            raise ValueError(f"the model's classes {ascii(model_classes)} spell one name "
                             f"twice ({name!r}); its data cannot be told apart by name")
    return index


def weights_digest(source: str) -> str:
    """16 hex digits naming the weights of ``source``, a checkpoint prefix or a SavedModel
    folder (Predictor.source): a digest of its variables' index, which holds every tensor's
    CRC32C, and of a SavedModel's graph. A model_dir trained again from scratch reuses its
    checkpoints' names and a folder exported again keeps its path, so a path alone does not
    say whose rows a prediction CSV holds (--resume compares this).

    Raises:
      OSError: the files cannot be read (e.g. a checkpoint the trainer has since rotated away).
    """
    if os.path.isfile(os.path.join(source, "saved_model.pb")):
        parts = [os.path.join(source, "saved_model.pb")]
        index = os.path.join(source, "variables", "variables.index")
        parts += [index] if os.path.exists(index) else []  # a graph without variables has none
    else:
        parts = [source + ".index"]
    digest = hashlib.sha256()
    for part in parts:
        with open(part, "rb") as handle:
            digest.update(hashlib.sha256(handle.read()).digest())
    return digest.hexdigest()[:16]


def member_records(predictor) -> list[dict]:
    """What a report records of the models behind an inference.Predictor or Ensemble: each
    member's source, weights (weights_digest) and views."""
    return [{"model": member.source, "weights": member.weights, "tta_views": member.tta_views}
            for member in predictor.members]
