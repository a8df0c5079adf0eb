"""Helpers for the trainer tests: a tiny converted dataset and running the trainer CLI.

The dataset is written directly with dataset.features.serialize_example and a manifest.json in the
converter's format, so the trainer tests depend on the agreed format, not on the converter.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from dataset.features import serialize_example

REPO_ROOT = Path(__file__).resolve().parents[1]
DICOM_MAIN = REPO_ROOT / "networks" / "resnet" / "dicom_main.py"
# Fast settings shared by the tests: ResNet-18 at 32 px with the ImageNet stem (4x smaller maps).
FAST_FLAGS = ("--resnet_size=18", "--image_size=32", "--nosmall_input", "--hooks=",
              "--num_parallel_calls=2", "--seed=1")


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def class_image(rng: np.random.Generator, class_index: int, size: int) -> np.ndarray:
    """A grey image whose brightness and a bright square's corner encode the class."""
    array = np.clip(rng.normal(50 + 60 * class_index, 12, (size, size)), 0, 255)
    half = size // 2
    corner = class_index % 4
    rows = slice(0, half) if corner in (0, 1) else slice(half, size)
    cols = slice(0, half) if corner in (0, 2) else slice(half, size)
    array[rows, cols] = 230
    return array.astype(np.uint8)


def write_converted_dataset(root: Path, counts: dict[str, dict[str, int]], *,
                            classes: tuple[str, ...] = ("Chest", "Hand"), size: int = 32,
                            seed: int = 0) -> Path:
    """Shards + labels.txt + manifest.json like tf_convert_data.py's output.

    counts: {split: {class_name: n}}; a split with no examples gets an empty file list.
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, per_class in counts.items():
        records = []
        for class_index, name in enumerate(classes):
            for index in range(per_class.get(name, 0)):
                records.append(serialize_example(
                    encoded=png_bytes(class_image(rng, class_index, size)), image_format="png",
                    label=class_index, text=name, height=size, width=size, channels=1,
                    filename=f"images/{split}_{name}_{index}.png"))
        files = []
        if records:
            order = rng.permutation(len(records))
            shard = f"{split}-00000-of-00001.tfrecord"
            with tf.io.TFRecordWriter(str(root / shard)) as writer:
                for position in order:
                    writer.write(records[position])
            files.append({"path": shard, "num_records": len(records),
                          "num_bytes": os.path.getsize(root / shard),
                          "sha256": hashlib.sha256((root / shard).read_bytes()).hexdigest()})
        splits[split] = {"num_examples": len(records),
                         "class_counts": {name: per_class.get(name, 0) for name in classes},
                         "files": files}
    (root / "labels.txt").write_text("".join(f"{i}:{n}\n" for i, n in enumerate(classes)))
    manifest = {"classes": list(classes), "splits": splits, "flags": {}, "skipped": []}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root


def tiny_dataset(root: Path, train_per_class: int = 8, eval_per_class: int = 4,
                 classes: tuple[str, ...] = ("Chest", "Hand")) -> Path:
    counts = {"train": {name: train_per_class for name in classes},
              "validation": {name: eval_per_class for name in classes}}
    return write_converted_dataset(root, counts, classes=classes)


_MIRRORED = []


def mirrored_strategy():
    """The process's one MirroredStrategy over the two logical CPUs of conftest.py. Separate
    instances over the same devices can mix up their collective instance keys."""
    from official.utils.misc import distribution_utils

    if not _MIRRORED:
        _MIRRORED.append(
            distribution_utils.get_distribution_strategy(num_gpus=0, num_cpu_replicas=2))
    return _MIRRORED[0]


# A `tensorflow` package whose import fails, put ahead of the real one by
# trainer_env(without_tensorflow=True).
WITHOUT_TENSORFLOW = REPO_ROOT / "tests" / "without_tensorflow"


def trainer_env(*, without_tensorflow: bool = False) -> dict[str, str]:
    """The environment of a program run by a test. ``without_tensorflow``: importing
    TensorFlow (or Keras) fails with a traceback, so a test that expects a one-line error
    also proves that the error came before TensorFlow's import (seconds of CPU)."""
    env = dict(os.environ)
    paths = [str(WITHOUT_TENSORFLOW)] if without_tensorflow else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_trainer(*args: str, timeout: float = 240,
                without_tensorflow: bool = False) -> subprocess.CompletedProcess:
    """Run dicom_main.py in a fresh process (absl flags are process-global)."""
    return subprocess.run([sys.executable, str(DICOM_MAIN), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO_ROOT,
                          env=trainer_env(without_tensorflow=without_tensorflow))


def error_lines(stderr: str) -> list[str]:
    """stderr lines that are not TensorFlow/absl start-up noise."""
    noise = ("I0000", "W0000", "E0000", "WARNING: All log messages", "To enable the following")
    return [line for line in stderr.splitlines()
            if line.strip() and not line.startswith(noise) and "cuda" not in line
            and not line.startswith(("I1", "W1"))]


TRAINED_CLASSES = ("Chest", "Hand")  # the classes of conftest.py's `trained` model


def run_resnet_cli(script: str, *args: str, timeout: float = 180,
                   without_tensorflow: bool = False) -> subprocess.CompletedProcess:
    """Run networks/resnet/<script> (dicom_eval.py, dicom_predict.py, ...) in a fresh process
    (``without_tensorflow``: see trainer_env)."""
    return subprocess.run([sys.executable, str(REPO_ROOT / "networks" / "resnet" / script), *args],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=timeout,
                          env=trainer_env(without_tensorflow=without_tensorflow))


def checkpoint_name(model_dir: str) -> str:
    """The latest checkpoint's bare name, e.g. "ckpt-4", as a user types it after --model."""
    import tensorflow as tf

    return os.path.basename(tf.train.latest_checkpoint(model_dir))


class HalfAndHalf:
    """A stand-in Predictor for official/core/prediction.py (no model to load): 0.5 for both
    of TRAINED_CLASSES; ``fail_on_call=N`` raises ``failure`` on the N-th call (a batch)."""
    class_names = list(TRAINED_CLASSES)
    source = "half-and-half"
    weights = "0123456789abcdef"
    tta_views = 1

    def __init__(self, fail_on_call: int | None = None,
                 failure: BaseException = KeyboardInterrupt()):
        self.fail_on_call, self.failure, self.calls = fail_on_call, failure, []

    @property
    def members(self):
        return [self]

    def __call__(self, encoded_images):
        self.calls.append(len(encoded_images))
        if len(self.calls) == self.fail_on_call:
            raise self.failure
        return np.full((len(encoded_images), 2), 0.5, np.float32)
