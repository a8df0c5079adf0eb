"""networks/slim through the shared loop and the CLIs: one network runs the loop end to end
(train, resume, export holding the last checkpoint's weights); fp16 with a fixed loss scale;
--checkpoint_path, --trainable_scopes and --checkpoint_exclude_scopes; pretrained weight files;
the CLIs. Each network of the table on its own: tests/test_slim_networks.py. Nothing is
downloaded (weights=None everywhere)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

from networks import registry
from networks.slim import choices, nets, scopes, slim_eval, slim_train
from official.core import restore, train_lib
from official.core.config import DTYPE_POLICIES, TrainConfig
from official.core.inference import Predictor
from tests.trainer_fixtures import (REPO_ROOT, error_lines, mirrored_strategy, tiny_dataset,
                                    trainer_env)

ONE_DEVICE = tf.distribute.OneDeviceStrategy("/cpu:0")
TRAIN_SCRIPT = REPO_ROOT / "networks" / "slim" / "train_image_classifier.py"
EVAL_SCRIPT = REPO_ROOT / "networks" / "slim" / "eval_image_classifier.py"
FAST = "mobilenet_v3_small"  # the quickest network to build and step


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("slim") / "data")  # 16 train, 8 validation


@pytest.fixture(scope="module")
def one_step_run(data, tmp_path_factory):
    """A train_dir of FAST after one step (everything trainable): a --checkpoint_path source,
    a run to resume with other settings, a run to evaluate. Tests only read it (evaluation
    adds its report folder)."""
    run = tmp_path_factory.mktemp("one_step") / "run"
    _train(data, run, FAST, steps=1)
    return run


def _train(data, train_dir, model_name, *, steps, image_size=None, export_dir=None,
           strategy=ONE_DEVICE, checkpoint_every_steps=0, config_overrides=None, **slim):
    config = TrainConfig(**(config_overrides or {}),
        model_dir=str(train_dir), data_dir=str(data), batch_size=4, train_epochs=10**6,
        max_train_steps=steps, hooks=(), num_parallel_calls=2, seed=1,
        checkpoint_every_steps=checkpoint_every_steps, steps_per_loop=1,
        image_size=image_size or nets.NETWORKS[model_name].min_image_size,
        weight_decay=4e-5, export_dir=export_dir and str(export_dir))
    slim_config = slim_train.SlimConfig(model_name=model_name, **slim)
    slim_train.check_resume(config.model_dir, slim_config)
    return train_lib.train(config, strategy, slim_train.SlimNetwork(slim_config))


def _weights_by_path(model) -> dict[str, list[np.ndarray]]:
    return {path: layer.get_weights() for path, layer in scopes.layer_paths(model)}


# The loop, resume and export are the same code for every network (official/core): one
# network runs them end to end (VGG: the quickest to trace; FAST also goes through the loop in
# one_step_run and the --checkpoint_path test); every network gets the cheap test below.
END_TO_END = ("vgg_16",)


@pytest.mark.parametrize("model_name", END_TO_END)
def test_trains_resumes_and_exports_end_to_end(data, tmp_path, model_name):
    """At its minimum size through the shared loop: one step (data, strategy, checkpoint,
    evaluation, benchmark log); a restart resumes it and takes a step (optimizer state
    restored); a restart of the finished run takes none and exports. A step moves the weights,
    the SavedModel (the network rebuilt from config.json) holds the last checkpoint's weights
    and serves, and Predictor on the model_dir and on the export agree on encoded images (the
    whole prediction path, decoding included)."""
    run, bench = tmp_path / "run", tmp_path / "bench"
    assert _train(data, run, model_name, steps=1,
                  config_overrides={"benchmark_log_dir": str(bench)}).step == 1
    assert json.loads((bench / "benchmark_run.log").read_text())["model_name"] == model_name
    resumed = _train(data, run, model_name, steps=2)
    assert (resumed.resumed_from_step, resumed.step) == (1, 2)
    finished = _train(data, run, model_name, steps=2, export_dir=tmp_path / "export")
    assert (finished.resumed_from_step, finished.step) == (2, 2)

    loaded = tf.saved_model.load(finished.export_path)
    exported = _fingerprints(v.numpy() for v in loaded.serving_variables)
    assert len(exported) > 10
    # Every exported weight is one of the last checkpoint's values, and not all of them were
    # there after the first step: the export serves the resumed checkpoint, and a step moved
    # the weights. (Export rebuilt the network from config.json to write it.)
    assert exported <= _checkpoint_fingerprints(run / "ckpt-2")
    assert not exported <= _checkpoint_fingerprints(run / "ckpt-1")
    size = json.loads((run / "config.json").read_text())["image_size"]
    pixels = tf.cast(tf.random.stateless_uniform((2, size, size, 1), seed=(1, 2), maxval=256,
                                                 dtype=tf.int32), tf.float32)
    served = loaded.signatures["predict_images"](images=pixels)
    assert served["probabilities"].shape == (2, 2) and served["probabilities"].dtype == tf.float32
    np.testing.assert_allclose(tf.reduce_sum(served["probabilities"], axis=1), 1.0, rtol=1e-5)
    images = tf.stack([tf.io.encode_png(tf.cast(tf.fill((40, 40, 1), value), tf.uint8))
                       for value in (30, 200)])
    np.testing.assert_allclose(Predictor(str(run))(images),
                               Predictor(finished.export_path)(images), atol=1e-5)


def _fingerprints(arrays) -> set:
    # Float arrays only: the weights. (int64 random-seed states of dropout layers are
    # per model object, not part of what was trained.)
    return {(a.dtype.str, a.shape, hashlib.sha256(np.ascontiguousarray(a).tobytes()).digest())
            for a in arrays if a.dtype.kind == "f"}


def _checkpoint_fingerprints(prefix) -> set:
    reader = tf.train.load_checkpoint(str(prefix))
    return _fingerprints(reader.get_tensor(name) for name, _ in tf.train.list_variables(str(prefix))
                         if name != "_CHECKPOINTABLE_OBJECT_GRAPH")


def test_fp16_with_a_fixed_loss_scale_trains_in_half_precision(data, tmp_path):
    """--dtype=fp16 for a Slim network (the GPU setting): float16 compute, float32 weights
    and logits, and the scaled step moves the weights."""
    run = tmp_path / "run"
    result = _train(data, run, FAST, steps=2, checkpoint_every_steps=1,
                    config_overrides={"dtype": "fp16", "loss_scale": 128.0})
    assert result.step == 2 and np.isfinite(result.eval_loss)
    config = json.loads((run / "config.json").read_text())
    assert (config["dtype"], config["loss_scale"]) == ("fp16", 128.0)
    # The network as the run built it (its dtype policy from config.json):
    model = registry.build_model(registry.spec_from_config(config),
                                 dtype_policy=DTYPE_POLICIES[config["dtype"]])
    assert model.get_layer("logits").compute_dtype == "float32"
    assert "float16" in {layer.compute_dtype for layer in model.layers}
    assert {v.dtype for v in model.weights} == {"float32"}
    restored, _ = restore.load_model_from_dir(str(run), str(run / "ckpt-1"))
    after_one = restored.get_weights()
    tf.train.Checkpoint(model=restored).restore(str(run / "ckpt-2")).expect_partial()
    assert any(not np.array_equal(a, b) for a, b in zip(after_one, restored.get_weights()))


def test_resume_refuses_other_scopes_or_network(data, one_step_run):
    with pytest.raises(ValueError, match="trainable_scopes"):
        _train(data, one_step_run, FAST, steps=2, trainable_scopes=("logits",))
    with pytest.raises(ValueError, match="model_name"):
        slim_train.check_resume(str(one_step_run), slim_train.SlimConfig(model_name="vgg_16"))


def test_checkpoint_path_then_only_trainable_scopes_change(data, one_step_run, tmp_path):
    source, _ = restore.load_model_from_dir(str(one_step_run))
    trainable = ("logits", "MobileNetV3Small/expanded_conv_10_")
    # Mirrored over two CPU replicas: the weights are loaded into mirrored variables.
    _train(data, tmp_path / "b", FAST, steps=3, checkpoint_path=str(one_step_run),
           trainable_scopes=trainable, optimizer="momentum", learning_rate=0.1,
           strategy=mirrored_strategy())
    tuned, _ = restore.load_model_from_dir(str(tmp_path / "b"))
    before, after = _weights_by_path(source), _weights_by_path(tuned)
    changed = {path for path in before
               if any(not np.array_equal(x, y) for x, y in zip(before[path], after[path]))}
    allowed = {path for path in before if path.startswith(trainable)}
    assert changed <= allowed  # frozen layers, batch-norm statistics included, bit-identical
    assert "logits" in changed and "MobileNetV3Small/expanded_conv_10_project_bn" in changed


def test_checkpoint_exclude_scopes_keep_the_fresh_initialisation(one_step_run):
    source, _ = restore.load_model_from_dir(str(one_step_run))
    model = nets.build_network(FAST, 2, image_size=32)
    fresh = _weights_by_path(model)
    # Slim's spelling of the head ("<Net>/Logits") works, "<Net>/AuxLogits" is ignored.
    loaded, kept = scopes.load_pretrained(
        model, FAST, 32, str(one_step_run),
        scopes.normalize_scopes(("MobileNetV3Small/conv_1", "Net/Logits", "Net/AuxLogits")))
    excluded = {"MobileNetV3Small/conv_1", "MobileNetV3Small/conv_1_bn", "logits"}
    assert kept == len(excluded) and loaded == len(fresh) - len(excluded)
    now, trained = _weights_by_path(model), _weights_by_path(source)
    for path in fresh:
        expected = fresh[path] if path in excluded else trained[path]
        assert all(np.array_equal(x, y) for x, y in zip(now[path], expected)), path


def test_weights_h5_and_keras_files_load_into_the_backbone(tmp_path):
    keras.utils.set_random_seed(3)
    backbone = nets.build_backbone(FAST, 32)
    backbone.save_weights(str(tmp_path / "notop.weights.h5"))
    backbone.save(str(tmp_path / "legacy.h5"))  # Keras 2's HDF5, like the *_notop.h5 downloads
    # A whole keras.applications model with its own top, as users save after download.
    full = keras.applications.MobileNetV3Small(weights=None, input_shape=(32, 32, 3), classes=5)
    full.save(str(tmp_path / "full.keras"))
    for path, reference in ((tmp_path / "notop.weights.h5", backbone),
                            (tmp_path / "legacy.h5", backbone),
                            (tmp_path / "full.keras", full)):
        model = nets.build_network(FAST, 2, image_size=32)
        loaded, kept = scopes.load_pretrained(model, FAST, 32, str(path), ())
        assert kept == 1  # only the new head
        expected = nets.weighted_layers(reference)
        for layer, origin in zip(nets.weighted_layers(nets.backbone_of(model)), expected):
            assert all(np.array_equal(x, y)
                       for x, y in zip(layer.get_weights(), origin.get_weights()))
    with pytest.raises(ValueError, match="not weights of vgg_16"):
        scopes.load_pretrained(nets.build_network("vgg_16", 2, image_size=32), "vgg_16", 32,
                               str(tmp_path / "notop.weights.h5"), ())


def test_eval_image_classifier_reports_a_train_dir(data, one_step_run):
    metrics, output_dir = slim_eval.evaluate(
        str(one_step_run / "ckpt-1"), str(data), "validation", batch_size=5,
        model_name="MobileNetV3Small")
    assert metrics["num_examples"] == 8 and 0.0 <= metrics["accuracy"] <= 1.0
    # A named checkpoint's report beside the train_dir's own (it overwrote it).
    assert output_dir == str(one_step_run / "eval_validation-ckpt-1")
    assert (one_step_run / "eval_validation-ckpt-1" / "metrics.json").is_file()
    # The same records in another folder are other data: a folder of their own.
    elsewhere = shutil.copytree(data, data.parent / "site_b")
    _, output_dir = slim_eval.evaluate(str(one_step_run / "ckpt-1"), elsewhere, "validation",
                                       batch_size=5)
    assert output_dir == str(one_step_run / "eval_validation-site_b-ckpt-1")
    with pytest.raises(ValueError, match="holds a mobilenet_v3_small"):
        slim_eval.evaluate(str(one_step_run), str(data), "validation",
                                       batch_size=5, model_name="vgg_16")
    # The split is checked before the model is looked for (a restore can take minutes).
    with pytest.raises(ValueError, match=f"{data}: no split 'nope'; available: train, validation"):
        slim_eval.evaluate(str(one_step_run / "absent"), str(data), "nope", batch_size=5)


@pytest.mark.parametrize("trained, phrase", [("inception_v4", "holds an inception_v4"),
                                             ("vgg_16", "holds a vgg_16")])
def test_eval_model_name_message_reads_as_english(tmp_path, monkeypatch, trained, phrase):
    # The check needs only the train_dir's config.json: a stand-in Predictor spares building
    # (and training) an Inception-v4; "holds a inception_v4" was the message.
    config = {"architecture": trained, "num_classes": 2, "image_size": 75}
    monkeypatch.setattr(slim_eval, "Predictor",
                        lambda path, checkpoint: SimpleNamespace(config=config))
    other = "mobilenet_v3_small"
    data = tiny_dataset(tmp_path / "data")  # the split is checked first
    with pytest.raises(ValueError) as error:
        slim_eval.evaluate(str(tmp_path), str(data), "validation", batch_size=1,
                           model_name=other)
    assert str(error.value) == f"--model_name={other}: {tmp_path} {phrase}"


def test_eval_cli_evaluates_a_checkpoint_named_from_inside_its_train_dir(data, one_step_run):
    # A bare ckpt-1 was ": no such folder" (its train_dir taken as ""), after the import.
    done = subprocess.run([sys.executable, str(EVAL_SCRIPT), "--checkpoint_path=ckpt-1",
                           f"--dataset_dir={data}", "--dataset_split_name=validation",
                           "--model_name=mobilenet_v3_small", "--batch_size=3"],
                          capture_output=True, text=True, timeout=600, cwd=one_step_run,
                          env=trainer_env())
    assert done.returncode == 0, done.stderr[-2000:]
    report = one_step_run / "eval_validation-ckpt-1"
    assert done.stdout.startswith("validation: accuracy ")
    assert done.stdout.rstrip().endswith("on 8 images; report in ./eval_validation-ckpt-1")
    assert json.loads((report / "metrics.json").read_text())["num_examples"] == 8


def _cli(*args, without_tensorflow=False):
    """``without_tensorflow``: the error must come before TensorFlow's import."""
    return subprocess.run([sys.executable, str(TRAIN_SCRIPT), *args], capture_output=True,
                          text=True, timeout=600, cwd=REPO_ROOT,
                          env=trainer_env(without_tensorflow=without_tensorflow))


def test_cli_wrong_model_name_lists_the_valid_names(data, tmp_path):
    done = _cli(f"--dataset_dir={data}", f"--train_dir={tmp_path}", "--model_name=alexnet",
                without_tensorflow=True)
    assert done.returncode == 1
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and "valid names: inception_v3, inception_v4, inception_resnet_v2" in (
        lines[0])
    # The names are checked from networks/slim/choices.py's list, before Keras is imported.
    assert choices.NETWORK_NAMES == tuple(nets.NETWORKS)


def test_cli_missing_checkpoint_path_is_one_line_and_writes_no_train_dir(data, tmp_path):
    # It was refused only once the network was built, after config.json was written.
    missing = tmp_path / "nope.h5"
    done = _cli(f"--dataset_dir={data}", f"--train_dir={tmp_path / 'run'}",
                "--model_name=mobilenet_v3_small", "--image_size=32",
                f"--checkpoint_path={missing}", "--max_number_of_steps=1",
                without_tensorflow=True)
    assert done.returncode == 1
    assert error_lines(done.stderr) == [
        f"train_image_classifier.py: error: --checkpoint_path={missing}: no such file or folder"]
    assert not (tmp_path / "run").exists()


def test_cli_runs_the_original_readme_fine_tuning_command(data, tmp_path):
    done = _cli("--save_interval_secs=3000", "--save_summaries_secs=3000",
                f"--train_dir={tmp_path / 'inception_v4'}", f"--dataset_dir={data}",
                "--checkpoint_exclude_scopes=InceptionV4/Logits,InceptionV4/AuxLogits",
                "--trainable_scopes=InceptionV4/Logits,InceptionV4/AuxLogits",
                "--model_name=inception_v4", "--max_number_of_steps=1",
                "--train_image_size=75", "--batch_size=4",
                "--dataset_name=dicom",  # Slim's core flag: accepted, the data is --dataset_dir's
                "--moving_average_decay=0.5")  # Slim's weight average: the trainer's EMA
    assert done.returncode == 0, done.stderr[-2000:]
    assert "inception_v4: step 1 (new run, stopped by max_train_steps)" in done.stdout
    config = json.loads((tmp_path / "inception_v4" / "config.json").read_text())
    assert config["architecture"] == "inception_v4" and config["image_size"] == 75
    assert config["ema_decay"] == 0.5
    reader = tf.train.load_checkpoint(str(tmp_path / "inception_v4"))
    assert any(name.startswith("ema/") for name in reader.get_variable_to_shape_map())
