"""SavedModel export: both signatures equal the in-memory model; rebuilding from a model_dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from dataset import preprocess
from official.core import export, restore
from tests.conftest import REPO_ROOT
from tests.trainer_fixtures import class_image, png_bytes

CONFIG = {"resnet_size": 18, "version": 1, "num_classes": 3, "class_names": ["A", "B", "C"],
          "image_size": 32, "channels": 1, "small_input": False, "data_format": "channels_last"}


def _model_with_nontrivial_statistics():
    """Batch-norm moving statistics taken from one batch of test images, so inference-mode
    batch norm is not an identity and the probabilities depend on the image. (Random
    statistics were tried first: at initialisation the activations are so much smaller than
    a variance of ~1 that they vanish by stage 2, and every image got the same answer.)"""
    model = restore.build_inference_model(CONFIG)
    layers = [layer for layer in model._flatten_layers()
              if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0  # the moving statistics become this batch's
    batch = preprocess.preprocess_for_eval(tf.constant(_images(8, seed=2)), image_size=32)
    model(batch, training=True)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    return model


def _images(count=5, size=40, seed=1):
    rng = np.random.default_rng(seed)
    return np.stack([class_image(rng, i % 3, size) for i in range(count)])[..., None]


def _expected(model, images):
    batch = tf.stack([preprocess.preprocess_for_eval(tf.constant(image), image_size=32)
                      for image in images])
    return tf.nn.softmax(model(batch, training=False)).numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = _model_with_nontrivial_statistics()
    export_dir = tmp_path_factory.mktemp("export")
    path = export.export_saved_model(model, CONFIG, str(export_dir))
    return model, export_dir, path


def test_export_layout(exported):
    _, export_dir, path = exported
    assert os.path.dirname(path) == str(export_dir) and os.path.basename(path).isdigit()
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    saved = json.loads(open(os.path.join(path, "assets.extra", "config.json")).read())
    assert saved["class_names"] == CONFIG["class_names"]
    assert not [name for name in os.listdir(export_dir) if name.startswith(".tmp")]


def test_export_logs_no_tensorflow_info_lines(tmp_path):
    """Saving logged every captured variable's name at INFO (pages of text for ResNet-152).

    Run in a fresh process, as the trainer does: inside the pytest process TensorFlow happened
    not to log these lines even without the fix, so an in-process check could not fail.
    """
    program = (
        "import json, logging, sys\n"
        "logging.basicConfig(level=logging.INFO)  # what an absl program at INFO shows\n"
        "logging.getLogger('tensorflow').setLevel(logging.INFO)\n"
        "from official.core import export, restore\n"
        "config = json.loads(sys.argv[1])\n"
        "export.export_saved_model(restore.build_inference_model(config), config, sys.argv[2])\n"
        "assert logging.getLogger('tensorflow').level == logging.INFO\n"
        "assert logging.getLogger('absl').level == logging.NOTSET  # levels restored\n")
    result = subprocess.run([sys.executable, "-c", program, json.dumps(CONFIG),
                             str(tmp_path / "export")], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "unsupported characters" not in result.stderr
    assert max(len(line) for line in result.stderr.splitlines() or [""]) < 300
    assert len(os.listdir(tmp_path / "export")) == 1


def test_signatures_equal_the_in_memory_model(exported):
    model, _, path = exported
    images = _images()
    expected = _expected(model, images)
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == {"serving_default", "predict_images"}

    by_bytes = loaded.signatures["serving_default"](
        image_bytes=tf.constant([png_bytes(image[..., 0]) for image in images]))
    by_pixels = loaded.signatures["predict_images"](images=tf.constant(images, tf.float32))
    for outputs in (by_bytes, by_pixels):
        # 1e-4: the graph and the eager model may pick different oneDNN kernels (AMX bf16-free
        # fp32 paths differ in summation order); a preprocessing mismatch is far larger.
        np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-4)
        ids = expected.argmax(axis=1)
        np.testing.assert_array_equal(outputs["class_ids"].numpy(), ids)
        assert [n.decode() for n in outputs["class_names"].numpy()] == [
            CONFIG["class_names"][i] for i in ids]


def test_second_export_gets_a_new_version(exported):
    model, export_dir, first = exported
    second = export.export_saved_model(model, CONFIG, str(export_dir))
    assert int(os.path.basename(second)) > int(os.path.basename(first))


def test_an_interrupted_export_leaves_no_folder(exported, tmp_path, monkeypatch):
    """Ctrl-C (or a full disk) after the SavedModel is saved, before its config is written:
    the half-written version folder is removed, and the interruption goes on up."""
    model = exported[0]

    def interrupt(*args, **kwargs):
        assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]  # mid-export
        raise KeyboardInterrupt

    monkeypatch.setattr(export.json, "dump", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export.export_saved_model(model, CONFIG, str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_a_killed_exports_folder_is_removed_by_the_next_export(exported, tmp_path):
    """A SIGKILL mid-export (the out-of-memory killer) left its .tmp- folder, as big as a
    version, for ever. The next export into the folder removes it, but never a live export's
    nor one from another machine (an export_dir on a shared file system: its pid means
    nothing here)."""
    import socket
    import subprocess
    import sys

    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)
    host = socket.gethostname()
    dead = f".tmp-1700000000-{host}-{gone}-0123abcd"
    alive = f".tmp-1700000000-{host}-{os.getpid()}-0123abcd"
    elsewhere = f".tmp-1700000000-other-host-{gone}-0123abcd"
    for name in (dead, alive, elsewhere):
        (tmp_path / name / "variables").mkdir(parents=True)
    path = export.export_saved_model(exported[0], CONFIG, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(path), alive, elsewhere])


def test_a_rerun_reuses_the_newest_export_only_when_it_is_its_own(tmp_path):
    """A finished training rerun exported an identical copy each time. Its export is reused
    only while it is the newest version (what TF Serving serves): after another run's, a new
    export makes this run's the served one again."""
    run = {"model_dir": str(tmp_path / "run"), "exported_step": 40, "export_tta": 1}

    def version(name, config):
        (tmp_path / "export" / name / export.ASSETS_EXTRA).mkdir(parents=True)
        (tmp_path / "export" / name / "saved_model.pb").write_bytes(b"")
        (tmp_path / "export" / name / export.ASSETS_EXTRA / "config.json").write_text(
            json.dumps(config))

    assert export.newest_is_of(str(tmp_path / "export"), run) is None  # no folder yet
    version("100", run)
    assert export.newest_is_of(str(tmp_path / "export"), {**run, "model_dir": f"{tmp_path}/run/"}
                               ) == str(tmp_path / "export" / "100")
    for other in ({"exported_step": 41}, {"export_tta": 3}):  # trained on, or other views
        assert export.newest_is_of(str(tmp_path / "export"), {**run, **other}) is None
    version("101", {**run, "model_dir": str(tmp_path / "another_run")})
    assert export.newest_is_of(str(tmp_path / "export"), run) is None


def test_a_model_dir_holding_exports_is_read_as_a_model_dir(tmp_path):
    """A run once exported into its own model_dir: evaluating the folder read that export,
    however much the run had trained since (and refused --checkpoint as "a SavedModel")."""
    from official.core.model_paths import resolve_saved_model

    (tmp_path / "17").mkdir()
    (tmp_path / "17" / "saved_model.pb").write_bytes(b"")
    assert resolve_saved_model(str(tmp_path)) == str(tmp_path / "17")  # an export folder
    (tmp_path / "config.json").write_text("{}")  # the trainer's: a model_dir
    assert resolve_saved_model(str(tmp_path)) is None
    assert resolve_saved_model(str(tmp_path / "17")) == str(tmp_path / "17")


def test_load_model_from_dir(tmp_path, monkeypatch):
    model = _model_with_nontrivial_statistics()
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(tmp_path), 3)
    manager.save(checkpoint_number=7)
    rebuilt, config = restore.load_model_from_dir(str(tmp_path))
    assert config == CONFIG
    images = _images(3)
    np.testing.assert_allclose(_expected(rebuilt, images), _expected(model, images), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="ckpt-99: no such checkpoint"):
        restore.load_model_from_dir(str(tmp_path), str(tmp_path / "ckpt-99"))
    with pytest.raises(FileNotFoundError, match="elsewhere: no such folder"):
        restore.load_model_from_dir(str(tmp_path / "elsewhere"))
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json: not found"):
        restore.load_model_from_dir(str(tmp_path / "elsewhere"))
    # --checkpoint=ckpt-7 next to --model=<model_dir>: a bare name is found inside the
    # model_dir (from a working directory that does not hold it).
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    rebuilt, _ = restore.load_model_from_dir(str(tmp_path), "ckpt-7")
    np.testing.assert_allclose(_expected(rebuilt, images), _expected(model, images), atol=1e-6)
    assert restore.resolve_checkpoint(str(tmp_path), "ckpt-7") == str(tmp_path / "ckpt-7")
    with pytest.raises(FileNotFoundError) as error:
        restore.load_model_from_dir(str(tmp_path), "ckpt-8")
    assert str(error.value) == (f"ckpt-8: no such checkpoint (looked for ckpt-8.index and "
                                f"{tmp_path / 'ckpt-8'}.index); {tmp_path} keeps ckpt-7")


def test_tf1_style_loader_finds_the_variables(exported, tmp_path):
    """TF Serving and saved_model_cli load through the TF1 session loader; Keras 3 variables
    must be tracked so it restores them (without the fix: 'Could not find variable ...')."""
    model, _, path = exported
    images = _images().astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    import subprocess
    import sys

    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "tf.compat.v1.disable_eager_execution()\n"
        "with tf.compat.v1.Session(graph=tf.Graph()) as sess:\n"
        "    meta = tf.compat.v1.saved_model.loader.load(sess, ['serve'], sys.argv[1])\n"
        "    sig = meta.signature_def['predict_images']\n"
        "    out = sess.run(sig.outputs['probabilities'].name,\n"
        "                   {sig.inputs['images'].name: np.load(sys.argv[2])})\n"
        "    np.save(sys.argv[3], out)\n")
    result = subprocess.run([sys.executable, "-c", script, path, str(tmp_path / "images.npy"),
                             str(tmp_path / "out.npy")], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-1500:]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), _expected(model, _images()),
                               atol=1e-4)


TTA_VIEWS = 5


def _expected_with_views(model, images, num_views):
    """TTA by hand: each view of the resized image (rounded to uint8, as a client would send
    it) through preprocess_for_eval and the model on its own, then the plain mean."""
    from dataset import test_time

    resized = tf.stack([preprocess.resize_square(tf.constant(image), 32) for image in images])
    views = tf.reshape(test_time.test_time_views(resized, num_views),
                       (num_views, len(images), 32, 32, 1))
    per_view = []
    for view in views:
        pixels = tf.cast(tf.round(tf.clip_by_value(view, 0.0, 255.0)), tf.uint8)
        batch = preprocess.preprocess_for_eval(pixels, image_size=32)
        per_view.append(tf.nn.softmax(model(batch, training=False)).numpy())
    return np.mean(per_view, axis=0)


@pytest.fixture(scope="module")
def exported_with_views(exported, tmp_path_factory):
    model = exported[0]
    # A training config that asked for no views (--export_tta=1), exported with some, as
    # dicom_export.py --tta does.
    return model, export.export_saved_model(model, {**CONFIG, "export_tta": 1},
                                            str(tmp_path_factory.mktemp("tta")),
                                            tta_views=TTA_VIEWS)


def test_tta_export_averages_the_per_view_probabilities(exported_with_views, exported):
    model, path = exported_with_views
    images = _images()
    expected = _expected_with_views(model, images, TTA_VIEWS)
    loaded = tf.saved_model.load(path)
    by_bytes = loaded.signatures["serving_default"](
        image_bytes=tf.constant([png_bytes(image[..., 0]) for image in images]))
    by_pixels = loaded.signatures["predict_images"](images=tf.constant(images, tf.float32))
    for outputs in (by_bytes, by_pixels):
        np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-5)
        np.testing.assert_array_equal(outputs["class_ids"].numpy(), expected.argmax(axis=1))
    np.testing.assert_allclose(by_bytes["probabilities"].numpy(),
                               by_pixels["probabilities"].numpy(), atol=1e-6)
    # The views do change the answer (else this test could not tell TTA from none).
    assert np.abs(expected - _expected(model, images)).max() > 1e-4
    saved = json.loads(open(os.path.join(path, "assets.extra", "config.json")).read())
    assert saved["tta_views"] == TTA_VIEWS and saved["class_names"] == CONFIG["class_names"]
    assert saved["export_tta"] == TTA_VIEWS  # not the training run's stale 1
    plain = json.loads(open(os.path.join(exported[2], "assets.extra", "config.json")).read())
    assert plain["tta_views"] == plain["export_tta"] == 1


def test_tta_out_of_range_is_refused_before_writing(tmp_path):
    model = restore.build_inference_model(CONFIG)
    for views in (0, 99):
        with pytest.raises(ValueError, match=r"test-time views must be an int in \[1, "):
            export.export_saved_model(model, CONFIG, str(tmp_path / "export"), tta_views=views)
        with pytest.raises(ValueError, match="test-time views"):
            export.ServingModule(model, CONFIG, tta_views=views)
    assert not (tmp_path / "export").exists()


def test_exports_into_one_folder_in_the_same_second_keep_apart(exported, tmp_path, monkeypatch):
    """Another export into the same export_dir in the same second (its temporary folder still
    being written, then its version taken): this one writes a folder of its own and takes
    the next version, leaving the other's files alone."""
    model = exported[0]
    monkeypatch.setattr(export.time, "time", lambda: 1000.0)
    other = tmp_path / ".tmp-1000"  # the other export's folder as it was named before
    (other / "variables").mkdir(parents=True)
    (other / "saved_model.pb").write_bytes(b"the other export's")
    real_rename = os.rename

    def other_finishes_first(source, destination):
        if destination == str(tmp_path / "1000") and not os.path.exists(destination):
            real_rename(other, destination)  # the other export takes version 1000 now
        real_rename(source, destination)

    monkeypatch.setattr(export.os, "rename", other_finishes_first)
    path = export.export_saved_model(model, CONFIG, str(tmp_path))
    assert path == str(tmp_path / "1001")
    assert (tmp_path / "1000" / "saved_model.pb").read_bytes() == b"the other export's"
    assert sorted(os.listdir(tmp_path)) == ["1000", "1001"]
    assert tf.saved_model.load(path).signatures["predict_images"] is not None
    # The umask's permissions, as any folder made here (a TF Serving running as another user
    # reads it): not the 0700 of a tempfile.mkdtemp.
    os.mkdir(tmp_path / "plain")
    assert os.stat(path).st_mode & 0o777 == os.stat(tmp_path / "plain").st_mode & 0o777
