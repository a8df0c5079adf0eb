"""Evaluate a trained model on a split of a converted dataset, and where its report goes.

The library part of networks/resnet/dicom_eval.py and networks/slim/eval_image_classifier.py:
run a Predictor (official/core/inference.py) over every record of a split, then write the
report (official/utils/report.py) and its TensorBoard copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import re

import numpy as np
import tensorflow as tf

from dataset import converted, features
from dataset.images import ImageError
from dataset.sources import clean_label
from official.core.config import CONFIG_FILE
from official.core.model_paths import check_data_classes, checkpoint_step, class_index
from official.utils import files
from official.utils import progress as reporting
from official.utils.decoder_noise import DecoderNoise
from official.utils.report import summary_scalars


def default_output_dir(model: str, predictor_source: str, split: str, tta_views: int = 1, *,
                       checkpoint_named: bool = False, data_dir: str | None = None,
                       trained_on: str | None = None) -> str:
    """<model_dir>/eval_<split> for a model_dir; a sibling of the version for a SavedModel.

    Data other than the model's own (``data_dir`` not ``trained_on``, the config's data_dir)
    adds "-<its folder's name>", test-time views "-tta<N>", and a checkpoint the user named
    (--checkpoint) "-ckpt-N", so none of them overwrites the plain report (the newest
    checkpoint's, on the data it was trained on): an external test set's "test" split is not
    the training data's.
    """
    # (An older config.json's relative data_dir is read from here: at worst a report gets the
    # data's name in its folder when it did not need it.)
    data = "" if data_dir is None or files.same_path(data_dir, trained_on) else (
        "-" + re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(os.path.realpath(data_dir))))
    suffix = f"-tta{tta_views}" if tta_views > 1 else ""
    if os.path.isfile(os.path.join(model, CONFIG_FILE)):
        named = f"-{os.path.basename(predictor_source)}" if checkpoint_named else ""
        return os.path.join(model, f"eval_{split}{data}{named}{suffix}")
    version_dir = predictor_source.rstrip("/")
    return os.path.join(os.path.dirname(version_dir),
                        f"eval-{os.path.basename(version_dir)}-{split}{data}{suffix}")


def default_report_folder(model: str, predictor, split: str, data_dir: str, *,
                          checkpoint_named: bool) -> str:
    """default_output_dir for ``predictor`` (loaded from ``model``) on ``data_dir``, checked
    (check_default_folder_is_of) before minutes of evaluation go into a report it refuses."""
    output_dir = default_output_dir(model, predictor.source, split, predictor.tta_views,
                                    checkpoint_named=checkpoint_named, data_dir=data_dir,
                                    trained_on=predictor.config.get("data_dir"))
    check_default_folder_is_of(output_dir, data_dir)
    return output_dir


def check_default_folder_is_of(output_dir: str, data_dir: str) -> None:
    """Refuses a default report folder that holds the report of other data (two external
    sets in folders of the same name): the new report would replace it unasked.

    Raises:
      ValueError: naming the folder, the data its report is of, and the way out.
    """
    try:
        with open(os.path.join(output_dir, "metrics.json")) as handle:
            recorded = json.load(handle).get("data_dir")
    except (OSError, ValueError, AttributeError):  # none yet, or not a report of ours
        return
    if recorded and not files.same_path(data_dir, recorded):
        raise ValueError(f"{output_dir} holds the report on {recorded}, not on {data_dir}; "
                         "name another folder with --output_dir (or remove that one)")


def source_dir(data_dir: str) -> str | None:
    """The folder the records were converted from (its --dataset_dir, in the manifest): the
    report's misclassified.csv names files relative to it. None when not recorded, or
    recorded relative to a working directory now unknown (conversions before it was made
    absolute)."""
    recorded = converted.read_manifest(data_dir).get("flags", {}).get("dataset_dir")
    return recorded if recorded and os.path.isabs(recorded) else None


def report_step(predictor) -> int:
    """The TensorBoard step of a report: the step of a ckpt-N source, or the step a SavedModel
    was exported at (its config's "exported_step"; 0 when not recorded). A SavedModel's report
    was drawn at step 0 whatever step it held."""
    if "ckpt-" in predictor.source:
        return checkpoint_step(predictor.source)
    return int(predictor.config.get("exported_step") or 0)


def evaluate_split(predictor, info: converted.SplitInfo, *, batch_size: int,
                   noise: DecoderNoise | None = None):
    """Runs ``predictor`` over every record of a split. ``info``: converted.split_info's, taken
    before the model is loaded, so that a misspelt split or a missing shard is an error in
    seconds rather than after the model's restore. ``noise``, entered by the program, keeps
    the decoder's lines about an image it refuses off stderr: the error names the record.

    The split may hold only some of the model's classes (an external test set with some
    body parts; see data_classes): its labels are then given as the model's class indices.

    Returns:
      (labels int [N] in the model's class order, probabilities float [N, C], filenames
      list[str]).

    Raises:
      ValueError: the split has a class the model does not know.
    """
    to_model = label_map(list(info.class_names), predictor.class_names, info.data_dir)
    noise = noise or DecoderNoise()  # not entered: stderr as it is
    spec = {key: features.feature_spec()[key]
            for key in (features.KEY_ENCODED, features.KEY_LABEL, features.KEY_FILENAME)}
    # Sequential read keeps the report's row order stable across runs.
    records = (tf.data.TFRecordDataset(list(info.files)).batch(batch_size)
               .map(lambda batch: tf.io.parse_example(batch, spec)).prefetch(2))
    labels, probabilities, filenames = [], [], []
    with reporting.progress(info.num_examples, unit="images",
                            desc=f"evaluating {info.split}") as progress:
        try:
            for batch in records:
                try:
                    with noise.dropped_if(ImageError):
                        probabilities.append(predictor(batch[features.KEY_ENCODED]))
                except ImageError as error:
                    raise ValueError(_undecodable(predictor, batch, info, error, noise)
                                     ) from None
                labels.append(batch[features.KEY_LABEL].numpy())
                filenames.extend(name.decode() for name in batch[features.KEY_FILENAME].numpy())
                progress.update(len(labels[-1]))
        except tf.errors.DataLossError as error:
            described = converted.describe_data_loss(info.data_dir, error)
            if described is None:
                raise
            raise ValueError(described) from None
    return to_model[np.concatenate(labels)], np.concatenate(probabilities), filenames


def _undecodable(predictor, batch, info: converted.SplitInfo, error: ImageError,
                 noise: DecoderNoise) -> str:
    """Which record of a batch holds the image the predictor's decoder refused (one the
    converter's checks passed: Pillow decodes past some damage), tried an image at a time."""
    for name, image in zip(batch[features.KEY_FILENAME].numpy(), batch[features.KEY_ENCODED]):
        try:
            with noise.dropped_if(ImageError):
                predictor(image[tf.newaxis])
        except ImageError:
            return (f"{info.data_dir}: split {info.split}'s record of {name.decode()}: {error}; "
                    "convert the data again without that file")
    return f"{info.data_dir}: split {info.split}: {error}"


def label_map(data_classes: list[str], model_classes: list[str], data_dir: str) -> np.ndarray:
    """The model's class index of each of the data's, by name.

    Raises:
      ValueError: a class of the data that the model lacks (it cannot be scored).
    """
    index = check_data_classes(data_dir, data_classes, model_classes)
    return np.array([index[clean_label(name)] for name in data_classes], np.int64)


def data_classes(info: converted.SplitInfo, model_classes: list[str]) -> list[str] | None:
    """The split's classes when they are only some of the model's (for the report's macro
    averages, write_report's data_classes), in the model's spelling, else None."""
    index = class_index(model_classes)
    names = [model_classes[index[clean_label(name)]] for name in info.class_names
             if clean_label(name) in index]
    return names if set(names) != set(model_classes) else None


def write_tensorboard(output_dir: str, metrics: dict, step: int) -> None:
    """The report's scalars and its confusion-matrix picture as a TensorBoard event file.

    The file's name ends in ".step-<step>", and an earlier one of the same step (a rerun of
    the same evaluation) is removed once the new one is written: TensorBoard showed every
    rerun as another point at that step. Other steps' files stay (a model_dir's newest
    checkpoint evaluated as training goes on: a curve).
    """
    with open(os.path.join(output_dir, "confusion_matrix.png"), "rb") as handle:
        png = handle.read()
    suffix = f".step-{step}"
    earlier = [name for name in os.listdir(output_dir)
               if name.startswith("events.out.tfevents.") and name.endswith(suffix)]
    writer = tf.summary.create_file_writer(output_dir, filename_suffix=suffix)
    with writer.as_default():
        for name, value in summary_scalars(metrics).items():
            tf.summary.scalar(name, value, step=step)
        tf.summary.image("confusion_matrix", tf.io.decode_png(png)[tf.newaxis], step=step)
    writer.close()
    for name in earlier:
        with contextlib.suppress(OSError):
            os.remove(os.path.join(output_dir, name))
