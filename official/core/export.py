"""SavedModel export (the model rebuilt from a model_dir: official/core/restore.py).

The SavedModel goes into `export_dir/<version>/` (version = Unix time in seconds, bumped if taken)
as TF Serving and the Estimator's export expect, with two signatures that both apply the
evaluation preprocessing (dataset.preprocess.preprocess_for_eval):

  serving_default  image_bytes: string [N] (encoded JPEG/PNG; BMP/GIF only with 3 channels:
                   TensorFlow refuses to decode them to 1)
  predict_images   images: float32 [N, H, W, channels], pixel values 0..255 (as decoded uint8)
  -> class_ids int32 [N], class_names string [N], probabilities float32 [N, num_classes]

With tta_views > 1 (test-time augmentation) both signatures average the probabilities over
that many fixed views of each image (dataset/test_time.py); never a mirror image. Given several
models (an ensemble: same image size, channels and classes), they average the members'
probabilities.

The resolved training config is copied to `<version>/assets.extra/config.json`, with
`tta_views` (and the training flag `export_tta`) set to the views the signatures average.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
import socket
import time

import keras
import tensorflow as tf
from absl import logging as absl_logging

from dataset import preprocess, test_time
from official.core import model_paths, restore
from official.core.config import CONFIG_FILE
from official.core.model_paths import ASSETS_EXTRA, newest_version
from official.utils import files


def decode_and_resize(image_bytes: tf.Tensor, *, image_size: int, channels: int) -> tf.Tensor:
    """Encoded images [N] -> float32 [N, image_size, image_size, channels] on the 0-255 scale:
    preprocess_for_eval's first half, where the test-time views apply (before `normalize`)."""
    spec = tf.TensorSpec([image_size, image_size, channels], tf.float32)
    return tf.map_fn(
        lambda data: preprocess.resize_square(tf.io.decode_image(
            data, channels=channels, dtype=tf.uint8, expand_animations=False), image_size),
        image_bytes, fn_output_signature=spec)


def to_pixels(images: tf.Tensor) -> tf.Tensor:
    """Float images on the 0-255 scale -> the uint8 a decoder would give."""
    return tf.cast(tf.round(tf.clip_by_value(images, 0.0, 255.0)), tf.uint8)


class ServingModule(tf.Module):
    """Model(s) + class names + preprocessing, with the two serving signatures.

    Several models are an ensemble: the softmax probabilities of each are averaged (they share
    the preprocessing, so they must share image_size and channels; the caller checks that).

    With tta_views > 1 both signatures return the mean of the softmax probabilities over the
    first tta_views views of dataset.test_time.TTA_VIEWS. Each view is made from the image
    resized to image_size, rounded to uint8 and then preprocessed exactly as an image sent to
    `predict_images` would be: so a client that builds the views itself and calls a no-TTA
    export's `predict_images` per view gets the same numbers (inference.Predictor does).
    """

    def __init__(self, model: keras.Model | list[keras.Model], config: dict,
                 tta_views: int = 1):
        super().__init__()
        models = list(model) if isinstance(model, (list, tuple)) else [model]
        # The Keras model is held outside TF's object tracking (a closure, not an attribute):
        # saving it as an object would walk and serialise every layer (for Inception-ResNet-v2
        # ~60,000 trackable children, more than half of the export time), and nothing reads
        # it back; the signatures are the interface. Its variables are tracked instead: Keras 3
        # variables wrap a tf.Variable, and tracking the raw ones is what lets the TF1-style
        # loaders (TF Serving, saved_model_cli) find them (keras-team/keras#19274, #20095).
        self._call_models = [lambda images, member=member: member(images, training=False)
                             for member in models]
        self.serving_variables = [variable.value for member in models
                                  for variable in member.variables]
        self.image_size = int(config["image_size"])
        self.channels = int(config["channels"])
        self.tta_views = test_time.check_num_views(tta_views)
        self.class_names = tf.constant(list(config["class_names"]))
        image_spec = tf.TensorSpec([None, None, None, self.channels], tf.float32, name="images")
        # One traced forward pass that both signatures call (tracing a large network twice
        # was a third of the export time).
        self._probabilities = tf.function(self._probabilities, input_signature=[tf.TensorSpec(
            [None, self.image_size, self.image_size, self.channels], tf.float32)])
        self.serving_default = tf.function(
            self._serve_bytes,
            input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        self.predict_images = tf.function(self._serve_images, input_signature=[image_spec])

    def _preprocess(self, image_uint8):
        return preprocess.preprocess_for_eval(image_uint8, image_size=self.image_size)

    def _preprocess_each(self, pixels):
        spec = tf.TensorSpec([self.image_size, self.image_size, self.channels], tf.float32)
        return tf.map_fn(self._preprocess, pixels, fn_output_signature=spec)

    def _probabilities(self, images):
        return tf.add_n([tf.nn.softmax(call(images), axis=-1) for call in self._call_models]
                        ) / len(self._call_models)

    def _mean_over_views(self, resized):
        # All views in one batch: one forward pass instead of tta_views smaller ones.
        views = test_time.test_time_views(resized, self.tta_views)
        probabilities = self._probabilities(self._preprocess_each(to_pixels(views)))
        per_view = tf.reshape(probabilities, [self.tta_views, -1, tf.shape(probabilities)[-1]])
        return tf.reduce_mean(per_view, axis=0)

    def _outputs(self, probabilities):
        class_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {"class_ids": class_ids, "class_names": tf.gather(self.class_names, class_ids),
                "probabilities": probabilities}

    def _serve_bytes(self, image_bytes):
        if self.tta_views > 1:
            return self._outputs(self._mean_over_views(decode_and_resize(
                image_bytes, image_size=self.image_size, channels=self.channels)))
        spec = tf.TensorSpec([self.image_size, self.image_size, self.channels], tf.float32)
        images = tf.map_fn(
            lambda data: self._preprocess(tf.io.decode_image(
                data, channels=self.channels, dtype=tf.uint8, expand_animations=False)),
            image_bytes, fn_output_signature=spec)
        return self._outputs(self._probabilities(images))

    def _serve_images(self, images):
        # The same uint8 the decoder would give, so both signatures preprocess identically.
        pixels = to_pixels(images)
        if self.tta_views > 1:
            spec = tf.TensorSpec([self.image_size, self.image_size, self.channels], tf.float32)
            resized = tf.map_fn(lambda image: preprocess.resize_square(image, self.image_size),
                                pixels, fn_output_signature=spec)
            return self._outputs(self._mean_over_views(resized))
        return self._outputs(self._probabilities(self._preprocess_each(pixels)))


def export_saved_model(model: keras.Model, config: dict, export_dir: str,
                       tta_views: int = 1) -> str:
    """Write a SavedModel of `model` into a new numbered folder of `export_dir`; returns it.

    The weights are copied into a float32 copy of the architecture, so fp16/bf16 and
    distributed training runs export the same plain model. With tta_views > 1 the signatures
    average over that many test-time views (see ServingModule); assets.extra/config.json
    records them as `tta_views` and `export_tta` either way.

    Raises:
      ValueError: tta_views out of range.
    """
    test_time.check_num_views(tta_views)
    inference_model = restore.build_inference_model(config)
    inference_model.set_weights(model.get_weights())
    return _save(ServingModule(inference_model, config, tta_views), config, export_dir,
                 tta_views)


def export_unless_done(model: keras.Model, config: dict, export_dir: str,
                       tta_views: int = 1) -> tuple[str, bool]:
    """export_saved_model, unless the newest version in `export_dir` already is this export
    (newest_is_of: a rerun of a finished training, or of scripts/evaluate_export.sh): then
    that version. Returns (the folder, whether it was exported now)."""
    if done := newest_is_of(export_dir, config):
        return done, False
    return export_saved_model(model, config, export_dir, tta_views=tta_views), True


def export_ensemble(members: list[tuple[keras.Model, dict, str]], export_dir: str,
                    tta_views: int = 1) -> str:
    """One SavedModel averaging the probabilities of several trained models; returns its folder.

    Args:
      members: (float32 model, its resolved config, where it came from) for each member, as
        restore.load_model_from_dir gives them; all with the same image_size, channels and class
        names in the same order.
      export_dir, tta_views: as export_saved_model.

    config.json is the first member's, plus `tta_views`, `dicom_rendering` (for a model from
    before it was recorded, when its training data still says it) and, for two or more,
    `ensemble` (each member's source and network spec).

    Raises:
      ValueError: no members, members that differ in image size, channels or classes, or
        tta_views out of range.
    """
    test_time.check_num_views(tta_views)
    model_paths.check_ensemble([(source, member_config) for _, member_config, source in members],
                               same=("image_size", "channels"))
    first = members[0][1]
    config = dict(first)
    # A model trained before the rendering was recorded exports its training data's
    # (model_paths.training_rendering), so that the export renders DICOM files alike where that
    # data is not (a serving machine); when unknown, the key stays absent, as in its config.
    rendering, unknown = model_paths.training_rendering(first)
    if unknown is None:
        config["dicom_rendering"] = rendering
    if len(members) > 1:
        config["ensemble"] = [{"source": source, "model": member_config.get("model")}
                              for _, member_config, source in members]
    module = ServingModule([model for model, _, _ in members], first, tta_views)
    return _save(module, config, export_dir, tta_views)


def trained_export_tta(configs: list[dict]) -> int:
    """The test-time views the trainer's own export had (--export_tta): the models' common
    count, else 1 (each member of an ensemble may have been trained with another)."""
    counts = {config.get("export_tta", 1) or 1 for config in configs}
    return counts.pop() if len(counts) == 1 else 1


def newest_is_of(export_dir: str, config: dict) -> str | None:
    """The newest version in ``export_dir`` when it is already the export ``config`` asks
    for: from the same model_dir at the same ``exported_step`` with the same views (a rerun
    of a finished training exported an identical copy each time). None otherwise, and when
    that version was made by another run since: a new export makes this run's the served one.
    """
    version = newest_version(export_dir)
    if version is None or config.get("exported_step") is None:
        return None
    try:
        with open(os.path.join(version, ASSETS_EXTRA, CONFIG_FILE)) as handle:
            theirs = json.load(handle)
        same_run = files.same_path(theirs["model_dir"], config["model_dir"])
    except (OSError, ValueError, KeyError, TypeError):  # not ours, or damaged: export anew
        return None
    if same_run and all(theirs.get(key) == config.get(key)
                        for key in ("exported_step", "export_tta")):
        return version
    return None


_TEMPORARY_EXPORT = ".tmp-"  # an export's folder until it is whole (_save)


def _temporary_name(version: int) -> str:
    # The host as well as the pid: an export_dir on a shared file system may be written from
    # several machines, and a pid says whether its export is alive only on its own machine.
    return f"{_TEMPORARY_EXPORT}{version}-{socket.gethostname()}-{os.getpid()}-" \
        f"{secrets.token_hex(4)}"


def remove_killed_exports(export_dir: str) -> list[str]:
    """Removes the temporary folders of exports killed on this machine (a SIGKILL or the
    out-of-memory killer: no cleanup runs), each as big as a version; returns their names.
    A live export's, or another machine's, is left alone."""
    removed = []
    pattern = re.compile(re.escape(_TEMPORARY_EXPORT) + r"\d+-(.+)-(\d+)-[0-9a-f]{8}")
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(export_dir)):
            found = pattern.fullmatch(name)
            if (found and found[1] == socket.gethostname()
                    and files.process_gone(int(found[2]))):
                shutil.rmtree(os.path.join(export_dir, name), ignore_errors=True)
                removed.append(name)
    return removed


def _save(module: ServingModule, config: dict, export_dir: str, tta_views: int) -> str:
    os.makedirs(export_dir, exist_ok=True)
    if removed := remove_killed_exports(export_dir):
        absl_logging.info("removed %s, left by a killed export in %s", ", ".join(removed),
                          export_dir)
    version = int(time.time())
    while os.path.exists(os.path.join(export_dir, str(version))):
        version += 1
    # Written under a temporary name and renamed: TF Serving polls export_dir and must never
    # load a half-written version. The name is this export's own: two exports into one
    # export_dir in the same second wrote into one folder (one failed, or they mixed).
    # os.mkdir, not tempfile.mkdtemp: the version keeps the umask's permissions (mkdtemp's
    # 0700 would hide it from a TF Serving that runs as another user).
    tmp = os.path.join(export_dir, _temporary_name(version))
    os.mkdir(tmp)
    try:
        with _tensorflow_warnings_only():
            tf.saved_model.save(module, tmp, signatures={
                "serving_default": module.serving_default,
                "predict_images": module.predict_images})
        os.makedirs(os.path.join(tmp, ASSETS_EXTRA), exist_ok=True)
        # export_tta is the training flag that asked for the trainer's export; dicom_export.py
        # --tta may have chosen other views, so both keys say what these signatures average.
        with open(os.path.join(tmp, ASSETS_EXTRA, CONFIG_FILE), "w") as f:
            json.dump({**config, "export_tta": tta_views, "tta_views": tta_views}, f,
                      indent=2, sort_keys=True)
        while True:  # another export may have taken the version since
            final = os.path.join(export_dir, str(version))
            try:
                os.rename(tmp, final)  # never over another export's (non-empty) folder
                break
            except OSError as error:
                if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                version += 1
    except BaseException as error:  # a full disk or Ctrl-C: no half-written folder left
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, tf.errors.OpError) and (
                failure := files.storage_error(error, export_dir)):
            raise failure from None
        raise
    return final


def _tensorflow_warnings_only():
    """Silences INFO lines while saving; warnings and errors still show.

    Saving logs, at INFO, one line per signature listing every captured variable it renames
    (thousands of names for ResNet-152: the user sees pages for one export, about inputs that
    are internal, not the signature's), plus fingerprint/sharding chatter. TensorFlow's
    saved_model code logs through absl's logger, the rest through "tensorflow"; both are raised
    to WARNING for the save. The caller logs the one line a user needs: where the model went.
    """
    return restore.tensorflow_logs_at_least(logging.WARNING)
