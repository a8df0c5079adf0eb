"""A file system that refuses the output (a full disk, read-only) is one error line naming the
folder, with no partial files left: checkpoints, exports, small atomic files and the
converter's records alike."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from networks.resnet import train_steps
from official.core import train_lib
from official.core.config import TrainConfig
from official.utils import cli, files
from tests.conftest import REPO_ROOT
from tests.test_convert_errors import error_line, run_cli
from tests.trainer_fixtures import tiny_dataset

ONE_DEVICE = tf.distribute.OneDeviceStrategy("/cpu:0")
FULL = "{{function_node __wrapped__SaveV2}} x_temp/part-00000; No space left on device [Op:SaveV2]"


def test_a_full_disk_at_a_checkpoint_is_one_oserror_and_no_temp_folder(tmp_path, monkeypatch):
    data = tiny_dataset(tmp_path / "data")
    model_dir = tmp_path / "model"
    real = tf.train.CheckpointManager.save

    def full_disk(self, checkpoint_number=None, **kwargs):
        os.makedirs(os.path.join(self.directory, f"ckpt-{checkpoint_number}_temp"))
        raise tf.errors.ResourceExhaustedError(None, None, FULL)  # as SaveV2 fails

    monkeypatch.setattr(tf.train.CheckpointManager, "save", full_disk)
    config = TrainConfig(data_dir=str(data), model_dir=str(model_dir), image_size=32,
                         batch_size=8, train_epochs=1, hooks=(), num_parallel_calls=2, seed=1)
    with pytest.raises(OSError) as raised:
        train_lib.train(config, ONE_DEVICE, train_steps.ResNetNetwork(resnet_size=18,
                                                                      small_input=False))
    assert str(raised.value) == (f"{model_dir}: cannot save the checkpoint of step 2: No space "
                                 "left on device (the last one saved: none)")
    assert cli.expected(raised.value)  # one line from the programs
    assert not list(model_dir.glob("*_temp"))
    monkeypatch.setattr(tf.train.CheckpointManager, "save", real)


def test_storage_error_maps_only_the_file_systems_refusals():
    failure = files.storage_error(tf.errors.ResourceExhaustedError(None, None, FULL), "/out")
    assert (failure.errno, failure.filename) == (errno.ENOSPC, "/out")
    assert files.storage_error(tf.errors.ResourceExhaustedError(
        None, None, "OOM when allocating tensor with shape[64,64]"), "/out") is None


def test_an_atomic_write_on_a_full_disk_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    with pytest.raises(OSError) as raised:
        with files.written_atomically(str(path)) as tmp:
            open(tmp, "w").close()
            raise OSError(errno.ENOSPC, "No space left on device")  # a write's: no file name
    assert raised.value.filename == str(path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("earlier", [False, True])
def test_a_full_disk_while_the_records_are_written_is_one_line(tmp_path,
                                                               make_images_labels_dataset,
                                                               earlier):
    # The disk fills as a shard is closed: its OSError names no file. One line naming the
    # output folder, exit 1, no staging folder left (it was a 25-line traceback). An earlier
    # conversion there is left whole, and the line says so (it said the folder would not be
    # read as a dataset).
    root = make_images_labels_dataset({"Chest": 2, "Hand": 2}, size=16)
    out = tmp_path / "out"
    before = {}
    if earlier:
        assert run_cli(f"--dataset_dir={root}", f"--output_dir={out}").returncode == 0
        before = {path.name: path.read_bytes() for path in out.iterdir()}
    program = ("import errno, sys\n"
               "from absl import app\n"
               "from dataset import shards\n"
               "def full(self):\n"
               "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
               "shards.SplitWriter._close_file = full\n"
               "sys.argv = ['tf_convert_data.py', f'--dataset_dir={sys.argv[1]}', "
               "f'--output_dir={sys.argv[2]}', '--num_workers=1']\n"
               "import tf_convert_data\n"
               "app.run(tf_convert_data.main, flags_parser=tf_convert_data.cli.flags_parser("
               "tf_convert_data.PROGRAM))\n")
    result = subprocess.run([sys.executable, "-c", program, str(root), str(out)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    left = ("its earlier conversion is as it was" if earlier
            else "a folder without its manifest.json is never read as a dataset")
    assert error_line(result) == (f"error: {out}: No space left on device; the conversion into "
                                  f"{out} did not finish ({left})")
    if earlier:
        assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    else:
        assert not out.exists()  # made by the run, left empty
