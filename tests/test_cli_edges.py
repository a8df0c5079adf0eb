"""Edges a user hits before or after the real work: --help, output paths, checkpoints from
elsewhere, corrupt records. Each is one clear line, and none costs a training run first."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from dataset import converted, features
from networks import registry
from networks.resnet import train_steps
from networks.slim import slim_eval
from official.core import evaluation, export, restore, train_lib
from official.core.config import TrainConfig, resolved_config, write_config
from tests.trainer_fixtures import REPO_ROOT, error_lines, tiny_dataset, trainer_env


@pytest.mark.parametrize("program, a_flag", [
    ("networks/resnet/dicom_main.py", "--model_dir"),
    ("networks/resnet/dicom_export.py", "--model_dir"),
    ("networks/slim/train_image_classifier.py", "--train_dir"),
])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_is_an_answer_not_an_error(program, a_flag, flag):
    # absl's own --help exits 1 and knows no -h.
    result = subprocess.run([sys.executable, program, flag], cwd=REPO_ROOT, env=trainer_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert a_flag in result.stdout and "Try --helpfull" in result.stdout
    assert result.stderr == ""  # nothing else ran: no TensorFlow start-up lines either


@pytest.mark.parametrize("program, flags, message", [
    # '--train_epochs 3 5': the 5 was meant for a flag; absl's answer was the whole help, exit 1.
    ("networks/resnet/dicom_main.py", ["--data_dir=d", "--model_dir=m", "5"],
     "unexpected argument(s): 5"),
    ("networks/resnet/dicom_eval.py", ["--model=m", "--data_dir=d", "5"],
     "unexpected argument(s): 5"),
    ("networks/slim/eval_image_classifier.py", ["--checkpoint_path=m", "--dataset_dir=d", "5"],
     "unexpected argument(s): 5"),
    # The views' count is bounded at parse time (it was a ValueError after the TF start).
    ("networks/resnet/dicom_eval.py", ["--model=m", "--data_dir=d", "--tta=8"],
     "flag --tta=8: 8 is not an integer in the range [1, 7]"),
    ("networks/resnet/dicom_main.py", ["--data_dir=d", "--model_dir=m", "--export_tta=9"],
     "flag --export_tta=9: 9 is not an integer in the range [1, 7]"),
    # An accuracy threshold above 1 would never stop the run.
    ("networks/resnet/dicom_main.py", ["--data_dir=d", "--model_dir=m", "-st=1.5"],
     "flag --stop_threshold=1.5: 1.5 is not a number in the range [0.0, 1.0]"),
    # Two names of one setting given two values: the last one given used to win, unsaid.
    ("networks/slim/train_image_classifier.py", ["--train_dir=t", "--dataset_dir=d",
                                                 "--image_size=299", "--train_image_size=139"],
     "flags image_size=299, train_image_size=139: --image_size and --train_image_size "
     "(TF-Slim's name for it) differ: give one"),
])
def test_usage_errors_are_one_line_before_any_work(program, flags, message):
    result = subprocess.run([sys.executable, program, *flags], cwd=REPO_ROOT,
                            env=trainer_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    name = program.rsplit("/", 1)[1]
    assert result.stderr.strip().splitlines()[-1] == f"{name}: error: {message}"
    assert result.stdout == ""


def _model_dir(folder, class_names, resnet_size=18):
    """A training folder as the trainer leaves it: config.json and one checkpoint (random
    weights: only names and shapes matter here)."""
    spec = registry.ModelSpec(architecture="resnet", num_classes=len(class_names),
                              image_size=32, resnet_size=resnet_size, version=2,
                              small_input=False, data_format="channels_last")
    write_config(str(folder), resolved_config(TrainConfig(model_dir=str(folder)),
                                              tuple(class_names), spec, {}))
    tf.train.Checkpoint(model=registry.build_model(spec)).save(str(folder / "ckpt"))  # ckpt-1
    return folder


def test_a_checkpoint_from_another_run_must_be_of_the_same_network_and_classes(tmp_path):
    mine = _model_dir(tmp_path / "mine", ("Chest", "Hand"))
    model, _ = restore.load_model_from_dir(str(mine), str(mine / "ckpt-1"))
    assert model.output_shape == (None, 2)
    knee = _model_dir(tmp_path / "knee", ("Chest", "Knee"))
    with pytest.raises(ValueError, match=r"ckpt-1: trained in .*knee with other class names "
                                         r"\(\['Chest', 'Knee'\]\)") as error:
        restore.load_model_from_dir(str(mine), str(knee / "ckpt-1"))
    assert "\n" not in str(error.value)
    bigger = _model_dir(tmp_path / "bigger", ("Chest", "Hand"), resnet_size=34)
    with pytest.raises(ValueError, match="with other network"):
        restore.load_model_from_dir(str(mine), str(bigger / "ckpt-1"))
    # Without a config.json beside it, the checkpoint itself must fit: one line, not a dump.
    bare = tmp_path / "bare"
    bare.mkdir()
    for path in bigger.glob("ckpt-1*"):
        shutil.copy(path, bare)
    with pytest.raises(ValueError, match=r"ckpt-1: does not fit the network in .*mine") as error:
        restore.load_model_from_dir(str(mine), str(bare / "ckpt-1"))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("damage", ["cut short", "overwritten"])
def test_a_damaged_checkpoint_is_said_so_in_one_line(tmp_path, damage):
    model_dir = _model_dir(tmp_path / "run", ("Chest", "Hand"))
    (weights,) = model_dir.glob("ckpt-1.data-*")
    size = weights.stat().st_size
    with open(weights, "r+b") as handle:
        if damage == "cut short":  # a copy or a download that stopped: an IndexError
            handle.truncate(size // 2)
        else:  # corrupt bytes: TensorFlow's DataLossError
            handle.seek(size // 2)
            handle.write(b"\x00" * 64)
    with pytest.raises(ValueError) as error:
        restore.load_model_from_dir(str(model_dir))
    assert str(error.value).startswith(f"{model_dir / 'ckpt-1'}: damaged checkpoint (")
    assert "\n" not in str(error.value)


def test_a_checkpoint_that_does_not_fit_is_one_line_and_then_nothing(tmp_path):
    """The failed restore, deleted at exit, logged a warning per unread value: 112 lines
    after the error line."""
    from tests.trainer_fixtures import png_bytes

    model_dir = _model_dir(tmp_path / "run", ("Chest", "Hand"))
    config = json.loads((model_dir / "config.json").read_text())
    config["resnet_size"] = config["model"]["resnet_size"] = 34  # the checkpoint is an 18
    (model_dir / "config.json").write_text(json.dumps(config))
    image = tmp_path / "a.png"
    image.write_bytes(png_bytes(np.zeros((32, 32), np.uint8)))
    result = subprocess.run([sys.executable, "networks/resnet/dicom_predict.py",
                             f"--model={model_dir}", f"--output_csv={tmp_path / 'p.csv'}",
                             str(image)], cwd=REPO_ROOT, env=trainer_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    (last,) = [index for index, line in enumerate(lines)
               if line.startswith("dicom_predict.py: error: ")]
    assert "does not fit the network" in lines[last] and lines[last + 1:] == [], lines[last:]


def test_slim_eval_checks_model_name_against_a_resnet_run(tmp_path):
    mine = _model_dir(tmp_path / "mine", ("Chest", "Hand"))
    data = tiny_dataset(tmp_path / "data")
    with pytest.raises(ValueError, match=r"--model_name=inception_v4: .* holds a resnet18_v2"):
        slim_eval.evaluate(str(mine), str(data), "validation", batch_size=2,
                           model_name="inception_v4")


def test_output_folders_that_are_files_stop_the_trainer_before_it_trains(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    # A file under the folder's path too: an --export_dir there failed only after training.
    for where, path, message in (("model_dir", a_file, f"{a_file}: is a file"),
                                 ("export_dir", a_file, f"{a_file}: is a file"),
                                 ("export_dir", a_file / "export",
                                  f"{a_file}/export: {a_file} is a file"),
                                 ("model_dir", a_file / "run" / "1",
                                  f"{a_file}/run/1: {a_file} is a file")):
        paths = {"model_dir": str(tmp_path / "model"), where: str(path)}
        config = TrainConfig(data_dir=str(data), image_size=32, batch_size=8, hooks=(), **paths)
        with pytest.raises(ValueError) as error:
            train_lib.train(config, strategy, train_steps.ResNetNetwork(resnet_size=18))
        assert str(error.value) == f"{message}; the trainer writes a folder there"
    assert not (tmp_path / "model").exists()
    # The dataset's own folder: checkpoints among the shards, config.json beside the manifest.
    config = TrainConfig(data_dir=str(data), model_dir=str(data) + "/", image_size=32,
                         batch_size=8, hooks=())
    with pytest.raises(ValueError, match=f"^{data}/: the run's folder is its data folder"):
        train_lib.train(config, strategy, train_steps.ResNetNetwork(resnet_size=18))
    assert not (data / "config.json").exists()
    # Exports among the checkpoints: an evaluation of the folder then read an old export.
    model_dir = tmp_path / "model"
    config = TrainConfig(data_dir=str(data), model_dir=str(model_dir), image_size=32,
                         batch_size=8, hooks=(), export_dir=f"{model_dir}/")
    with pytest.raises(ValueError, match=f"^{model_dir}/: the export's folder is the run's "
                                         f"folder; give the export a folder of its own"):
        train_lib.train(config, strategy, train_steps.ResNetNetwork(resnet_size=18))
    assert not model_dir.exists()
    # The original's default, /tmp: checkpoints among every program's files.
    for where in ("model_dir", "export_dir"):
        paths = {"model_dir": str(model_dir), where: "/tmp/"}
        config = TrainConfig(data_dir=str(data), image_size=32, batch_size=8, hooks=(), **paths)
        with pytest.raises(ValueError, match="^/tmp/: the system's temporary folder itself, "
                                             "shared by every program; give the run a folder "
                                             "of its own \\(e.g. /tmp/dicom_model\\)$"):
            train_lib.train(config, strategy, train_steps.ResNetNetwork(resnet_size=18))
    assert not model_dir.exists()


def test_both_trainers_refuse_a_wrong_run_folder_before_tensorflow(tmp_path):
    # They were refused by train_lib.train only, after TensorFlow's import (about 5 s).
    data = tiny_dataset(tmp_path / "data", train_per_class=2, eval_per_class=1)
    before = sorted(os.listdir(data))
    for script, folder_flag, data_flag, extra in (
            ("networks/resnet/dicom_main.py", "--model_dir", "--data_dir", ()),
            ("networks/slim/train_image_classifier.py", "--train_dir", "--dataset_dir",
             ("--model_name=mobilenet_v3_small",))):
        for folder, message in (("/tmp", "/tmp: the system's temporary folder itself"),
                                (str(data), f"{data}: the run's folder is its data folder")):
            result = subprocess.run(
                [sys.executable, script, f"{folder_flag}={folder}", f"{data_flag}={data}",
                 *extra], cwd=REPO_ROOT, env=trainer_env(without_tensorflow=True),
                capture_output=True, text=True, timeout=120)
            errors = error_lines(result.stderr)
            assert result.returncode == 1 and len(errors) == 1, (script, result.stderr[-1500:])
            assert errors[0].startswith(f"{script.rsplit('/', 1)[1]}: error: {message}")
    assert sorted(os.listdir(data)) == before  # no config.json among the shards


class _Uniform:
    """A stand-in predictor: the reading of the records is what is under test."""
    class_names = ["Chest", "Hand"]

    def __call__(self, encoded):
        return np.full((len(encoded), 2), 0.5, np.float32)


def test_evaluation_names_the_shard_with_a_corrupt_record(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    manifest = json.loads((data / "manifest.json").read_text())
    shard = manifest["splits"]["validation"]["files"][0]["path"]
    labels, _, _ = evaluation.evaluate_split(
        _Uniform(), converted.split_info(str(data), "validation"), batch_size=4)
    assert len(labels) == manifest["splits"]["validation"]["num_examples"]
    with open(data / shard, "r+b") as handle:  # same size, other bytes
        handle.seek(40)
        handle.write(b"\xff" * 8)
    with pytest.raises(ValueError, match=f"corrupt record in {shard} .*rerun tf_convert_data"
                       ) as error:
        evaluation.evaluate_split(_Uniform(), converted.split_info(str(data), "validation"),
                                 batch_size=4)
    # TensorFlow's own words without its wrapping ({{function_node ...}}, [Op:...]).
    assert f"corrupt record in {shard} (corrupted record at " in str(error.value)
    assert "{{" not in str(error.value) and "[Op:" not in str(error.value)


def test_evaluation_names_the_record_whose_image_the_model_cannot_decode(tmp_path):
    """Records written before the converter checked a PNG as TensorFlow does (or a JPEG with
    a marker in its data, which it still passes) stopped an evaluation with a traceback."""
    from dataset.images import ImageError

    data = tiny_dataset(tmp_path / "data")
    info = converted.split_info(str(data), "validation")
    records = tf.data.TFRecordDataset(list(info.files)).map(
        lambda record: tf.io.parse_single_example(record, features.feature_spec()))
    victim = [example for example in records][3]

    class Refusing(_Uniform):  # refuses the one image, as Predictor says TensorFlow does
        def __call__(self, encoded):
            if any(image == victim[features.KEY_ENCODED].numpy() for image in encoded.numpy()):
                raise ImageError("TensorFlow cannot decode it (Invalid PNG data, size 5)")
            return super().__call__(encoded)

    with pytest.raises(ValueError) as error:
        evaluation.evaluate_split(Refusing(), info, batch_size=4)
    assert str(error.value) == (
        f"{data}: split validation's record of "
        f"{victim[features.KEY_FILENAME].numpy().decode()}: TensorFlow cannot decode it "
        "(Invalid PNG data, size 5); convert the data again without that file")


def test_a_damaged_saved_model_is_one_line(tmp_path):
    from official.core.inference import Predictor

    mine = _model_dir(tmp_path / "mine", ("Chest", "Hand"))
    model, config = restore.load_model_from_dir(str(mine))
    path = export.export_saved_model(model, config, str(tmp_path / "export"))
    for data in (tmp_path / "export").glob("*/variables/variables.data*"):
        data.unlink()  # a copy that lost its weights
    with pytest.raises(ValueError, match="not a loadable SavedModel .*export it again") as error:
        Predictor(path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("program", ["networks/resnet/dicom_eval.py",  # absl's global FLAGS
                                     "benchmarks/stress_eval.py"])     # flags of its own
def test_several_missing_flags_are_one_line(program):
    # absl puts each missing required flag on a line of its own.
    result = subprocess.run([sys.executable, program], cwd=REPO_ROOT, env=trainer_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"{os.path.basename(program)}: error: ") and "--data_dir" in line


@pytest.mark.parametrize("program", ["networks/resnet/dicom_eval.py",
                                     "benchmarks/stress_eval.py"])
def test_help_into_a_closed_pipe_is_no_traceback(program):
    # `--help | head -1`: the reader is gone before the help is written.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, program, "--help"], cwd=REPO_ROOT,
                                env=trainer_env(), stdout=write_end, stderr=subprocess.PIPE,
                                text=True, timeout=120)
    finally:
        os.close(write_end)
    assert result.returncode == 0 and result.stderr == ""


def test_an_output_folder_in_the_way_of_a_file_is_named_before_any_work(tmp_path):
    from official.utils import cli

    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for path in (a_file, a_file / "deeper" / "report"):
        with pytest.raises(ValueError) as error:
            cli.check_output_folder("--output_dir", str(path), "the report")
        assert str(error.value) == (f"--output_dir={path}: {a_file} is a file; the report is "
                                    "written as a folder")
    cli.check_output_folder("--output_dir", str(tmp_path / "new" / "report"), "the report")
    cli.check_output_folder("--output_dir", None, "the report")
    # Both programs refuse it before looking for the (absent) model: no evaluation, no
    # export, then a bare "[Errno 17] File exists" as before.
    data = tiny_dataset(tmp_path / "data")
    for program, flags in (
            ("networks/resnet/dicom_eval.py", [f"--model={tmp_path / 'absent'}",
                                               f"--data_dir={data}", "--split=validation",
                                               f"--output_dir={a_file}"]),
            ("networks/resnet/dicom_export.py", [f"--model_dir={tmp_path / 'absent'}",
                                                 f"--export_dir={a_file}"])):
        result = subprocess.run([sys.executable, program, *flags], cwd=REPO_ROOT,
                                env=trainer_env(without_tensorflow=True), capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 1
        name = program.rsplit("/", 1)[1]
        flag = flags[-1].split("=", 1)[0]
        what = "the report" if name == "dicom_eval.py" else "the export"
        assert error_lines(result.stderr) == [
            f"{name}: error: {flag}={a_file}: {a_file} is a file; {what} is written as a "
            "folder"]
    assert a_file.read_text() == "not a folder"


def test_an_absent_model_dir_is_no_such_folder(tmp_path):
    from official.core.config import read_config

    with pytest.raises(FileNotFoundError) as error:
        read_config(str(tmp_path / "absent"))
    assert str(error.value) == f"{tmp_path / 'absent'}: no such folder"
    with pytest.raises(FileNotFoundError, match="config.json: not found"):
        read_config(str(tmp_path))  # a folder, but not a training run's


def test_an_export_dir_that_cannot_be_written_stops_the_trainer_before_it_trains(
        tmp_path, monkeypatch):
    # A read-only export_dir failed at the export, after all the training. As root (CI) a
    # chmod does not stop a write, so the file system's answer is stood in for.
    from official.core import config as config_lib

    data = tiny_dataset(tmp_path / "data")
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(config_lib.os, "access", lambda path, mode: (
        False if str(path) == str(read_only) else real_access(path, mode)))
    config = TrainConfig(data_dir=str(data), model_dir=str(tmp_path / "model"), image_size=32,
                         batch_size=8, hooks=(), export_dir=str(read_only / "export"))
    with pytest.raises(ValueError) as error:
        train_lib.train(config, tf.distribute.OneDeviceStrategy("/cpu:0"),
                        train_steps.ResNetNetwork(resnet_size=18))
    assert str(error.value) == (f"{read_only}/export: {read_only} is not writable (a read-only "
                                "file system, or no permission); the trainer writes a folder "
                                "there")
    assert not (tmp_path / "model").exists()
