"""Shared test fixtures.

Two logical CPU devices are configured before any test touches TensorFlow, so
distribution tests can run MirroredStrategy on a machine without GPUs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Under pytest-xdist every worker, and every trainer a test starts, would size TensorFlow's
# intra-op pool to all the cores: N workers on N cores then run N^2 threads, and the suite
# spent a sixth of its time switching between them (2 cores: 636 s, 526 s with one thread a
# worker). The cores are shared out instead, before TensorFlow is imported; subprocesses
# inherit it. A test run without -n keeps TensorFlow's default.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(max(
        1, (_cores or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def _configure_logical_cpus() -> None:
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    except RuntimeError:  # already initialised by an earlier import
        pass


_configure_logical_cpus()

# Files of long tests (subprocess runs of whole scripts and clusters, 30-70 s each), run first:
# with two xdist workers, a long test left for the end keeps one core busy while the other
# idles, and short tests fill the gaps better at the end than at the start.
LONG_TEST_FILES = ("test_multiworker.py", "test_multiworker_edges.py", "test_quickstart.py",
                   "test_scripts.py", "test_organamnist_scripts.py", "test_trainer.py",
                   "test_trainer_interrupt.py", "test_budget.py", "test_budget_lay_over.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name not in LONG_TEST_FILES)  # stable within a file


@pytest.fixture
def shared_data() -> Path:
    """The read-only ../shared/data folder; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs ../shared/data (not found at {SHARED_DATA})")
    return SHARED_DATA


def write_image(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an image; the format follows the file suffix."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def make_images_labels_dataset(tmp_path):
    """Factory: a dataset in the original images/ + labels/ layout.

    ``make(counts={"Chest": 6, "Hand": 6}, size=32, suffix=".png")`` returns the
    dataset folder. Pixel values encode the class so models can learn them.
    """

    def make(counts: dict[str, int], size: int = 32, suffix: str = ".png",
             root: Path | None = None, seed: int = 0) -> Path:
        root = root or tmp_path / "ds"
        rng = np.random.default_rng(seed)
        index = 0
        for class_index, (name, count) in enumerate(sorted(counts.items())):
            for _ in range(count):
                level = 40 + 50 * class_index
                array = np.clip(rng.normal(level, 10, (size, size)), 0, 255).astype(np.uint8)
                stem = f"{index:06d}"
                write_image(root / "images" / f"{stem}{suffix}", array)
                (root / "labels").mkdir(parents=True, exist_ok=True)
                (root / "labels" / f"{stem}.txt").write_text(name + "\n")
                index += 1
        return root

    return make


def one_error_line(capsys, program: str, run) -> str:
    """`run()` (a program's main) exits 1 with exactly one `<program>: error: ...` line on
    stderr; returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{program}: error: ")
    return line


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A ResNet-18 trained a few steps on tiny data (classes TRAINED_CLASSES), with a
    SavedModel export; shared by the evaluation, prediction, view and ensemble tests."""
    from networks.resnet.train_steps import ResNetNetwork
    from official.core import train_lib
    from official.core.config import TrainConfig
    from official.utils.misc import distribution_utils
    from tests.trainer_fixtures import TRAINED_CLASSES, tiny_dataset

    root = tmp_path_factory.mktemp("trained")
    data_dir = tiny_dataset(root / "data", train_per_class=8, eval_per_class=4,
                            classes=TRAINED_CLASSES)
    config = TrainConfig(model_dir=str(root / "model"), data_dir=str(data_dir), image_size=32,
                         train_epochs=2, batch_size=8, hooks=(), seed=1,
                         export_dir=str(root / "export"))
    result = train_lib.train(config, distribution_utils.get_distribution_strategy(num_gpus=0),
                             ResNetNetwork(resnet_size=18, version=2, small_input=False))
    return {"root": root, "data_dir": str(data_dir), "model_dir": config.model_dir,
            "export": result.export_path}


@pytest.fixture
def mixed_folder(tmp_path):
    """DICOM (pydicom's test files, one without extension), JPEG, PNG, a corrupt file."""
    import shutil

    from pydicom.data import get_testdata_file
    from tests.trainer_fixtures import class_image

    folder = tmp_path / "incoming"
    rng = np.random.default_rng(3)
    write_image(folder / "chest.png", class_image(rng, 0, 32))
    write_image(folder / "sub" / "hand.jpg", class_image(rng, 1, 40))
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    (folder / "sub" / "deeper").mkdir(parents=True)
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "sub" / "deeper" / "MR0001")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "notes.txt").write_text("not an image")  # ignored inside folders
    return folder
