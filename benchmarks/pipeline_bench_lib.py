"""benchmarks/pipeline_bench.py's sides, timing and table (its docstring says what is measured
and how); TensorFlow, so the program imports it once its flags are parsed."""

from __future__ import annotations

import dataclasses
import gc
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

import tensorflow as tf

from networks.resnet import train_steps
from official.core import steps, train_input
from official.core.config import TrainConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEDNIST_TAR = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data", "MedNIST-dev.tar.gz")


@dataclasses.dataclass(frozen=True)
class PipelineBenchConfig:
    data_dir: str
    resnet_size: int = 18
    image_size: int = 64
    small_input: bool = False
    batch_size: int = 128
    dtype: str = "fp32"
    rounds: int = 4
    steps: int = 10
    warmup_steps: int = 3
    pipeline_batches: int = 40
    cache: bool = False
    num_parallel_calls: int = 4
    pipeline_only: bool = False  # skip the model: only the pipeline's own rates


def convert_mednist(work_dir: str) -> str:
    """Extracts MedNIST-dev.tar.gz into `work_dir` and converts it; returns the data dir."""
    if not os.path.isfile(MEDNIST_TAR):
        raise FileNotFoundError(f"{MEDNIST_TAR} not found: pass --data_dir=<converted MedNIST>")
    with tarfile.open(MEDNIST_TAR) as archive:
        archive.extractall(work_dir, filter="data")
    data_dir = os.path.join(work_dir, "data")
    subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tf_convert_data.py"),
                    "--dataset_name=mednist", f"--dataset_dir={work_dir}/MedNIST",
                    f"--output_dir={data_dir}", "--need_split=tvt_split",
                    "--layout=class_folders"], check=True)
    return data_dir


class Trainer:
    """The trainer's input + step for one config; `run(n)` times n steps in one call."""

    def __init__(self, train_config: TrainConfig, network, strategy):
        input_spec = train_input.InputSpec.from_config(train_config)
        data = train_input.resolve_data(input_spec)
        spec = network.model_spec(data.num_classes, image_size=train_config.image_size,
                                  channels=train_config.channels)
        schedule = network.learning_rate_schedule(train_config.schedule_spec(100))
        state = network.build_training_state(spec, train_config.optimizer_spec(), schedule,
                                             strategy)
        self.iterator = iter(strategy.experimental_distribute_dataset(
            train_input.train_dataset(input_spec, data)))
        self.train_fn = steps.make_train_function(
            state, strategy, global_batch_size=train_config.batch_size,
            num_classes=data.num_classes)

    def run(self, steps: int) -> float:
        started = time.perf_counter()
        float(self.train_fn(self.iterator, tf.constant(steps))["loss"])
        return time.perf_counter() - started


def pipeline_rate(input_spec: train_input.InputSpec, batches: int,
                  threads: int | None) -> float:
    """Images/s of train_input.train_dataset alone, timed after the shuffle buffer's initial
    fill; `threads` = 1 pins tf.data to a private one-thread pool (one core's rate)."""
    dataset = train_input.train_dataset(input_spec, train_input.resolve_data(input_spec))
    if threads:
        options = tf.data.Options()
        options.threading.private_threadpool_size = threads
        dataset = dataset.with_options(options)
    iterator = iter(dataset)
    for _ in range(max(3, min(batches, 10_000 // input_spec.batch_size + 2))):
        next(iterator)  # past the shuffle buffer's initial fill
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * input_spec.batch_size / (time.perf_counter() - started)


def time_side(train_config, network, strategy, config: PipelineBenchConfig, name: str,
              log) -> list:
    """Builds one side's trainer, warms it up, times `config.rounds` blocks of `config.steps`
    steps, and frees it (its prefetching iterator included) before returning images/s per
    block, so nothing of this side runs while the other side is timed."""
    trainer = Trainer(train_config, network, strategy)
    trainer.run(config.warmup_steps)
    rates = []
    for block in range(config.rounds):
        rates.append(config.steps * config.batch_size / trainer.run(config.steps))
        log(f"{name} block {block + 1}: {rates[-1]:.1f} img/s "
            f"(load {os.getloadavg()[0]:.2f})")
    # tf.data's prefetch and parallel-map threads stop only when the iterator is destroyed;
    # the trainer's tf.function and iterator can sit in reference cycles, hence the collect.
    del trainer
    gc.collect()
    return rates


def run_benchmark(config: PipelineBenchConfig, log=print) -> dict:
    """The pipeline alone (all cores, one core), then the model fed by the real pipeline and
    by synthetic data, one side after the other. Returns the medians, per-block rates, the
    ratio of the medians and the load average."""
    with tempfile.TemporaryDirectory(prefix="pipeline_bench_") as model_dir:  # nothing saved
        return _run_benchmark(config, model_dir, log)


def _run_benchmark(config: PipelineBenchConfig, model_dir: str, log) -> dict:
    network = train_steps.ResNetNetwork(resnet_size=config.resnet_size,
                                        small_input=config.small_input)
    common = dict(model_dir=model_dir, data_dir=config.data_dir,
                  image_size=config.image_size, batch_size=config.batch_size,
                  dtype=config.dtype, cache=config.cache,
                  num_parallel_calls=config.num_parallel_calls, seed=0)
    real_config = TrainConfig(**common)
    synthetic_config = TrainConfig(**common, use_synthetic_data=True)
    real_input = train_input.InputSpec.from_config(real_config)
    alone = {"pipeline_all_cores": pipeline_rate(real_input, config.pipeline_batches, None),
             "pipeline_one_core": pipeline_rate(real_input, config.pipeline_batches, 1)}
    gc.collect()  # the pipeline-only iterators must not run during the model's turns
    if config.pipeline_only:
        return {**alone, "load_average": os.getloadavg()}
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    rates = {name: time_side(train_config, network, strategy, config, name, log)
             for name, train_config in (("real", real_config),
                                        ("synthetic", synthetic_config))}
    real, synthetic = statistics.median(rates["real"]), statistics.median(rates["synthetic"])
    return {"real": real, "synthetic": synthetic, "rounds": rates, "ratio": real / synthetic,
            **alone, "load_average": os.getloadavg()}


def format_table(config: PipelineBenchConfig, results: dict) -> str:
    stem = "small-input stem" if config.small_input else "ImageNet stem"
    lines = [f"ResNet-{config.resnet_size} {config.image_size}x{config.image_size} ({stem}), "
             f"batch {config.batch_size}, {config.dtype}, cache={config.cache}, "
             + ("" if config.pipeline_only else
                f"each side alone: {config.rounds} blocks x {config.steps} steps; ")
             + f"data {config.data_dir}"]
    if "ratio" in results:
        lines.append(f"{'input':<12}{'img/s (median)':>15}   per block")
        for name in ("real", "synthetic"):
            rounds = " ".join(f"{value:.1f}" for value in results["rounds"][name])
            lines.append(f"{name:<12}{results[name]:>15.1f}   {rounds}")
        lines.append(f"ratio real / synthetic: {results['ratio']:.3f}")
    lines += [f"pipeline alone: {results['pipeline_all_cores']:.0f} img/s on all cores, "
              f"{results['pipeline_one_core']:.0f} img/s on one core (private 1-thread pool)",
              "load average (1/5/15 min) "
              + " ".join(f"{v:.2f}" for v in results["load_average"])]
    return "\n".join(lines)
