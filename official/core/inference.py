"""One way to run a trained model on encoded images, from a model_dir or a SavedModel.

Evaluation and prediction both feed *encoded* JPEG/PNG bytes (DICOM is rendered
to PNG first) through the export's serving function. A model_dir checkpoint is
wrapped in the very ServingModule that export writes, and a SavedModel is called
through its ``serving_default`` signature, so what is evaluated is exactly what
is served: the same decoding and the same ``preprocess_for_eval``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

from official.core import export
from official.core.config import CONFIG_FILE


def resolve_saved_model(path: str) -> str | None:
    """The SavedModel folder at ``path``: itself, or its newest numbered version.

    Returns None when ``path`` holds no SavedModel (e.g. it is a training model_dir).
    """
    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        return path
    if not os.path.isdir(path):
        return None
    versions = [name for name in os.listdir(path)
                if name.isdigit() and os.path.isfile(os.path.join(path, name, "saved_model.pb"))]
    return os.path.join(path, max(versions, key=int)) if versions else None


class Predictor:
    """Maps a batch of encoded images to class probabilities.

    Attributes:
      config: the training run's resolved config (class_names, image_size, ...).
      source: the checkpoint or SavedModel folder the weights came from.
    """

    def __init__(self, model_path: str, checkpoint: str | None = None):
        saved_model = resolve_saved_model(model_path)
        if saved_model is not None:
            if checkpoint:
                raise ValueError(f"--checkpoint applies to a training model_dir, but {model_path} "
                                 "is a SavedModel")
            config_path = os.path.join(saved_model, export.ASSETS_EXTRA, CONFIG_FILE)
            with open(config_path) as handle:
                self.config = json.load(handle)
            loaded = tf.saved_model.load(saved_model)
            self._serve = loaded.signatures["serving_default"]
            self._keepalive = loaded  # the signature needs its object alive
            self.source = saved_model
        elif os.path.isfile(os.path.join(model_path, CONFIG_FILE)):
            model, self.config = export.load_model_from_dir(model_path, checkpoint)
            module = export.ServingModule(model, self.config)
            self._serve = module.serving_default
            self._keepalive = module
            self.source = checkpoint or tf.train.latest_checkpoint(model_path)
        else:
            raise FileNotFoundError(f"{model_path}: neither a SavedModel (saved_model.pb) nor a "
                                    f"training model_dir ({CONFIG_FILE})")
        self.class_names = list(self.config["class_names"])

    def __call__(self, encoded_images) -> np.ndarray:
        """float32 [N, num_classes] probabilities for N encoded JPEG/PNG images."""
        images = tf.convert_to_tensor(encoded_images, dtype=tf.string)
        return self._serve(image_bytes=images)["probabilities"].numpy()
