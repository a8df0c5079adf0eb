"""Slim's evaluation of a train_dir, a checkpoint or a SavedModel: the library part of
eval_image_classifier.py, through official/core/evaluation.py's serving path and report."""

from __future__ import annotations

import os

import tensorflow as tf

from dataset import converted
from networks import registry
from networks.slim import choices
from official.core import evaluation
from official.core.inference import Predictor
from official.utils.report import write_report


def evaluate(checkpoint_path: str, dataset_dir: str, split: str, *, batch_size: int,
             model_name: str | None = None, eval_dir: str | None = None) -> tuple[dict, str]:
    """Evaluate and write the report; returns (metrics, report folder).

    Raises:
      ValueError: --model_name differs from the trained network, or classes differ.
      FileNotFoundError: no model at checkpoint_path.
    """
    split_info = converted.split_info(dataset_dir, split)  # before the model's restore
    model_path, checkpoint = checkpoint_path, None
    if tf.io.gfile.exists(checkpoint_path + ".index"):  # a ckpt-N prefix
        model_path, checkpoint = os.path.dirname(checkpoint_path), checkpoint_path
    predictor = Predictor(model_path, checkpoint)
    trained = registry.spec_from_config(predictor.config).architecture
    # eval_image_classifier.py has checked it before TensorFlow; again for other callers.
    choices.check_model_name(model_name, checkpoint_path, predictor.config)
    output_dir = eval_dir or evaluation.default_report_folder(
        model_path, predictor, split, dataset_dir, checkpoint_named=checkpoint is not None)
    labels, probabilities, filenames = evaluation.evaluate_split(
        predictor, split_info, batch_size=batch_size)
    metrics = write_report(
        output_dir, labels=labels, probabilities=probabilities,
        class_names=predictor.class_names, filenames=filenames,
        title=f"{trained}, {split} split, {os.path.basename(predictor.source)}",
        data_classes=evaluation.data_classes(split_info, predictor.class_names),
        extra={"split": split, "data_dir": os.path.abspath(dataset_dir),
               "source_dir": evaluation.source_dir(dataset_dir),
               "model": predictor.source, "architecture": trained})
    evaluation.write_tensorboard(output_dir, metrics, evaluation.report_step(predictor))
    return metrics, output_dir
