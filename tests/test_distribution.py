"""Distribution: the strategy builder, global-batch loss aggregation, fp16 loss scaling."""

from __future__ import annotations

import json
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from networks.resnet import train_steps
from official.core import steps
from official.core.config import TrainConfig
from official.utils.misc import cluster_config, distribution_utils
from tests.trainer_fixtures import mirrored_strategy

NUM_CLASSES = 3


NETWORK = train_steps.ResNetNetwork(resnet_size=18, small_input=False)


def _config(tmp_path, **overrides) -> TrainConfig:
    settings = dict(model_dir=str(tmp_path), image_size=32, batch_size=8, warmup_epochs=0,
                    lr_scaling="none", base_learning_rate=0.1, hooks=())
    settings.update(overrides)
    return TrainConfig(**settings)


def _state(config, strategy, weights=None):
    schedule = NETWORK.learning_rate_schedule(config.schedule_spec(steps_per_epoch=100))
    spec = NETWORK.model_spec(NUM_CLASSES, image_size=config.image_size, channels=config.channels)
    state = NETWORK.build_training_state(spec, config.optimizer_spec(), schedule, strategy)
    if weights is not None:
        state.model.set_weights(weights)
    return state


def _run(state, strategy, batch, num_calls):
    """Losses of `num_calls` train calls of one step on `batch` (one trace per state)."""
    if not hasattr(state, "test_train"):
        state.test_train = steps.make_train_function(
            state, strategy, global_batch_size=8, num_classes=NUM_CLASSES)
        dataset = tf.data.Dataset.from_tensors(batch).repeat()
        state.test_iterator = iter(strategy.experimental_distribute_dataset(dataset))
    return [float(state.test_train(state.test_iterator, tf.constant(1))["loss"])
            for _ in range(num_calls)]


def _two_cpus():
    return mirrored_strategy()


def test_strategy_builder():
    assert isinstance(distribution_utils.get_distribution_strategy(num_gpus=0),
                      tf.distribute.OneDeviceStrategy)
    mirrored = _two_cpus()
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert mirrored.num_replicas_in_sync == 2
    with pytest.raises(ValueError, match="--num_gpus=2 but 0 GPU"):
        distribution_utils.get_distribution_strategy(num_gpus=2)
    # The Slim trainer's flag for it, as its user typed it.
    with pytest.raises(ValueError, match="^--num_clones=2 but 0 GPU"):
        distribution_utils.get_distribution_strategy(num_gpus=2, gpus_flag="--num_clones")
    with pytest.raises(ValueError, match="--multi_gpu: no GPU"):
        distribution_utils.get_distribution_strategy(multi_gpu=True)
    with pytest.raises(ValueError, match="--batch_size=7 is not divisible by the 2 replicas"):
        distribution_utils.per_replica_batch_size(7, 2)


@pytest.mark.parametrize("num_gpus, multi_gpu, kind, gpus", [
    (None, False, tf.distribute.OneDeviceStrategy, 1),  # the default: one GPU when present
    (0, False, tf.distribute.OneDeviceStrategy, 0),
    (1, False, tf.distribute.OneDeviceStrategy, 1),
    (2, False, tf.distribute.MirroredStrategy, 2),
    (3, False, tf.distribute.MirroredStrategy, 3),
    (None, True, tf.distribute.MirroredStrategy, 3),  # --multi_gpu: every visible GPU
])
def test_strategy_builder_with_gpus(monkeypatch, caplog, num_gpus, multi_gpu, kind, gpus):
    """With 3 GPUs faked visible, the strategy's replicas are exactly the GPUs asked for (0:
    the CPU), and one INFO line lists them. Nothing runs on the absent GPUs: building a
    strategy over them does not touch them."""
    monkeypatch.setattr(distribution_utils, "visible_gpu_count", lambda: 3)
    with caplog.at_level(logging.INFO, logger="absl"):
        strategy = distribution_utils.get_distribution_strategy(num_gpus, multi_gpu)
    local = "/job:localhost/replica:0/task:0/device:"
    devices = [f"{local}GPU:{index}" for index in range(gpus)] or [f"{local}CPU:0"]
    assert type(strategy) is kind
    assert list(strategy.extended.worker_devices) == devices
    assert strategy.num_replicas_in_sync == len(devices)
    logged = [record.getMessage() for record in caplog.records
              if "replica(s) in sync" in record.getMessage()]
    assert logged == [f"{kind.__name__}: {len(devices)} replica(s) in sync; this process's: "
                      f"{', '.join(devices)}"]


def test_cluster_uses_the_same_gpu_count(monkeypatch):
    """A worker's GPU count obeys --num_gpus/--multi_gpu as on one machine and reaches the
    resolver MultiWorkerMirroredStrategy takes its local devices from (tests/test_multiworker.py
    builds the strategy in two processes)."""
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.setattr(distribution_utils, "visible_gpu_count", lambda: 1)
    hosts = ["127.0.0.1:1", "127.0.0.1:2"]
    # Both refused before any strategy (and its server) exists.
    with pytest.raises(ValueError, match="--num_gpus=2 but 1 GPU"):
        distribution_utils.get_distribution_strategy(2, worker_hosts=hosts, task_index=0)
    with pytest.raises(ValueError, match="--num_cpu_replicas=2 is for a single machine"):
        distribution_utils.get_distribution_strategy(0, num_cpu_replicas=2, worker_hosts=hosts,
                                                     task_index=0)
    task = cluster_config.resolve_cluster(hosts, 1)
    for num_gpus, accelerators in [(4, {"GPU": 4}), (1, {"GPU": 1}), (0, {})]:
        resolver = distribution_utils.cluster_resolver(task, num_gpus)
        assert resolver.num_accelerators() == accelerators
        assert (resolver.task_type, resolver.task_id) == ("worker", 1)


class _Devices:
    """A strategy stand-in: only its replicas' devices are read."""

    def __init__(self, *devices):
        self.extended = type("Extended", (), {"worker_devices": devices})()


def test_fp16_without_a_gpu_is_said_to_be_slow_and_bf16_named():
    cpu = ("/job:localhost/replica:0/task:0/device:CPU:0",)
    gpus = ("/job:localhost/replica:0/task:0/device:GPU:0",
            "/job:localhost/replica:0/task:0/device:GPU:1")
    warning = distribution_utils.precision_warning("fp16", _Devices(*cpu))
    assert "--dtype=fp16 without a GPU" in warning and "--dtype=bf16" in warning
    assert distribution_utils.precision_warning("fp16", _Devices(*gpus)) is None
    for dtype in ("fp32", "bf16"):
        assert distribution_utils.precision_warning(dtype, _Devices(*cpu)) is None
    # The real strategy's spelling of its devices.
    assert distribution_utils.precision_warning(
        "fp16", tf.distribute.OneDeviceStrategy("/cpu:0")) is not None


def test_tf_config_cluster_size(monkeypatch):
    cluster = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
               "task": {"type": "worker", "index": 1}}
    assert cluster_config.cluster_size_from_tf_config(json.dumps(cluster)) == 2
    assert cluster_config.cluster_size_from_tf_config("") == 0
    with pytest.raises(ValueError, match="TF_CONFIG is malformed"):
        cluster_config.cluster_size_from_tf_config("{not json")
    with pytest.raises(ValueError, match="task worker:5 is not in its cluster"):
        cluster_config.cluster_size_from_tf_config(json.dumps(
            {**cluster, "task": {"type": "worker", "index": 5}}))
    # A one-task cluster is a single machine: no MultiWorkerMirroredStrategy.
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert isinstance(distribution_utils.get_distribution_strategy(num_gpus=0),
                      tf.distribute.OneDeviceStrategy)


def test_mirrored_matches_one_device_for_the_same_global_batch(tmp_path):
    """Two replicas x 4 examples == one device x 8 examples: same losses, same updates.

    Batch norm normalises with each replica's own statistics, so the global batch is made of
    two identical halves [A; A]: each replica's statistics then equal the global batch's, and
    the comparison checks exactly what the loop aggregates (loss averaged over the global
    batch, gradients summed over replicas, weight decay counted once, BN moving statistics).

    Tolerances: the first step's update of every variable (trainable and BN moving statistics)
    agrees to 5% of that update's norm (an aggregation bug, e.g. gradients averaged instead of
    summed or weight decay counted twice, is off by 50-100%), and the losses of 3 steps to rtol
    1e-2 (float32 round-off in per-replica batch statistics grows step by step: up to 4e-3 seen
    by step 3).
    Norms, not largest elements: the last stage's batch norm normalises few values per channel
    per replica, and float32 round-off between the two summation orders is amplified through
    it into a few elements (up to 4% of the stem's largest update element in 1 run of 2 at
    32 px): the elementwise 1e-3 bound this test had failed that often. 64 px, not 32: at 32 px
    (4 values per channel) the worst variable's update norm differed by up to 16% when other
    tests loaded the cores (once in a full suite; 7.5% in 1 of 6 runs measured), at 64 px (16
    values) by at most 0.7% in 6 runs. Not the weights after several steps, for the same reason.
    """
    rng = np.random.default_rng(0)
    half_images = rng.uniform(-1, 1, (4, 64, 64, 1)).astype(np.float32)
    half_labels = np.array([0, 1, 2, 1], np.int32)
    batch = (np.concatenate([half_images, half_images]),
             np.concatenate([half_labels, half_labels]))
    config = _config(tmp_path, base_learning_rate=0.02, image_size=64)
    one = tf.distribute.OneDeviceStrategy("/cpu:0")
    one_state = _state(config, one)
    initial = one_state.model.get_weights()
    mirrored = _two_cpus()
    mirrored_state = _state(config, mirrored, weights=initial)

    one_losses = _run(one_state, one, batch, 1)
    mirrored_losses = _run(mirrored_state, mirrored, batch, 1)
    moved = 0
    for a, b, before in zip(mirrored_state.model.get_weights(), one_state.model.get_weights(),
                            initial):
        update = np.linalg.norm(b - before)
        assert np.linalg.norm(a - b) <= 0.05 * update + 1e-6
        moved += update > 0
    assert moved > 50  # every weight, BN statistics included, actually moved

    one_losses += _run(one_state, one, batch, 2)
    mirrored_losses += _run(mirrored_state, mirrored, batch, 2)
    np.testing.assert_allclose(mirrored_losses, one_losses, rtol=1e-2)
    assert one_losses[2] < one_losses[0]  # it trained
    assert int(mirrored_state.step.numpy()) == int(one_state.step.numpy()) == 3


def test_fp16_overflow_lowers_loss_scale_and_skips_the_update(tmp_path):
    strategy = _two_cpus()  # also checks that both replicas agree on skipping
    state = _state(_config(tmp_path, dtype="fp16"), strategy)
    assert isinstance(state.optimizer, keras.optimizers.LossScaleOptimizer)
    rng = np.random.default_rng(1)
    batch = (rng.uniform(-1, 1, (8, 32, 32, 1)).astype(np.float32),
             rng.integers(0, NUM_CLASSES, 8).astype(np.int32))
    # A scale this large overflows float16 gradients (max 65504) on the first backward op.
    state.optimizer.dynamic_scale.assign(2.0 ** 40)
    before = [v.numpy() for v in state.model.trainable_variables]
    losses = _run(state, strategy, batch, 1)
    assert np.isfinite(losses[0])  # the (unscaled) loss itself is fine
    assert float(state.optimizer.dynamic_scale.numpy()) == 2.0 ** 39
    assert int(state.optimizer.iterations.numpy()) == 0  # no update applied
    assert int(state.step.numpy()) == 1  # but the step counts
    for variable, value in zip(state.model.trainable_variables, before):
        np.testing.assert_array_equal(variable.numpy(), value)

    # A sane scale: the update happens and the scale stays.
    state.optimizer.dynamic_scale.assign(2.0 ** 8)
    _run(state, strategy, batch, 1)
    assert float(state.optimizer.dynamic_scale.numpy()) == 2.0 ** 8
    assert int(state.optimizer.iterations.numpy()) == 1
    assert any(not np.array_equal(v.numpy(), b)
               for v, b in zip(state.model.trainable_variables, before))


def test_a_failed_collective_is_one_line_naming_the_peer_the_cause_and_the_resume():
    # The shape of TF's text when a peer's heartbeat stops: the wrapper line first, the cause
    # and the peer's task further down.
    error = tf.errors.UnavailableError(None, None, (
        "Graph execution error:\n\nDetected at node CollectiveReduceV2 defined at ...\n"
        "Collective ops is aborted by: Task /job:worker/replica:0/task:1 heartbeat timeout. "
        "This indicates that the remote task has failed\n"))
    line = distribution_utils.cluster_failure_message(error, 2, "/runs/m")
    assert line.startswith("multi-worker training stopped: worker 1 of the 2 died"), line
    assert "(UnavailableError: Collective ops is aborted by: Task /job:worker" in line
    assert line.endswith("resume from the last checkpoint in /runs/m")
    assert "\n" not in line
    # No peer in the text: "another worker"; no line matching a cause: the first line.
    quiet = tf.errors.InternalError(None, None, "\nsomething failed\nmore\n")
    line = distribution_utils.cluster_failure_message(quiet, 3, "m")
    assert line.startswith("multi-worker training stopped: another worker of the 3 died")
    assert "(InternalError: something failed)" in line
