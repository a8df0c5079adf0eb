"""The trainer's generalisation flags: augmentation, mixup/cutmix and the weight average (EMA)."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from networks.resnet import train_steps
from official.core import restore, steps, train_input, train_lib
from official.core.config import TrainConfig
from official.modeling import ema
from tests.trainer_fixtures import FAST_FLAGS, error_lines, mirrored_strategy, run_trainer, \
    tiny_dataset, write_converted_dataset

ONE_DEVICE = tf.distribute.OneDeviceStrategy("/cpu:0")


RESNET_18 = train_steps.ResNetNetwork(resnet_size=18, small_input=False)


def _config(data_dir, model_dir, **overrides) -> TrainConfig:
    settings = dict(data_dir=str(data_dir), model_dir=str(model_dir), image_size=32,
                    batch_size=8, train_epochs=1, hooks=(), num_parallel_calls=2, seed=1,
                    checkpoint_every_steps=0)
    settings.update(overrides)
    return TrainConfig(**settings)


def _first_batch(config: TrainConfig):
    spec = train_input.InputSpec.from_config(config)
    return next(iter(train_input.train_dataset(spec, train_input.resolve_data(spec))))


def _input(*args, **overrides) -> train_input.InputSpec:
    return train_input.InputSpec.from_config(_config(*args, **overrides))


def test_inversion_and_mixing_reach_the_training_batches(tmp_path):
    # The mixing partners are a random permutation drawn from TensorFlow's global seed: left
    # to whatever ran earlier in the process, about 2% of draws pair every example with one of
    # its own class (5 + 3 in a batch: 5! 3! / 8!) and the batch comes out unmixed. Seeded,
    # the draw is the same in every run and order.
    tf.random.set_seed(1)
    data = tiny_dataset(tmp_path / "data")
    _, plain_labels = _first_batch(_config(data, tmp_path / "m"))
    assert plain_labels.shape == (8,)
    # A flat dark film (grey 40) comes out bright when inverted, whatever the crop.
    film = tf.fill((40, 40, 1), tf.constant(40, tf.uint8))
    plain = train_input.augment_for_train(film, _input(data, tmp_path / "m"))
    inverted = train_input.augment_for_train(film, _input(data, tmp_path / "m",
                                                          augment_invert=1.0))
    np.testing.assert_allclose(plain.numpy(), 40 / 127.5 - 1, atol=1e-5)
    np.testing.assert_allclose(inverted.numpy(), 215 / 127.5 - 1, atol=1e-5)
    rotated = train_input.augment_for_train(film, _input(data, tmp_path / "m",
                                                         augment_rotate=30))
    assert float(tf.reduce_min(rotated)) < 40 / 127.5 - 1 - 0.1  # dark corners rotated in
    # A frame puts a border of another grey around the film (equal to 40 with odds ~1e-9).
    framed = train_input.augment_for_train(film, _input(data, tmp_path / "m",
                                                        augment_frame=1.0)).numpy()
    assert np.isclose(framed, 40 / 127.5 - 1, atol=1e-3).mean() < 0.95
    # Beta(50, 50) puts the mixing weight near 1/2, so every batch is visibly mixed (with
    # a typical alpha of 0.2-1 a batch may by chance be almost unmixed).
    for flags in ({"mixup_alpha": 50.0}, {"cutmix_alpha": 50.0},
                  {"mixup_alpha": 50.0, "cutmix_alpha": 50.0}):
        images, labels = _first_batch(_config(data, tmp_path / "m", **flags))
        assert images.shape == (8, 32, 32, 1) and labels.shape == (8, 2), flags
        np.testing.assert_allclose(tf.reduce_sum(labels, -1).numpy(), 1.0, atol=1e-6)
        assert np.any((labels.numpy() > 0.01) & (labels.numpy() < 0.99)), flags  # mixed


def test_mirror_swap_relabels_training_examples_as_the_other_side(tmp_path):
    classes = ("kidney-left", "kidney-right", "liver")
    data = write_converted_dataset(
        tmp_path / "data", {"train": {"kidney-left": 6, "kidney-right": 2, "liver": 4},
                            "validation": dict.fromkeys(classes, 1)}, classes=classes)

    def label_counts(**flags):
        # Three batches of 8 are two whole epochs of the 12 images, whatever the shuffle.
        config = _config(data, tmp_path / "m", **flags)
        spec = train_input.InputSpec.from_config(config)
        batches = train_input.train_dataset(spec, train_input.resolve_data(spec)).take(3)
        labels = np.concatenate([labels.numpy() for _, labels in batches])
        return np.bincount(labels, minlength=3).tolist()

    assert label_counts() == [12, 4, 8]
    assert label_counts(mirror_swap=1.0, mirror_axis="up_down") == [4, 12, 8]


def test_random_flip_may_not_undo_the_mirror_swap_across_left_and_right(tmp_path):
    # The flip comes after the swap: on the left-right axis it mirrored half the swapped
    # images back and kept their new label (19 of 40 right labels on left-side images).
    with pytest.raises(ValueError, match="--random_flip with --mirror_swap"):
        _config(tmp_path, tmp_path / "m", random_flip=True, mirror_swap=0.5)
    # Where the rows carry left and right, the left-right flip is a front-back mirror...
    assert _config(tmp_path, tmp_path / "m", random_flip=True, mirror_swap=0.5,
                   mirror_axis="up_down").random_flip
    # ...unless a quarter turn came first: a half turn then the flip is the up-down mirror,
    # which undid the swap (23 of 40 right labels on the unmirrored shape, 1 without the flip).
    with pytest.raises(ValueError, match="--augment_rot90=0.5 turns images before the flip"):
        _config(tmp_path, tmp_path / "m", random_flip=True, mirror_swap=0.5,
                mirror_axis="up_down", augment_rot90=0.5)
    # A turn of over 90 degrees, then the flip, moves a side past the midline (at 180, the
    # up-down mirror again); 90 and less keeps each side on its half.
    with pytest.raises(ValueError, match="--augment_rotate=120.0 turns images by over 90"):
        _config(tmp_path, tmp_path / "m", random_flip=True, mirror_swap=0.5,
                mirror_axis="up_down", augment_rotate=120.0)
    assert _config(tmp_path, tmp_path / "m", random_flip=True, mirror_swap=0.5,
                   mirror_axis="up_down", augment_rotate=90.0).random_flip


def test_random_flip_with_left_right_classes_is_warned_of(tmp_path, caplog):
    classes = ("kidney-left", "kidney-right", "liver")
    data = write_converted_dataset(
        tmp_path / "data", {"train": dict.fromkeys(classes, 2),
                            "validation": dict.fromkeys(classes, 1)}, classes=classes)
    with caplog.at_level("WARNING"):
        train_input.resolve_data(_input(data, tmp_path / "m", random_flip=True))
    assert "--random_flip with left/right classes (kidney-left, kidney-right)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        train_input.resolve_data(_input(data, tmp_path / "m", random_flip=True,
                                        mirror_axis="up_down", augment_rot90=0.2))
    assert "--augment_rot90=0.2 turns images before the flip" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # rows carry left and right: the flip keeps sides
        train_input.resolve_data(_input(data, tmp_path / "m", random_flip=True,
                                        mirror_axis="up_down"))
        train_input.resolve_data(_input(tiny_dataset(tmp_path / "d"), tmp_path / "m",
                                        random_flip=True))  # Chest, Hand: no sides
    assert "--random_flip" not in caplog.text


def test_soft_label_loss_is_the_cross_entropy_of_the_mixture():
    logits = tf.constant([[2.0, -1.0, 0.5], [0.0, 1.0, 3.0]])
    soft = tf.constant([[0.7, 0.3, 0.0], [0.0, 0.5, 0.5]])
    expected = -tf.reduce_sum(soft * tf.nn.log_softmax(logits), -1)
    np.testing.assert_allclose(steps._cross_entropy(soft, logits, 3, 0.0).numpy(),
                               expected.numpy(), rtol=1e-6)
    smoothed = soft * 0.9 + 0.1 / 3
    np.testing.assert_allclose(
        steps._cross_entropy(soft, logits, 3, 0.1).numpy(),
        (-tf.reduce_sum(smoothed * tf.nn.log_softmax(logits), -1)).numpy(), rtol=1e-6)
    # Class ids with smoothing: the same as the one-hot mixture.
    np.testing.assert_allclose(
        steps._cross_entropy(tf.constant([0, 2]), logits, 3, 0.1).numpy(),
        steps._cross_entropy(tf.one_hot([0, 2], 3), logits, 3, 0.1).numpy(), rtol=1e-6)


def test_weight_average_follows_the_warmed_up_decay_on_two_replicas():
    strategy = mirrored_strategy()
    with strategy.scope():
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
        model.layers[0].kernel.assign([[1.0], [1.0]])
        average = ema.WeightAverage(model, decay=0.9)
    kernel = model.layers[0].kernel

    @tf.function
    def step(target, number):
        def replica_fn():
            kernel.assign(tf.fill((2, 1), target))  # stands in for the optimizer's update
            average.update(number)
        strategy.run(replica_fn)

    step(3.0, tf.constant(0, tf.int64))  # decay min(0.9, 1/10) = 0.1: 0.1 * 1 + 0.9 * 3
    np.testing.assert_allclose(average.variables[0].numpy(), 2.8, rtol=1e-6)
    step(5.0, tf.constant(1000, tf.int64))  # decay 0.9: 0.9 * 2.8 + 0.1 * 5
    np.testing.assert_allclose(average.variables[0].numpy(), 3.02, rtol=1e-6)
    with average.swapped_in():
        np.testing.assert_allclose(kernel.numpy(), 3.02, rtol=1e-6)
    np.testing.assert_allclose(kernel.numpy(), 5.0)  # the training weights are back
    with pytest.raises(ValueError, match="--ema_decay=1.0"):
        ema.WeightAverage(model, decay=1.0)


def test_ema_run_evaluates_checkpoints_and_exports_the_average(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    model_dir = tmp_path / "model"
    config = _config(data, model_dir, ema_decay=0.5, train_epochs=2,
                     augment_scale=0.1, augment_translate=0.05, augment_rotate=5,
                     augment_noise=0.02, augment_gamma=0.3, augment_blur=0.8,
                     augment_rot90=0.2, augment_frame=0.3, color_jitter=0.1, mixup_alpha=0.2,
                     export_dir=str(tmp_path / "export"))
    result = train_lib.train(config, ONE_DEVICE, RESNET_18)
    assert result.step == 4 and result.export_path
    assert json.loads((model_dir / "config.json").read_text())["ema_decay"] == 0.5
    averaged, _ = restore.load_model_from_dir(str(model_dir))
    raw = restore.build_inference_model(json.loads((model_dir / "config.json").read_text()))
    tf.train.Checkpoint(model=raw).restore(
        tf.train.latest_checkpoint(str(model_dir))).expect_partial()
    kernels = [(a, r) for a, r in zip(averaged.weights, raw.weights) if "kernel" in a.path]
    assert kernels and not all(np.allclose(a.numpy(), r.numpy()) for a, r in kernels)
    images = tf.random.uniform((3, 32, 32, 1), 0, 255)
    served = tf.saved_model.load(result.export_path).signatures["predict_images"](images=images)
    from dataset import preprocess
    batch = preprocess.preprocess_for_eval(tf.round(images), image_size=32)
    np.testing.assert_allclose(served["probabilities"].numpy(),
                               tf.nn.softmax(averaged(batch, training=False)).numpy(),
                               atol=1e-5)
    # The average is part of the run: resuming with another decay is refused.
    with pytest.raises(ValueError, match="trained with ema_decay=0.5, this run has ema_decay=0.0"):
        train_lib.train(_config(data, model_dir, train_epochs=3), ONE_DEVICE, RESNET_18)


def test_a_run_from_before_ema_decay_resumes_without_an_average_only(tmp_path):
    """A config.json from before --ema_decay has no such key (its run made no average):
    resumed with --ema_decay, the restore failed with a traceback listing 90 unmatched
    variables; it is refused in one line, and resuming without one still works."""
    data = tiny_dataset(tmp_path / "data")
    model_dir = tmp_path / "model"
    train_lib.train(_config(data, model_dir, max_train_steps=1), ONE_DEVICE, RESNET_18)
    saved = json.loads((model_dir / "config.json").read_text())
    del saved["ema_decay"]
    (model_dir / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=f"^{model_dir} was trained with ema_decay=0.0, this "
                                         "run has ema_decay=0.5; use the same settings"):
        train_lib.train(_config(data, model_dir, max_train_steps=2, ema_decay=0.5),
                        ONE_DEVICE, RESNET_18)
    result = train_lib.train(_config(data, model_dir, max_train_steps=2), ONE_DEVICE, RESNET_18)
    assert (result.resumed_from_step, result.step) == (1, 2)


def test_a_checkpoint_without_an_average_says_so(trained):
    # conftest.py's trained run has no --ema_decay; only read here.
    model, _ = restore.load_model_from_dir(trained["model_dir"])
    with pytest.raises(ValueError, match="holds no weight average"):
        ema.restore_average(model, tf.train.latest_checkpoint(trained["model_dir"]))


@pytest.mark.parametrize("flag, message", [
    ("--augment_rotate=200", "augment_rotate"), ("--ema_decay=1.5", "ema_decay"),
    ("--mixup_alpha=-1", "mixup_alpha"), ("--mirror_axis=diagonal", "mirror_axis"),
    # Chest and Hand have no left/right pair to swap.
    ("--mirror_swap=0.5", "differ only in left/right")])
def test_cli_rejects_out_of_range_values_in_one_line(tmp_path, flag, message):
    data = tiny_dataset(tmp_path / "data", train_per_class=2, eval_per_class=1)
    # Without TensorFlow: each is refused before its import (--mirror_swap's pairs from the
    # manifest's classes), so the stand-in's ImportError traceback never shows.
    result = run_trainer(f"--data_dir={data}", f"--model_dir={tmp_path / 'model'}",
                         *FAST_FLAGS, flag, without_tensorflow=True)
    assert result.returncode in (1, 2)  # 2: a bound of the flag itself (absl)
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and errors[0].startswith("dicom_main.py: error: "), errors
    assert message in errors[0]
    assert not (tmp_path / "model").exists()


def test_cli_checks_mirror_pairs_before_tensorflow(tmp_path):
    classes = ("kidney-left", "kidney-right", "liver")
    config = _config(tmp_path / "data", tmp_path / "m", mirror_swap=0.5)
    with pytest.raises(ValueError) as early:
        config.check_mirror_pairs(("Chest", "Hand"))
    assert str(early.value) == (
        f"--mirror_swap=0.5: no two classes of --data_dir={tmp_path / 'data'} differ only in "
        "left/right (classes: Chest, Hand)")
    config.check_mirror_pairs(classes)  # a pair: nothing to say
    _config(tmp_path / "data", tmp_path / "m").check_mirror_pairs(("Chest", "Hand"))  # off
    # With a pair in the data the program gets past the check to TensorFlow's import (here the
    # stand-in's, which fails: proof the check did not refuse it).
    data = write_converted_dataset(tmp_path / "pairs", {"train": dict.fromkeys(classes, 1),
                                                        "validation": dict.fromkeys(classes, 1)},
                                   classes=classes)
    result = run_trainer(f"--data_dir={data}", f"--model_dir={tmp_path / 'model'}",
                         *FAST_FLAGS, "--mirror_swap=0.5", without_tensorflow=True)
    assert result.returncode == 1
    assert "tensorflow imported: this run was to end before" in result.stderr
    assert "differ only in left/right" not in result.stderr


def test_a_final_model_trains_on_train_and_validation_with_a_warning(tmp_path, caplog):
    data = tiny_dataset(tmp_path / "d")  # 16 train, 8 validation images
    spec = _input(data, tmp_path / "m", train_split="train,validation")
    with caplog.at_level("WARNING"):
        resolved = train_input.resolve_data(spec)
    assert resolved.train_examples == 24 and len(resolved.train.files) == 2
    assert "the evaluation split validation is also trained on" in caplog.text
    caplog.clear()
    assert train_input.resolve_data(_input(data, tmp_path / "m")).train_examples == 16
    assert "also trained on" not in caplog.text


def test_a_class_without_training_examples_is_warned_of(tmp_path, caplog):
    data = tiny_dataset(tmp_path / "d")
    manifest = json.loads((data / "manifest.json").read_text())
    counts = manifest["splits"]["train"]["class_counts"]
    empty = sorted(counts)[0]
    counts[empty] = 0  # as a tiny class that a split left out of train gives
    (data / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("WARNING"):
        train_input.resolve_data(_input(data, tmp_path / "m"))
    assert f"class(es) {empty!r} have no example in the training split train" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        train_input.resolve_data(_input(tiny_dataset(tmp_path / "full"), tmp_path / "m"))
    assert "no example" not in caplog.text


def test_colour_and_turned_training_images_are_warned_of(tmp_path, caplog):
    from PIL import Image

    from tests.test_convert import convert

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (24, 24, 1), dtype=np.uint8)

    def dataset(name, colour: bool, orientation: int = 1):
        root = tmp_path / name
        for index in range(12):
            # RGB JPEGs either way: a grey radiograph saved as RGB (R = G = B) is not colour.
            pixels = (rng.integers(0, 255, (24, 24, 3), dtype=np.uint8) if colour
                      else np.repeat(grey, 3, axis=-1))
            exif = Image.Exif()
            if index == 5 and orientation != 1:
                exif[0x0112] = orientation  # as a phone writes for a photo taken on its side
            path = root / ("A" if index % 2 else "B") / f"{index:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path, exif=exif)
        convert(root, tmp_path / f"{name}-out", output_name="train")
        return tmp_path / f"{name}-out"

    def warnings(data, **overrides) -> str:
        caplog.clear()
        with caplog.at_level("WARNING"):
            train_input.resolve_data(_input(data, tmp_path / "m", eval_split="train",
                                            **overrides))
        return caplog.text

    photos = dataset("photos", colour=True)
    text = warnings(photos)
    assert "12 of 12 training images sampled are in colour (e.g. " in text
    assert "--channels=1 reads them as grey: --channels=3 keeps their colour" in text
    assert "in colour" not in warnings(photos, channels=3)
    radiographs = dataset("radiographs", colour=False)
    assert "in colour" not in warnings(radiographs) and "EXIF" not in warnings(radiographs)
    turned = warnings(dataset("turned", colour=False, orientation=6))
    assert ("1 of 12 training images sampled are JPEGs with an EXIF orientation (e.g. "
            "A/005.jpg): a viewer shows them turned, the model reads them as stored") in turned
