"""networks/slim's table, one network at a time and in process: every network builds, takes a
step, checkpoints into its rebuilt self and serves (a bigger sibling of a tested builder only
builds and serves); Slim's weight decay, names and sizes; Inception-v4's parameter count.
The shared loop, scopes and CLIs are in tests/test_slim.py. Nothing is downloaded."""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from dataset import preprocess
from networks.slim import choices, nets, scopes, slim_train
from official.core import export, restore, steps
from official.core.config import TrainConfig, resolved_config, write_config

ONE_DEVICE = tf.distribute.OneDeviceStrategy("/cpu:0")
FAST = "mobilenet_v3_small"  # the quickest network to build and step


@contextlib.contextmanager
def _eagerly():
    """tf.functions run as Python: tracing a large network costs up to ~50 s and is the same
    code for every network (tests/test_slim.py's end-to-end test traces it)."""
    tf.config.run_functions_eagerly(True)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(False)


# A bigger sibling of a network tested in full: the same keras.applications builder and
# preprocess_input with more blocks or width, so building it and serving one batch through the
# rebuilt model shows its table row is right; the step, checkpoint and restore would repeat
# its sibling's test at 2-5 times the cost (EfficientNetV2-S alone took 50-120 s).
SIBLINGS = {"resnet_v2_152": "resnet_v2_50", "efficientnet_v2_s": "efficientnet_v2_b0",
            "mobilenet_v3_large": "mobilenet_v3_small"}


@pytest.mark.parametrize("model_name", sorted(SIBLINGS))
def test_bigger_siblings_build_and_serve(model_name):
    sibling = nets.NETWORKS[SIBLINGS[model_name]]
    spec = nets.NETWORKS[model_name]
    assert spec.preprocess_input is sibling.preprocess_input
    assert spec.constructor.__module__ == sibling.constructor.__module__
    size = spec.min_image_size
    model = nets.build_network(model_name, 2, image_size=size)
    assert model.name == model_name and model.output_shape == (None, 2)
    resolved = {"image_size": size, "channels": 1, "class_names": ["Chest", "Hand"]}
    pixels = tf.cast(tf.random.stateless_uniform((2, size, size, 1), seed=(1, 2), maxval=256,
                                                 dtype=tf.int32), tf.float32)
    with _eagerly():
        served = export.ServingModule(model, resolved).predict_images(pixels)
    expected = tf.nn.softmax(model(preprocess.preprocess_for_eval(pixels, image_size=size),
                                   training=False))
    np.testing.assert_allclose(served["probabilities"], expected, atol=1e-5)


@pytest.mark.parametrize("model_name", [name for name in nets.NETWORKS if name not in SIBLINGS])
def test_every_network_steps_checkpoints_and_serves(tmp_path, model_name):
    """What is each network's own, at its minimum size: the trainer builds it from the
    registry (Slim's weight decay on), one step of the trainer's own train function moves the
    weights from the logits back to the first convolution, the checkpoint restores into the
    network rebuilt from config.json (what evaluation, prediction and export do), and the
    serving signature's preprocessing + that network give the trained model's probabilities.

    The step and the serving signature run eagerly: tracing them costs up to ~50 s for the
    largest networks and is the same code for all (test_trains_resumes_and_exports_end_to_end
    traces both)."""
    size = nets.NETWORKS[model_name].min_image_size
    config = TrainConfig(model_dir=str(tmp_path), image_size=size, weight_decay=4e-5, seed=1)
    network = slim_train.SlimNetwork(slim_train.SlimConfig(model_name=model_name))
    spec = network.model_spec(2, image_size=size, channels=1)
    keras.utils.set_random_seed(1)
    state = network.build_training_state(
        spec, config.optimizer_spec(), network.learning_rate_schedule(config.schedule_spec(1)),
        ONE_DEVICE)
    model = state.model
    assert model.output_shape == (None, 2) and model.losses  # a head, and weight decay

    pixels = tf.cast(tf.random.stateless_uniform((2, size, size, 1), seed=(1, 2), maxval=256,
                                                 dtype=tf.int32), tf.float32)
    images = preprocess.preprocess_for_eval(pixels, image_size=size)
    before = [v.numpy() for v in model.trainable_variables]
    batches = iter(ONE_DEVICE.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors((images, tf.constant([0, 1]))).repeat()))
    train = steps.make_train_function(state, ONE_DEVICE, global_batch_size=2, num_classes=2)
    with _eagerly():
        totals = train(batches, tf.constant(1))
    assert int(state.step.numpy()) == 1 and np.isfinite(float(totals["loss"]))
    moved = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)]
    kernels = [i for i, v in enumerate(model.trainable_variables) if len(v.shape) >= 2]
    assert moved[kernels[0]] and moved[kernels[-1]]  # the first convolution and the logits
    assert sum(moved) > len(moved) / 2, f"{sum(moved)} of {len(moved)} variables moved"

    write_config(str(tmp_path), resolved_config(config, ("Chest", "Hand"), spec,
                                                network.config_entries()))
    tf.train.CheckpointManager(state.checkpoint, str(tmp_path), max_to_keep=1).save(1)
    rebuilt, resolved = restore.load_model_from_dir(str(tmp_path))
    assert rebuilt.name == model_name
    assert all(np.array_equal(a, b) for a, b in zip(rebuilt.get_weights(), model.get_weights()))
    with _eagerly():
        served = export.ServingModule(rebuilt, resolved).predict_images(pixels)
    expected = tf.nn.softmax(model(images, training=False))
    assert served["probabilities"].shape == (2, 2)
    assert np.all(np.isfinite(served["probabilities"]))
    np.testing.assert_allclose(served["probabilities"], expected, atol=1e-5)


@pytest.mark.parametrize("trainable_scopes", [(), ("logits",)])
def test_weight_decay_is_slims_half_sum_of_squares(tmp_path, trainable_scopes):
    """Slim's weights_regularizer=l2_regularizer(wd) adds wd * tf.nn.l2_loss(w) =
    wd / 2 * sum(w**2) for every convolution and fully connected kernel (not biases, not batch
    norm), and nothing for frozen layers. Hand computation in float64 on the model's weights."""
    weight_decay = 0.01
    config = TrainConfig(model_dir=str(tmp_path), image_size=32, weight_decay=weight_decay)
    network = slim_train.SlimNetwork(slim_train.SlimConfig(model_name=FAST,
                                                           trainable_scopes=trainable_scopes))
    spec = network.model_spec(3, image_size=config.image_size, channels=config.channels)
    model = network.build_training_state(spec, config.optimizer_spec(), 0.01, ONE_DEVICE).model
    kernels = [v.numpy().astype(np.float64) for v in model.trainable_variables
               if len(v.shape) >= 2]  # conv, depthwise and dense kernels
    assert len(kernels) == 1 if trainable_scopes else len(kernels) > 50
    expected = weight_decay * sum(np.sum(k**2) for k in kernels) / 2
    assert float(tf.add_n(model.losses)) == pytest.approx(expected, rel=1e-5)


def test_grey_input_is_repeated_and_preprocessed_inside_the_model():
    layer = nets.NetworkInput("vgg_16", 1)
    out = layer(tf.fill((1, 2, 2, 1), 0.0)).numpy()  # [-1, 1] 0.0 -> pixel 127.5
    # VGG16's caffe preprocessing: BGR minus the ImageNet means, per channel.
    np.testing.assert_allclose(out[0, 0, 0], 127.5 - np.array([103.939, 116.779, 123.68]),
                               rtol=1e-5)


def test_names_aliases_and_sizes():
    # Never a stand-in: each of Slim's names means its own network.
    assert choices.resolve_name("inception_v4") == "inception_v4"
    assert choices.resolve_name("InceptionV4") == "inception_v4"
    assert choices.resolve_name("inception_resnet_v2") == "inception_resnet_v2"
    assert choices.resolve_name("ResNet152V2") == "resnet_v2_152"
    with pytest.raises(ValueError, match="valid names: inception_v3"):
        choices.resolve_name("alexnet")
    with pytest.raises(ValueError, match="at least 75"):
        nets.build_network("inception_v3", 2, image_size=32)
    with pytest.raises(ValueError, match="matches no layer"):
        scopes.select(nets.build_network("vgg_16", 2, image_size=32), ("block9",), "--x")


# Inception-v4 with a 1000-class head, every batch norm with gamma and beta (PyTorch's
# BatchNorm2d(affine=True)), no auxiliary head: Cadene/pretrained-models.pytorch's
# pretrainedmodels/models/inceptionv4.py, a port of TF-Slim's inception_v4 checkpoint (its
# 1001-way Linear loses the background row). The figure is that model's count as published in
# osmr/imgclsmob's model table ("InceptionV4 ... 42,679,816 ... From Cadene") and keras-hub's
# inception_v4_imagenet preset ("params": 42679816). TF-Slim itself publishes no count.
PORTED_INCEPTION_V4_PARAMETERS = 42_679_816


def test_inception_v4_has_the_published_parameter_count():
    """Full size (299 px, three channels), built, not run. TF-Slim counts its batch norm's beta
    only (scale=False): so Slim's trainable count is the published figure minus one gamma per
    batch-norm channel, plus one more logit (1001 classes: 1536 weights and a bias)."""
    def count(variables):
        return sum(int(np.prod(v.shape)) for v in variables)

    model = nets.build_network("inception_v4", 1001, image_size=299, channels=3)
    backbone = nets.backbone_of(model)
    assert backbone.name == "InceptionV4" and backbone.output_shape == (None, 8, 8, 1536)
    batch_norms = [layer for layer in nets.weighted_layers(backbone)
                   if isinstance(layer, keras.layers.BatchNormalization)]
    assert all(layer.gamma is None and layer.beta is not None for layer in batch_norms)
    assert all(not layer.use_bias for layer in nets.weighted_layers(backbone)
               if isinstance(layer, keras.layers.Conv2D))
    gammas = count(layer.beta for layer in batch_norms)  # one per channel, had Slim scaled
    assert count(model.trainable_variables) == PORTED_INCEPTION_V4_PARAMETERS - gammas + (
        1536 + 1)
    # Slim's own stage layout: 4 x A, Reduction-A, 7 x B, Reduction-B, 3 x C.
    blocks = [layer.name for layer in backbone.layers if layer.name.startswith("Mixed_")
              and isinstance(layer, keras.layers.Concatenate) and "Branch" not in layer.name]
    assert blocks == ["Mixed_3a", "Mixed_4a", "Mixed_5a", *(f"Mixed_5{c}" for c in "bcde"),
                      "Mixed_6a", *(f"Mixed_6{c}" for c in "bcdefgh"), "Mixed_7a",
                      *(f"Mixed_7{c}" for c in "bcd")]
    # Slim's scope names work as --trainable_scopes, as they did in Slim.
    selected = scopes.select(model, ("InceptionV4/Mixed_7d",), "--trainable_scopes")
    assert len(selected) == 2 * 10  # Mixed_7d's ten convolutions and their batch norms


def test_resnet_config_without_architecture_still_rebuilds_a_resnet():
    config = {"resnet_size": 18, "version": 2, "num_classes": 3, "image_size": 32,
              "channels": 1, "small_input": True, "data_format": "channels_last"}
    assert restore.build_inference_model(config).output_shape == (None, 3)
