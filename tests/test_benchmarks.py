"""Smoke tests of the benchmarks' code paths at tiny sizes (no timing is asserted), the FLOP count
they report, the mixed-precision/XLA step matrix (GPU readiness, checked on the CPU) and the
cosine learning-rate schedule the recipes use."""

from __future__ import annotations

import math

import pytest
import tensorflow as tf

from benchmarks import pipeline_bench, train_bench
from networks.resnet import train_steps
from networks.resnet.train_config import TrainConfig
from tests.trainer_fixtures import write_converted_dataset

TINY = dict(resnet_size=18, image_size=32, channels=1, batch_size=2, num_classes=3, rounds=1,
            steps=1, warmup_steps=0, matmul_size=64, matmul_seconds=0.05)


def test_forward_flops_of_resnet50_match_the_published_count():
    import keras

    # ResNet-50 at 224x224x3: 3.86 G multiply-adds in its convolutions and dense layer (He et
    # al. quote 3.8 G; the often-quoted 4.1 G also counts batch norm, ReLU, pooling, additions).
    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
    assert train_bench.forward_flops(model) == pytest.approx(2 * 3.86e9, rel=0.01)


def test_forward_flops_scale_with_image_area():
    from networks.resnet import resnet_model

    small = resnet_model.build_resnet(18, 2, 6, input_shape=(32, 32, 1))
    large = resnet_model.build_resnet(18, 2, 6, input_shape=(64, 64, 1))
    dense = 2 * 512 * 6
    assert (train_bench.forward_flops(large) - dense) == 4 * (
        train_bench.forward_flops(small) - dense)


def test_train_bench_tiny_run_reports_every_peer_and_the_ratio():
    config = train_bench.BenchConfig(**TINY, peers=("ours", "keras_fit"))
    results = train_bench.run_benchmark(config, log=lambda line: None)
    assert results["ceiling_gflops"] > 0
    for name in config.peers:
        row = results["peers"][name]
        assert len(row["rounds"]) == 1 and row["images_per_second"] > 0
        assert 0 < row["share_of_ceiling"] and row["train_gflop_per_image"] > 0
    table = train_bench.format_table(config, results)
    assert "ratio ours / keras_fit" in table and "matmul ceiling" in table


def test_bench_config_rejects_unknown_peer_and_dtype():
    with pytest.raises(ValueError, match="keras_fit"):
        train_bench.BenchConfig(peers=("ours", "pytorch"))
    with pytest.raises(ValueError, match="fp16"):
        train_bench.BenchConfig(dtype="fp8")


@pytest.mark.parametrize("dtype,compute_dtype", [("fp16", "float16"), ("bf16", "bfloat16")])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_train_step_runs_in_mixed_precision_with_and_without_xla(dtype, compute_dtype,
                                                                   jit_compile):
    config = train_bench.BenchConfig(**{**TINY, "dtype": dtype})
    peer = train_bench.OursPeer(config, jit_compile=jit_compile, steps_per_loop=None)
    totals = peer.train_fn(peer.iterator, tf.constant(2))
    assert math.isfinite(float(totals["loss"])) and float(totals["examples"]) == 4
    assert int(peer.state.step.numpy()) == 2
    conv = peer.model.get_layer("stem_conv")
    assert conv.compute_dtype == compute_dtype and conv.kernel.dtype == "float32"
    assert peer.model.output.dtype == "float32"


def test_pipeline_bench_tiny_run_on_converted_records(tmp_path):
    data_dir = write_converted_dataset(
        tmp_path / "data", {"train": {"Chest": 6, "Hand": 6}, "validation": {"Chest": 2,
                                                                           "Hand": 2}})
    config = pipeline_bench.PipelineBenchConfig(
        data_dir=str(data_dir), image_size=32, batch_size=4, rounds=1, steps=1, warmup_steps=1,
        pipeline_batches=2, num_parallel_calls=2, cache=True)
    results = pipeline_bench.run_benchmark(config, log=lambda line: None)
    assert results["real"] > 0 and results["synthetic"] > 0 and results["ratio"] > 0
    assert results["pipeline_all_cores"] > 0 and results["pipeline_one_core"] > 0
    assert "ratio real / synthetic" in pipeline_bench.format_table(config, results)


def test_cosine_schedule_warms_up_then_decays_to_zero():
    config = TrainConfig(model_dir="unused", lr_schedule="cosine", train_epochs=2,
                         batch_size=256, base_learning_rate=0.2, warmup_epochs=0.1)
    schedule = train_steps.learning_rate_schedule(config, steps_per_epoch=100)
    rates = [float(schedule(step)) for step in (0, 9, 10, 105, 199, 250)]
    assert rates[0] == pytest.approx(0.02) and rates[1] == pytest.approx(0.2)
    assert rates[2] == pytest.approx(0.2)
    assert rates[3] == pytest.approx(0.1, abs=1e-6)  # half-way through the decay
    assert rates[4] < 1e-4 and rates[5] == 0.0
    with pytest.raises(ValueError, match="cosine"):
        TrainConfig(model_dir="unused", lr_schedule="linear")


def test_batch_norm_momentum_follows_the_run_length():
    config = TrainConfig(model_dir="unused")
    assert train_steps.batch_norm_momentum(config, 440) == pytest.approx(1 - 20 / 440)
    assert train_steps.batch_norm_momentum(config, 50) == 0.9
    assert train_steps.batch_norm_momentum(config, 500_000) == 0.997  # TF official
    assert train_steps.batch_norm_momentum(config, None) == 0.997
    fixed = TrainConfig(model_dir="unused", batch_norm_momentum=0.99)
    assert train_steps.batch_norm_momentum(fixed, 440) == 0.99
    with pytest.raises(ValueError, match="batch_norm_momentum"):
        TrainConfig(model_dir="unused", batch_norm_momentum=1.0)
