"""Smoke tests of the benchmarks' code paths at tiny sizes (no timing is asserted), the FLOP count
they report, the mixed-precision/XLA step matrix (GPU readiness, checked on the CPU) and the
cosine learning-rate schedule the recipes use."""

from __future__ import annotations

import gc
import math
import os
import tempfile

import pytest
import tensorflow as tf

from benchmarks import (convert_bench, pipeline_bench_lib, train_bench,
                        train_bench_lib)
from networks.resnet import conv_layers, train_steps
from official.core.config import TrainConfig
from tests.trainer_fixtures import write_converted_dataset

# Ours only (ResNet-18 has no keras.applications peer); TINY_PEERS: the smallest keras peer.
TINY = dict(resnet_size=18, image_size=32, channels=1, batch_size=2, num_classes=3, rounds=1,
            steps=1, warmup_steps=0, matmul_size=64, conv_size=4, ceiling_seconds=0.05,
            peers=("ours",), dtypes=("fp32",))
TINY_PEERS = {**TINY, "resnet_size": 50, "peers": ("ours", "keras_fit")}


def test_forward_flops_of_resnet50_match_the_published_count():
    import keras

    # ResNet-50 at 224x224x3: 3.86 G multiply-adds in its convolutions and dense layer (He et
    # al. quote 3.8 G; the often-quoted 4.1 G also counts batch norm, ReLU, pooling, additions).
    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
    assert train_bench_lib.forward_flops(model) == pytest.approx(2 * 3.86e9, rel=0.01)


def test_forward_flops_scale_with_image_area():
    from networks.resnet import resnet_model

    small = resnet_model.build_resnet(18, 2, 6, input_shape=(32, 32, 1))
    large = resnet_model.build_resnet(18, 2, 6, input_shape=(64, 64, 1))
    dense = 2 * 512 * 6
    assert (train_bench_lib.forward_flops(large) - dense) == 4 * (
        train_bench_lib.forward_flops(small) - dense)


def _layer_counts(model):
    import keras

    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    return {"kernels": sorted(tuple(layer.kernel.shape) for layer in convs),
            "batch_norms": sum(isinstance(layer, keras.layers.BatchNormalization)
                               for layer in model.layers),
            "conv_bias_parameters": sum(layer.bias.shape[0] for layer in convs
                                        if layer.use_bias)}


def test_ours_and_the_keras_peer_are_the_same_resnet():
    # The peer is keras.applications.ResNet50 (v1), so ours must be v1 too: the same conv
    # kernels and batch norms, parameters differing only by Keras' conv biases. (The first
    # version benchmarked our v2 against it: 49 batch norms against 53.)
    config = train_bench_lib.BenchConfig(**TINY_PEERS)
    ours = train_bench_lib.make_peer("ours", config, "fp32").model
    keras_peer = train_bench_lib.make_peer("keras_fit", config, "fp32").model
    mine, theirs = _layer_counts(ours), _layer_counts(keras_peer)
    assert mine["kernels"] == theirs["kernels"] and len(mine["kernels"]) == 53
    assert mine["batch_norms"] == theirs["batch_norms"] == 53
    assert mine["conv_bias_parameters"] == 0
    assert ours.count_params() + theirs["conv_bias_parameters"] == keras_peer.count_params()
    # Where the strides sit is the one difference (v1.5 vs v1), and the summary shows it.
    assert train_bench_lib.architecture(ours)["strided_3x3"] == 3
    assert train_bench_lib.architecture(keras_peer)["strided_3x3"] == 0
    assert train_bench_lib.architecture(keras_peer)["strided_1x1"] == 6


def test_keras_peer_trains_under_the_mixed_bfloat16_policy_and_restores_the_global_one():
    import keras

    config = train_bench_lib.BenchConfig(**TINY_PEERS)
    model = train_bench_lib.KerasFitPeer(config, dtype="bf16", jit_compile="auto").model
    conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    assert conv.compute_dtype == "bfloat16" and conv.kernel.dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_ceilings_are_measured_per_dtype(dtype):
    assert train_bench_lib.matmul_gflops(32, dtype, seconds=0.01) > 0
    assert train_bench_lib.conv_gflops(4, dtype, seconds=0.01) > 0


def test_train_bench_tiny_run_reports_fp32_and_bf16_against_same_run_ceilings():
    # Ours alone keeps this fast; the keras peer's identity and bf16 policy are tested above.
    config = train_bench_lib.BenchConfig(**{**TINY, "dtypes": ("fp32", "bf16")})
    lines = []
    results = train_bench_lib.run_benchmark(config, log=lines.append)
    assert set(results["ceilings"]) == {"fp32", "bf16"}
    for ceiling in results["ceilings"].values():
        assert ceiling["matmul"] > 0 and ceiling["conv"] > 0
    assert set(results["runners"]) == {("ours", "fp32"), ("ours", "bf16")}
    for (_, dtype), row in results["runners"].items():
        assert len(row["rounds"]) == 1 and row["images_per_second"] > 0
        assert row["share_of_conv"] == pytest.approx(
            row["gflops"] / results["ceilings"][dtype]["conv"])
        assert row["share_of_matmul"] == pytest.approx(
            row["gflops"] / results["ceilings"][dtype]["matmul"])
    table = train_bench_lib.format_table(config, results)
    for text in ("ratio ours bf16 / ours fp32", "bf16 ceilings (same run)",
                 "ours ResNet-18 v1.5",
                 f"{results['architectures']['ours']['parameters']:,} parameters"):
        assert text in table
    assert any(line.startswith("bf16 ceilings: matmul") for line in lines)


def test_ours_conv_peers_are_the_same_resnet_with_fewer_matmuls():
    config = train_bench_lib.BenchConfig(**{**TINY, "dtypes": ("fp32",),
                                            "peers": ("ours", "ours_conv", "ours_convgrad")})
    results = train_bench_lib.run_benchmark(config, log=lambda line: None)
    assert (results["architectures"]["ours"] == results["architectures"]["ours_conv"]
            == results["architectures"]["ours_convgrad"])
    models = {name: train_bench_lib.make_peer(name, config, "fp32").model
              for name in config.peers}

    def count(kind):
        return {name: sum(type(layer) is kind for layer in model.layers)
                for name, model in models.items()}

    patched = count(conv_layers.PatchMatmulConv2D)
    kernel_grad = count(conv_layers.MatmulKernelGradConv2D)
    assert patched["ours"] == patched["ours_convgrad"] > 0 == patched["ours_conv"]
    assert kernel_grad["ours"] > 0 == kernel_grad["ours_convgrad"] == kernel_grad["ours_conv"]
    table = train_bench_lib.format_table(config, results)
    assert "ratio ours / ours_conv (fp32)" in table
    assert "ratio ours / ours_convgrad (fp32)" in table


def test_bench_config_rejects_what_has_no_like_for_like_peer():
    with pytest.raises(ValueError, match="keras_fit"):
        train_bench_lib.BenchConfig(peers=("ours", "pytorch"))
    with pytest.raises(ValueError, match="fp16"):
        train_bench_lib.BenchConfig(dtypes=("fp8",))
    with pytest.raises(ValueError, match="--version=1"):
        train_bench_lib.BenchConfig(version=2)
    with pytest.raises(ValueError, match="--resnet_size=18"):
        train_bench_lib.BenchConfig(resnet_size=18)
    train_bench_lib.BenchConfig(resnet_size=18, version=2, peers=("ours",))  # ours alone: any


def test_train_bench_main_reports_a_bad_flag_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_bench.main(train_bench.parse_flags(["train_bench.py", "--version=2",
                                                  "--peers=ours,keras_fit"]))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("train_bench.py: error: ")
    assert "--version=1" in error[0]


# Each dtype once and XLA on and off once (each case costs 20-30 s to trace or compile):
# bf16 without XLA is the recipes' step; fp16 with XLA adds loss scaling inside a compiled step.
@pytest.mark.parametrize("dtype,compute_dtype,jit_compile", [("bf16", "bfloat16", False),
                                                             ("fp16", "float16", True)])
def test_train_step_runs_in_mixed_precision_with_and_without_xla(dtype, compute_dtype,
                                                                   jit_compile):
    config = train_bench_lib.BenchConfig(**TINY)
    peer = train_bench_lib.OursPeer(config, dtype=dtype, jit_compile=jit_compile,
                                steps_per_loop=None)
    totals = peer.train_fn(peer.iterator, tf.constant(2))
    assert math.isfinite(float(totals["loss"])) and float(totals["examples"]) == 4
    assert int(peer.state.step.numpy()) == 2
    conv = peer.model.get_layer("stem_conv")
    assert conv.compute_dtype == compute_dtype and conv.kernel.dtype == "float32"
    assert peer.model.output.dtype == "float32"
    model_dir = peer.model_dir.name
    assert os.path.isdir(model_dir)
    del peer, totals, conv
    gc.collect()
    assert not os.path.exists(model_dir)  # nothing left in the temporary folder


def test_pipeline_bench_tiny_run_on_converted_records(tmp_path, monkeypatch):
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    data_dir = write_converted_dataset(
        tmp_path / "data", {"train": {"Chest": 6, "Hand": 6}, "validation": {"Chest": 2,
                                                                           "Hand": 2}})
    config = pipeline_bench_lib.PipelineBenchConfig(
        data_dir=str(data_dir), image_size=32, batch_size=4, rounds=1, steps=1, warmup_steps=1,
        pipeline_batches=2, num_parallel_calls=2, cache=True)
    results = pipeline_bench_lib.run_benchmark(config, log=lambda line: None)
    assert results["real"] > 0 and results["synthetic"] > 0 and results["ratio"] > 0
    assert results["pipeline_all_cores"] > 0 and results["pipeline_one_core"] > 0
    assert "ratio real / synthetic" in pipeline_bench_lib.format_table(config, results)
    # Its trainers' model folder (nothing saved in it) is not left behind.
    assert not [path for path in temporary.iterdir() if path.name.startswith("pipeline_bench")]


def test_pipeline_bench_frees_one_side_before_building_the_other(tmp_path, monkeypatch):
    # The real side's prefetching iterator keeps decoding in background threads as long as it
    # exists; if it lived on while the synthetic side was timed, it would slow that side down.
    import weakref

    data_dir = write_converted_dataset(tmp_path / "data", {"train": {"Chest": 4, "Hand": 4},
                                                        "validation": {"Chest": 1, "Hand": 1}})
    built, alive_at_build = [], []

    class RecordingTrainer(pipeline_bench_lib.Trainer):
        def __init__(self, train_config, network, strategy):
            alive_at_build.append([ref() is not None for ref in built])
            super().__init__(train_config, network, strategy)
            built.append(weakref.ref(self.iterator))

    monkeypatch.setattr(pipeline_bench_lib, "Trainer", RecordingTrainer)
    config = pipeline_bench_lib.PipelineBenchConfig(
        data_dir=str(data_dir), image_size=32, batch_size=4, rounds=2, steps=1, warmup_steps=1,
        pipeline_batches=1, num_parallel_calls=2)
    lines = []
    results = pipeline_bench_lib.run_benchmark(config, log=lines.append)
    assert alive_at_build == [[], [False]]
    assert [line.split(" block")[0] for line in lines] == ["real"] * 2 + ["synthetic"] * 2
    assert results["ratio"] == pytest.approx(results["real"] / results["synthetic"])


def test_convert_bench_reports_the_one_worker_row_and_the_multi_core_gain(
        make_images_labels_dataset):
    dataset_dir = make_images_labels_dataset({"Chest": 6, "Hand": 6})
    rows = convert_bench.run_benchmark({"tiny": str(dataset_dir)}, num_workers=2,
                                       methods=("ours_1worker", "ours"))
    assert {row["images"] for row in rows.values()} == {12}
    table = convert_bench.format_table(rows, num_workers=2)
    assert "tiny     ours_1worker" in table
    assert "ours / ours_1worker = " in table and "on 2 workers" in table


def test_cosine_schedule_warms_up_then_decays_to_zero():
    config = TrainConfig(model_dir="unused", lr_schedule="cosine", train_epochs=2,
                         batch_size=256, base_learning_rate=0.2, warmup_epochs=0.1)
    schedule = train_steps.ResNetNetwork().learning_rate_schedule(config.schedule_spec(100))
    rates = [float(schedule(step)) for step in (0, 9, 10, 105, 199, 250)]
    assert rates[0] == pytest.approx(0.02) and rates[1] == pytest.approx(0.2)
    assert rates[2] == pytest.approx(0.2)
    assert rates[3] == pytest.approx(0.1, abs=1e-6)  # half-way through the decay
    assert rates[4] < 1e-4 and rates[5] == 0.0
    with pytest.raises(ValueError, match="cosine"):
        TrainConfig(model_dir="unused", lr_schedule="linear")


def test_batch_norm_momentum_follows_the_run_length():
    configured = TrainConfig(model_dir="unused").batch_norm_momentum
    assert train_steps.batch_norm_momentum(configured, 440) == pytest.approx(1 - 20 / 440)
    assert train_steps.batch_norm_momentum(configured, 50) == 0.9
    assert train_steps.batch_norm_momentum(configured, 500_000) == 0.997  # TF official
    assert train_steps.batch_norm_momentum(configured, None) == 0.997
    fixed = TrainConfig(model_dir="unused", batch_norm_momentum=0.99).batch_norm_momentum
    assert train_steps.batch_norm_momentum(fixed, 440) == 0.99
    with pytest.raises(ValueError, match="batch_norm_momentum"):
        TrainConfig(model_dir="unused", batch_norm_momentum=1.0)
