"""The training loop end to end on tiny converted data: stops, resume, config check, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from dataset import preprocess
from networks.resnet import train_steps
from official.core import restore, train_lib
from official.core.config import TrainConfig
from official.utils.logs import logger as logger_lib
from tests.trainer_fixtures import (FAST_FLAGS, REPO_ROOT, class_image, error_lines,
                                    mirrored_strategy, run_trainer, tiny_dataset, trainer_env,
                                    write_converted_dataset)

ONE_DEVICE = tf.distribute.OneDeviceStrategy("/cpu:0")


def _config(data_dir, model_dir, **overrides) -> tuple[TrainConfig, train_steps.ResNetNetwork]:
    # 16 training examples / batch 8 = 2 steps per epoch.
    settings = dict(data_dir=data_dir and str(data_dir), model_dir=str(model_dir),
                    image_size=32, batch_size=8, train_epochs=5, hooks=(),
                    num_parallel_calls=2, seed=1, checkpoint_every_steps=0)
    network = dict(resnet_size=18, small_input=False)
    for key in ("resnet_size", "version", "small_input", "data_format"):
        if key in overrides:
            network[key] = overrides.pop(key)
    settings.update(overrides)
    return TrainConfig(**settings), train_steps.ResNetNetwork(**network)


def _train(config_and_network, strategy):
    config, network = config_and_network
    return train_lib.train(config, strategy, network)


def _schedule(config_and_network, steps_per_epoch: int):
    config, network = config_and_network
    return network.learning_rate_schedule(config.schedule_spec(steps_per_epoch))


def _checkpoint_steps(model_dir) -> list[int]:
    state = tf.train.get_checkpoint_state(str(model_dir))
    if state is None:
        return []
    return sorted(int(path.rsplit("-", 1)[1]) for path in state.all_model_checkpoint_paths)


def _scalar_tags(folder) -> set[str]:
    """Tags of the TensorBoard scalar summaries (the scalars plugin's metadata) in folder."""
    tags = set()
    for path in folder.glob("events.out.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    tags.add(value.tag)
    return tags


def _scalar_values(folder) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of the scalar summaries in folder."""
    values = {}
    for path in folder.glob("events.out.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    values.setdefault(value.tag, {})[event.step] = float(
                        tf.make_ndarray(value.tensor))
    return values


def test_stop_threshold_then_resume_to_max_train_steps(tmp_path, caplog):
    data = tiny_dataset(tmp_path / "data")
    # As tf_convert_data.py --dicom_voi=given records it: prediction renders DICOMs this way.
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["flags"]["dicom"] = {"force": True, "voi": "given", "window_center": 40.0,
                                  "window_width": 400.0, "bits": 8, "frames": "all",
                                  "max_pixels": 1000}
    (data / "manifest.json").write_text(json.dumps(manifest))
    rendering = {"voi": "given", "window_center": 40.0, "window_width": 400.0, "bits": 8}
    model_dir = tmp_path / "model"
    # Any accuracy >= 0: stops after the first evaluation (end of epoch 1 = step 2 of 10).
    first = _train(
        _config(data, model_dir, stop_threshold=0.0, benchmark_log_dir=str(tmp_path / "bench"),
                hooks=("LoggingTensorHook", "ExamplesPerSecondHook", "ProfilerHook",
                       "LoggingMetricHook"), log_every_steps=1),
        ONE_DEVICE)
    assert (first.step, first.stopped_by, first.resumed_from_step) == (2, "stop_threshold", 0)
    assert first.eval_examples == 8 and 0.0 <= first.eval_accuracy <= 1.0
    assert _checkpoint_steps(model_dir) == [2]
    config = json.loads((model_dir / "config.json").read_text())
    assert config["num_classes"] == 2 and config["class_names"] == ["Chest", "Hand"]
    assert (config["resnet_size"], config["version"], config["image_size"]) == (18, 2, 32)
    assert config["small_input"] is False and config["channels"] == 1
    assert config["dicom_rendering"] == rendering
    tags = {writer: _scalar_tags(model_dir / writer) for writer in ("train", "eval")}
    assert {"loss", "cross_entropy", "accuracy", "learning_rate",
            "examples_per_second"} <= tags["train"]
    assert {"loss", "cross_entropy", "accuracy"} <= tags["eval"]
    # Training's "loss" adds the weight decay; "cross_entropy" is comparable with evaluation's.
    train, evaluated = _scalar_values(model_dir / "train"), _scalar_values(model_dir / "eval")
    for step in (1, 2):
        assert 0 < train["cross_entropy"][step] < train["loss"][step]
    assert evaluated["cross_entropy"] == evaluated["loss"]
    assert any((model_dir / "profile").rglob("*.xplane.pb"))  # ProfilerHook trace
    run_info = json.loads((tmp_path / "bench" / "benchmark_run.log").read_text())
    assert run_info["model_name"] == "resnet18_v2"
    metrics = [json.loads(line) for line in
               (tmp_path / "bench" / "metric.log").read_text().splitlines()]
    assert {m["name"] for m in metrics} >= {"train_loss", "accuracy"}

    # Same model_dir: resumes at step 2 (weights, optimizer, step) and stops at max_train_steps.
    # The records were re-converted with another DICOM rendering meanwhile: said, not refused
    # (a dataset without DICOM files is not concerned).
    manifest["flags"]["dicom"]["voi"] = "minmax"
    (data / "manifest.json").write_text(json.dumps(manifest))
    caplog.clear()
    second = _train(
        _config(data, model_dir, max_train_steps=3, export_dir=str(tmp_path / "export")),
        ONE_DEVICE)
    assert (second.resumed_from_step, second.step, second.stopped_by) == (
        2, 3, "max_train_steps")
    exported = json.loads(open(f"{second.export_path}/assets.extra/config.json").read())
    assert exported["dicom_rendering"] == {**rendering, "voi": "minmax"}
    assert ("this run's records rendered DICOM files with voi=minmax, window_center=40.0, "
            "window_width=400.0, bits=8, the run's start with voi=given") in caplog.text
    # The export and the model rebuilt from model_dir (for evaluation/prediction) agree.
    rebuilt, _ = restore.load_model_from_dir(str(model_dir))
    images = np.stack([class_image(np.random.default_rng(3), i % 2, 32) for i in range(4)])
    batch = tf.stack([preprocess.preprocess_for_eval(tf.constant(image[..., None]),
                                                     image_size=32) for image in images])
    served = tf.saved_model.load(second.export_path).signatures["predict_images"](
        images=tf.constant(images[..., None], tf.float32))
    np.testing.assert_allclose(served["probabilities"].numpy(),
                               tf.nn.softmax(rebuilt(batch, training=False)).numpy(), atol=1e-5)
    assert _checkpoint_steps(model_dir) == [2, 3]
    reader = tf.train.load_checkpoint(str(model_dir))
    iterations = [k for k in reader.get_variable_to_shape_map() if "iterations" in k]
    assert iterations and reader.get_tensor(iterations[0]) == 3  # optimizer state carried on
    # A rerun of the finished run exported an identical copy each time: not now, since the
    # newest version is this run's at this step. Other test-time views are another export.
    export_dir = tmp_path / "export"
    rerun = _train(_config(data, model_dir, max_train_steps=3, export_dir=str(export_dir)),
                   ONE_DEVICE)
    assert (rerun.step, rerun.export_path) == (3, second.export_path)
    assert [path.name for path in export_dir.iterdir()] == [Path(second.export_path).name]
    with_views = _train(_config(data, model_dir, max_train_steps=3, export_dir=str(export_dir),
                                export_tta=2), ONE_DEVICE)
    assert with_views.export_path != second.export_path
    assert len(list(export_dir.iterdir())) == 2

    # Mismatched architecture or data on resume: a one-line error before anything is built.
    with pytest.raises(ValueError, match=r"trained with resnet_size=18, this run has "
                                         r"resnet_size=34") as error:
        _train(_config(data, model_dir, resnet_size=34), ONE_DEVICE)
    assert "\n" not in str(error.value)
    three = tiny_dataset(tmp_path / "three", classes=("Chest", "Hand", "Head"))
    with pytest.raises(ValueError, match="trained with num_classes=2, this run has num_classes=3"):
        _train(_config(three, model_dir), ONE_DEVICE)
    with pytest.raises(ValueError, match="trained with version=2, this run has version=1"):
        _train(_config(data, model_dir, version=1), ONE_DEVICE)
    saved_batch = json.load(open(model_dir / "config.json"))["batch_size"]
    with pytest.raises(ValueError, match=f"trained with batch_size={saved_batch}, this run has "
                                         f"batch_size={saved_batch * 2}"):
        _train(_config(data, model_dir, batch_size=saved_batch * 2), ONE_DEVICE)


def test_a_corrupt_record_names_its_shard_and_the_failed_run_binds_nothing(tmp_path):
    """A shard of the right size with altered bytes (the manifest's size check passes) stops
    the run with one line naming the shard: a training shard before anything is written (the
    trainer's look at a sample of the training images reads it), a validation shard at the
    first validation. That run wrote config.json but no checkpoint, so a rerun with other
    settings starts afresh instead of being refused."""
    data = tiny_dataset(tmp_path / "data")
    model_dir = tmp_path / "model"
    for split in ("train", "validation"):
        corrupt = tmp_path / f"corrupt_{split}"
        shutil.copytree(data, corrupt)
        manifest = json.loads((corrupt / "manifest.json").read_text())
        shard = manifest["splits"][split]["files"][0]["path"]
        with open(corrupt / shard, "r+b") as handle:  # inside the first record's payload
            handle.seek(40)
            handle.write(b"\xff" * 8)
        with pytest.raises(ValueError) as error:
            _train(_config(corrupt, model_dir, max_train_steps=1), ONE_DEVICE)
        message = str(error.value)
        assert message.startswith(f"{corrupt}: corrupt record in {shard} (") and "\n" not in message
        assert "SHA-256 differs" in message
        assert (model_dir / "config.json").is_file() == (split == "validation")
        assert not _checkpoint_steps(model_dir)
    rerun = _train(_config(data, model_dir, resnet_size=34, max_train_steps=1), ONE_DEVICE)
    assert (rerun.step, rerun.model_name) == (1, "resnet34_v2")
    # A damaged checkpoint is the checkpoint's fault, not the records'.
    (weights,) = model_dir.glob("ckpt-1.data-*")
    with open(weights, "r+b") as handle:
        handle.seek(weights.stat().st_size // 2)
        handle.write(b"\x00" * 64)
    record = (model_dir / "config.json").read_bytes()
    with pytest.raises(ValueError, match=r"ckpt-1: damaged checkpoint \(.*\); remove it"):
        _train(_config(data, model_dir, resnet_size=34, max_train_steps=2,
                       base_learning_rate=0.05), ONE_DEVICE)
    # A run that could not resume leaves the folder's record of its checkpoints as it was.
    assert (model_dir / "config.json").read_bytes() == record
    with open(weights, "r+b") as handle:  # cut short (a copy that stopped): an IndexError
        handle.truncate(weights.stat().st_size // 2)
    with pytest.raises(ValueError, match=r"ckpt-1: damaged checkpoint \(.*\); remove it"):
        _train(_config(data, model_dir, resnet_size=34, max_train_steps=2), ONE_DEVICE)


def test_bad_data_and_batch_errors(tmp_path):
    empty = write_converted_dataset(tmp_path / "empty", {"train": {}, "validation": {"Chest": 2}})
    with pytest.raises(ValueError, match="split 'train' has no records"):
        _train(_config(empty, tmp_path / "m1"), ONE_DEVICE)
    with pytest.raises(FileNotFoundError, match="nothing: no such folder"):
        _train(_config(tmp_path / "nothing", tmp_path / "m2"), ONE_DEVICE)
    data = tiny_dataset(tmp_path / "data", train_per_class=2, eval_per_class=1)
    with pytest.raises(ValueError, match="--batch_size=7 is not divisible by the 2 replicas"):
        _train(_config(data, tmp_path / "m3", batch_size=7),
                              mirrored_strategy())
    with pytest.raises(ValueError, match="--loss_scale is only used with --dtype=fp16"):
        _config(data, tmp_path / "m4", loss_scale=128.0)


def test_loop_under_mirrored_strategy(tmp_path):
    """Two replicas; 8 evaluation examples in batches of 6: the last batch is padded, and
    the padding is not counted."""
    data = tiny_dataset(tmp_path / "data")
    result = _train(
        _config(data, tmp_path / "model", batch_size=6, train_epochs=1, steps_per_loop=2),
        mirrored_strategy())
    assert (result.step, result.stopped_by, result.eval_examples) == (2, "train_epochs", 8)
    assert _checkpoint_steps(tmp_path / "model") == [2]


def test_synthetic_data_and_nan_loss_stops_with_the_step(tmp_path):
    """--use_synthetic_data needs no data_dir; a diverging run stops and names the step."""
    config = _config(None, tmp_path / "model", use_synthetic_data=True, synthetic_num_classes=4,
                     base_learning_rate=1e9, lr_scaling="none", warmup_epochs=0,
                     max_train_steps=5)
    with pytest.raises(FloatingPointError, match=r"NaN/Inf at step [1-5]; stopped without"):
        _train(config, ONE_DEVICE)
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["class_names"] == ["class_0", "class_1", "class_2", "class_3"]
    assert _checkpoint_steps(tmp_path / "model") == []


def test_learning_rate_schedule_scales_the_official_boundaries(tmp_path):
    # 100 epochs x 10 steps, batch 512: peak 0.2, 5 warm-up epochs, decay at epochs 30/60/80/90.
    schedule = _schedule(_config(None, tmp_path, batch_size=512, train_epochs=100),
                         steps_per_epoch=10)
    rate = {step: float(schedule(step)) for step in (0, 49, 50, 299, 300, 600, 800, 900, 999)}
    assert rate[0] == pytest.approx(0.2 / 50) and rate[49] == pytest.approx(0.2)
    assert rate[50] == rate[299] == pytest.approx(0.2)
    assert [rate[s] for s in (300, 600, 800, 900)] == pytest.approx([0.02, 2e-3, 2e-4, 2e-5])
    # A 10-epoch run keeps the shape: decay at epochs 3/6/8/9, warm-up half an epoch.
    short = _schedule(_config(None, tmp_path, batch_size=256, train_epochs=10),
                      steps_per_epoch=10)
    assert [float(short(s)) for s in (5, 29, 30, 60, 80, 90)] == pytest.approx(
        [0.1, 0.1, 0.01, 1e-3, 1e-4, 1e-5])


def test_a_resume_with_changed_training_settings_says_so_and_keeps_them(tmp_path, caplog):
    """Accepted, but said: a longer --train_epochs lays the schedule over the new length (the
    rate jumps), and config.json, which records the last run's flags, keeps each change."""
    data = tiny_dataset(tmp_path / "data")  # 2 steps an epoch
    model_dir = tmp_path / "model"
    _train(_config(data, model_dir, train_epochs=2, max_train_steps=3), ONE_DEVICE)
    caplog.clear()
    _train(_config(data, model_dir, train_epochs=3, label_smoothing=0.1, max_train_steps=4),
           ONE_DEVICE)
    # Piecewise over 4 steps, step 3 is past the third decay (x1e-3); over 6, past the first.
    before = float(_schedule(_config(data, model_dir, train_epochs=2), 2)(3))
    after = float(_schedule(_config(data, model_dir, train_epochs=3), 2)(3))
    assert before != after
    assert ("resumed at step 3 with changed settings (config.json's resumed_with keeps them): "
            f"train_epochs 2 -> 3, label_smoothing 0.0 -> 0.1; learning rate after step 3: "
            f"{before:.3g} -> {after:.3g}") in caplog.text
    saved = json.loads((model_dir / "config.json").read_text())
    history = [{"step": 3, "changes": {"train_epochs": [2, 3], "label_smoothing": [0.0, 0.1]}}]
    assert saved["resumed_with"] == history and saved["label_smoothing"] == 0.1
    # A resume without changes says nothing and keeps the history.
    caplog.clear()
    _train(_config(data, model_dir, train_epochs=3, label_smoothing=0.1, max_train_steps=5),
           ONE_DEVICE)
    assert "changed settings" not in caplog.text
    assert json.loads((model_dir / "config.json").read_text())["resumed_with"] == history


def test_a_resumed_run_adds_its_run_record_beside_the_first(tmp_path):
    # A resume is a second logger on the same --benchmark_log_dir: the first run's record must
    # stay, so every run_id in metric.log still names its flags and machine.
    runs = [logger_lib.BenchmarkLogger(str(tmp_path)) for _ in range(2)]
    for number, run in enumerate(runs):
        run.log_run_info("resnet18_v2", {"max_train_steps": number + 2})
        run.log_metric("accuracy", 0.5, global_step=number + 2)
    records = [json.loads(line) for line in
               (tmp_path / logger_lib.RUN_LOG).read_text().splitlines()]
    metrics = [json.loads(line) for line in
               (tmp_path / logger_lib.METRIC_LOG).read_text().splitlines()]
    assert [r["run_parameters"]["max_train_steps"] for r in records] == [2, 3]
    assert [m["run_id"] for m in metrics] == [r["run_id"] for r in records]
    assert records[0]["run_id"] != records[1]["run_id"]


def test_bigquery_needs_its_package():
    try:
        from google.cloud import bigquery  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="needs the google-cloud-bigquery package"):
            logger_lib.BenchmarkLogger(None, gcp_project="project")
    else:
        pytest.skip("google-cloud-bigquery is installed; the missing-package error cannot occur")


def test_cli_errors_are_one_line(tmp_path):
    result = run_trainer(f"--data_dir={tmp_path / 'nothing'}", f"--model_dir={tmp_path / 'm'}",
                         *FAST_FLAGS, without_tensorflow=True)
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "nothing: no such folder" in lines[0], result.stderr


def test_original_readme_command_on_mednist(shared_data, tmp_path):
    """The original README's example command, verbatim apart from paths and a short run
    (one step, at 64 px instead of the default 224: a step and an evaluation of ResNet-152 at
    224 px cost ~15 s more on two CPUs, and the network and the loop are the same at any
    size). The conversion keeps a 1% validation split."""
    source = shared_data / "mednist-3000"
    if not source.is_dir():
        pytest.skip(f"needs {source}")
    data = tmp_path / "mednist"
    convert = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tf_convert_data.py"), "--dataset_name=dicom",
         f"--dataset_dir={source}", "--output_name=dicom_train", f"--output_dir={data}",
         "--need_split=tvt_split", "--validation_size=0.01"], capture_output=True, text=True, env=trainer_env(),
        cwd=REPO_ROOT, timeout=600)
    assert convert.returncode == 0, convert.stderr[-2000:]
    result = run_trainer(
        f"--data_dir={data}", f"--model_dir={tmp_path / 'model'}", "--train_epochs=100",
        "--epochs_between_evals=1", "--batch_size=32", "--version=2", "--resnet_size=152",
        "--multi_gpu=False", "--max_train_steps=1", "--image_size=64", timeout=1200)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resnet152_v2: step 1 (new run, stopped by max_train_steps)" in result.stdout
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["num_classes"] == 6 and config["image_size"] == 64
    assert (config["resnet_size"], config["version"], config["batch_size"]) == (152, 2, 32)
