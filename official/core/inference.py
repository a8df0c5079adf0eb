"""One way to run a trained model on encoded images, from a model_dir or a SavedModel.

Evaluation and prediction both feed *encoded* JPEG/PNG bytes (DICOM is rendered
to PNG first) through the export's serving function. A model_dir checkpoint is
wrapped in the very ServingModule that export writes, and a SavedModel is called
through its ``serving_default`` signature, so what is evaluated is exactly what
is served: the same decoding and the same ``preprocess_for_eval``.

Two optional refinements, both averaging probabilities: test-time views of each image
(``tta_views``, dataset/test_time.py) and an ``Ensemble`` of several models.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from dataset import test_time
from dataset.converted import tf_error_reason
from dataset.images import ImageError
from official.core import export, model_paths, restore
from official.core.config import CONFIG_FILE
from official.core.model_paths import resolve_saved_model


class Predictor:
    """Maps a batch of encoded images to class probabilities.

    With tta_views > 1 the probabilities are averaged over that many test-time views
    (dataset/test_time.py). A model_dir gets them through ServingModule; a SavedModel exported
    without them gets them on this side: the bytes are decoded and resized as the export does,
    and its `predict_images` signature is called once per view, which gives the same numbers as
    an export with the views baked in.

    Attributes:
      config: the training run's resolved config (class_names, image_size, ...).
      source: the checkpoint or SavedModel folder the weights came from.
      weights: model_paths.weights_digest of source, read before the weights.
      tta_views: the number of views actually averaged (a SavedModel's baked-in count when
        it has one).
    """

    @property
    def members(self) -> list[Predictor]:
        """[self]: a single model is an ensemble of one (see Ensemble.members)."""
        return [self]

    def __init__(self, model_path: str, checkpoint: str | None = None, tta_views: int = 1):
        test_time.check_num_views(tta_views)
        saved_model = resolve_saved_model(model_path)
        if saved_model is not None:
            self.config = model_paths.saved_model_config(saved_model, model_path, checkpoint,
                                                         tta_views)
            baked = int(self.config.get("tta_views", 1))  # absent in older exports
            self.weights = model_paths.weights_digest(saved_model)
            try:
                loaded = tf.saved_model.load(saved_model)
            except (tf.errors.OpError, OSError, ValueError) as error:  # e.g. variables/ lost
                raise ValueError(f"{saved_model}: not a loadable SavedModel "
                                 f"({restore.first_line(error)}); export it again") from None
            self._keepalive = loaded  # the signatures need their object alive
            if tta_views > 1:
                self._predict_images = loaded.signatures["predict_images"]
                self._views = tf.function(self._views, input_signature=[
                    tf.TensorSpec([None], tf.string)])  # one graph, not eager per-image ops
                self._serve = self._serve_views
            else:
                self._serve = loaded.signatures["serving_default"]
            self.tta_views = max(baked, tta_views)
            self.source = saved_model
        elif os.path.isfile(os.path.join(model_path, CONFIG_FILE)):
            checkpoint = restore.resolve_checkpoint(model_path, checkpoint)
            self.weights = model_paths.weights_digest(checkpoint)
            model, self.config = restore.load_model_from_dir(model_path, checkpoint)
            module = export.ServingModule(model, self.config, tta_views)
            self._serve = module.serving_default
            self._keepalive = module
            self.tta_views = tta_views
            self.source = checkpoint
        else:
            raise model_paths.neither_model_error(model_path)
        self.class_names = list(self.config["class_names"])
        # How the training data's DICOMs were rendered (for a model from before it was
        # recorded, its training data's record, else the defaults).
        self.dicom_rendering = model_paths.model_rendering(self.config, model_path)

    def _views(self, image_bytes):
        resized = export.decode_and_resize(image_bytes, image_size=int(self.config["image_size"]),
                                           channels=int(self.config["channels"]))
        return test_time.test_time_views(resized, self.tta_views)

    def _serve_views(self, image_bytes):
        views = self._views(image_bytes)
        count = int(tf.shape(image_bytes)[0])
        # One call per view keeps the batch the caller chose (memory), as TF Serving would see it.
        probabilities = [
            self._predict_images(images=views[view * count:(view + 1) * count])["probabilities"]
            for view in range(self.tta_views)]
        return {"probabilities": tf.reduce_mean(tf.stack(probabilities), axis=0)}

    def __call__(self, encoded_images) -> np.ndarray:
        """float32 [N, num_classes] probabilities for N encoded JPEG/PNG images.

        Raises:
          ImageError: an image TensorFlow's decoder refuses, which the checks before it let
            through (Pillow decodes past some damage), e.g. a marker inside JPEG data.
        """
        images = tf.convert_to_tensor(encoded_images, dtype=tf.string)
        try:
            return self._serve(image_bytes=images)["probabilities"].numpy()
        except tf.errors.InvalidArgumentError as error:
            raise ImageError(f"TensorFlow cannot decode it ({tf_error_reason(error)})") from None


class Ensemble:
    """Several Predictors with the same classes; their probabilities are averaged.

    Each member decodes and preprocesses the bytes itself, so members may differ in network,
    image_size and test-time views.

    Attributes:
      members: the Predictors, in the order given.
      class_names: the members' (identical) class names.
      source: the members' sources, comma-separated.
      tta_views: the members' view counts, e.g. [1, 5].

    Raises:
      ValueError: no members, or two members whose class names or their order differ.
    """

    def __init__(self, members: list[Predictor]):
        if not members:
            raise ValueError("an ensemble needs at least one model")
        model_paths.check_ensemble([(member.source, member.config) for member in members])
        self.members = list(members)
        self.class_names = list(members[0].class_names)
        self.source = ",".join(member.source for member in members)
        self.tta_views = [member.tta_views for member in members]
        self.dicom_rendering = members[0].dicom_rendering

    def __call__(self, encoded_images) -> np.ndarray:
        """float32 [N, num_classes]: the mean of the members' probabilities."""
        return np.mean([member(encoded_images) for member in self.members], axis=0)


def load_predictor(paths: list[str], checkpoint: str | None = None,
                   tta_views: int = 1) -> Predictor | Ensemble:
    """A Predictor for one model path, an Ensemble of Predictors for several.

    Raises:
      ValueError: a --checkpoint with several models, or members whose classes differ
        (and whatever Predictor raises).
    """
    model_paths.check_models(paths, checkpoint, tta_views)
    if len(paths) == 1:
        return Predictor(paths[0], checkpoint, tta_views)
    return Ensemble([Predictor(path, None, tta_views) for path in paths])
