"""A second training or conversion into a folder another one is writing is refused at its
start: two at once overwrote each other's checkpoints and config.json (both ended "fine"), or
deleted each other's staging folders (both failed with tracebacks)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from official.utils import files
from tests.conftest import REPO_ROOT
from tests.test_convert import convert, make_class_folders, output_bytes


def test_a_held_folder_refuses_a_second_holder_and_is_free_again_after(tmp_path):
    folder = tmp_path / "out"
    with files.folder_held(str(folder), "training"):
        (folder / "config.json").write_text("{}")
        with pytest.raises(ValueError, match=rf"^{folder}: another training is writing into "
                                             r"this folder \(it is locked\)"):
            with files.folder_held(str(folder), "training"):
                pass
    with files.folder_held(str(folder), "training"):
        pass
    assert (folder / "config.json").exists()  # a folder with content is kept


def test_the_lock_dies_with_its_process_and_a_folder_made_empty_is_removed(tmp_path):
    folder = tmp_path / "made"
    with files.folder_held(str(folder), "conversion"):
        assert folder.is_dir()
    assert not folder.exists()  # made here, left empty: a failed run leaves no trace
    held = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from official.utils import files\n"
         f"with files.folder_held({str(tmp_path)!r}, 'conversion'):\n"
         "    print('held', flush=True); sys.stdin.read()\n"],
        cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert held.stdout.readline() == "held\n"
    with pytest.raises(ValueError, match="another conversion"):
        with files.folder_held(str(tmp_path), "conversion"):
            pass
    held.kill()  # SIGKILL: no clean-up of its own ran
    held.wait(timeout=30)
    with files.folder_held(str(tmp_path), "conversion"):
        pass


def test_a_conversion_into_a_folder_being_converted_into_is_refused(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"A": 3, "B": 3}, size=16)
    out = tmp_path / "out"
    convert(root, out, output_name="all")
    before = output_bytes(out)
    with files.folder_held(str(out), "conversion"):  # the other conversion, still running
        with pytest.raises(ValueError, match="another conversion is writing into this folder"):
            convert(root, out, output_name="all", seed=7)
    assert output_bytes(out) == before


def test_a_conversion_into_a_held_folder_is_refused_before_it_reads_headers(tmp_path,
                                                                           monkeypatch):
    """Reading a large DICOM set's headers takes minutes: the refusal comes before it."""
    from dataset import convert as convert_module

    root = make_class_folders(tmp_path / "ds", {"A": 3, "B": 3}, size=16)
    out = tmp_path / "out"
    read = []
    real = convert_module._read_headers
    monkeypatch.setattr(convert_module, "_read_headers", lambda *args: read.append(1) or
                        real(*args))
    with files.folder_held(str(out), "conversion"):
        with pytest.raises(ValueError, match="another conversion is writing into this folder"):
            convert(root, out, output_name="all")
    assert read == []
    convert(root, out, output_name="all")  # free again: planned and written once
    assert read == [1] and (out / "manifest.json").is_file()


def test_a_training_into_a_model_dir_in_use_is_refused_before_it_writes(tmp_path):
    import tensorflow as tf

    from networks.resnet import train_steps
    from official.core import train_lib
    from official.core.config import TrainConfig
    from tests.trainer_fixtures import tiny_dataset

    model_dir = tmp_path / "model"
    config = TrainConfig(data_dir=str(tiny_dataset(tmp_path / "data")), model_dir=str(model_dir),
                         image_size=32, batch_size=8, max_train_steps=1, hooks=())
    with files.folder_held(str(model_dir), "training"):
        with pytest.raises(ValueError, match="another training is writing into this folder"):
            train_lib.train(config, tf.distribute.OneDeviceStrategy("/cpu:0"),
                            train_steps.ResNetNetwork(resnet_size=18, small_input=False))
        assert list(model_dir.iterdir()) == []


def test_a_file_system_that_cannot_lock_a_folder_runs_unlocked(tmp_path, monkeypatch):
    # NFS emulates flock with POSIX locks: an exclusive one on a folder fails with EBADF.
    import errno

    def cannot(handle, operation):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(files.fcntl, "flock", cannot)
    with files.folder_held(str(tmp_path / "nfs"), "training") as folder:
        with files.folder_held(folder, "training"):  # no lock, so no refusal either
            (tmp_path / "nfs" / "config.json").write_text("{}")
    assert (tmp_path / "nfs" / "config.json").exists()


def test_a_child_forked_while_a_folder_is_held_does_not_keep_it_locked(tmp_path):
    # The converter's pool forks a new worker when one dies; its copy of the descriptor held
    # the lock for as long as it lived, after the converter itself had ended.
    import os
    import signal

    started, ready = os.pipe()
    with files.folder_held(str(tmp_path), "conversion"):
        child = os.fork()
        if child == 0:  # the worker: lives on (its fork hooks have run once fork returns)
            os.write(ready, b"x")
            signal.pause()
            os._exit(0)
    assert os.read(started, 1) == b"x"
    try:
        with files.folder_held(str(tmp_path), "conversion"):
            pass
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_a_folder_made_empty_is_removed_before_it_is_let_go(tmp_path, monkeypatch):
    # Removed after the lock was let go, a run that had opened it meanwhile locked a folder
    # no longer there; it now goes on only on the folder the path names.
    import os

    order = []
    real_rmdir, real_close = os.rmdir, os.close
    monkeypatch.setattr(files.os, "rmdir", lambda path: order.append("rmdir") or real_rmdir(path))
    with files.folder_held(str(tmp_path / "made"), "training"):
        monkeypatch.setattr(files.os, "close",
                            lambda handle: order.append("close") or real_close(handle))
    assert order == ["rmdir", "close"]
