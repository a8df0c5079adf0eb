"""Training throughput of our trainer vs Keras `fit` on keras.applications.ResNet50, same run.

  python benchmarks/train_bench.py [--image_size=224] [--batch_size=32] [--dtype=fp32] \\
      [--peers=ours,keras_fit] [--rounds=3] [--steps=3] [--intra=0] [--inter=0]

Both sides train on synthetic data (one random batch repeated: no input pipeline) with the same
batch, image size, channels and precision. "ours" is the trainer's own code path
(train_input.train_dataset with --use_synthetic_data, train_steps.build_training_state and
make_train_function, `--steps` steps in one tf.function call); "keras_fit" is
`model.fit(dataset, steps_per_epoch=...)` with Keras' defaults (no XLA on a CPU-only machine).
Optional peers: "ours_xla" (jit_compile on the step), "ours_loop1" (one step per call, Python
between steps), "keras_fit_xla" (compile(jit_compile=True)).

Warm-up (tracing, XLA compilation, oneDNN kernel creation) is excluded: each peer first runs
`--warmup_steps` steps, then the peers take turns, `--steps` timed steps each per round, so a
change in machine load hits all of them alike. Per-round images/s are printed with the median.

Also measured: the matmul ceiling (a 2048^3 fp32 matmul's GFLOP/s in the same process) and the
share of it each peer reaches, counting 3x the forward FLOPs (forward + two backward matmuls per
layer) of the model's convolutions and dense layers (multiply-add = 2 FLOPs). ResNet-50 at
224x224x3: 3.86 G multiply-adds forward, 23.1 GFLOP per training image by this count (the
often-quoted 4.1 G / 24.6 GFLOP also counts batch norm, ReLU, pooling and additions, which are
memory-bound, not matmul work).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

PEERS = ("ours", "ours_xla", "ours_loop1", "keras_fit", "keras_fit_xla")
KERAS_POLICIES = {"fp32": "float32", "fp16": "mixed_float16", "bf16": "mixed_bfloat16"}


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    resnet_size: int = 50
    image_size: int = 224
    channels: int = 3
    batch_size: int = 32
    dtype: str = "fp32"
    num_classes: int = 1000
    peers: tuple[str, ...] = ("ours", "keras_fit")
    rounds: int = 3
    steps: int = 3
    warmup_steps: int = 2
    matmul_size: int = 2048
    matmul_seconds: float = 2.0
    small_input: bool = False

    def __post_init__(self):
        unknown = [peer for peer in self.peers if peer not in PEERS]
        if unknown or not self.peers:
            raise ValueError(f"--peers={','.join(self.peers)}: each must be one of {list(PEERS)}")
        if self.dtype not in KERAS_POLICIES:
            raise ValueError(f"--dtype={self.dtype}: must be one of {sorted(KERAS_POLICIES)}")
        if min(self.rounds, self.steps, self.batch_size) < 1 or self.warmup_steps < 0:
            raise ValueError("--rounds, --steps and --batch_size must be >= 1, "
                             "--warmup_steps >= 0")


def matmul_gflops(size: int = 2048, seconds: float = 2.0) -> float:
    """GFLOP/s of a size^3 fp32 matmul (best of repeated runs): the machine's compute ceiling."""
    import tensorflow as tf

    a = tf.random.uniform((size, size))
    b = tf.random.uniform((size, size))
    matmul = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    matmul(a, b).numpy()  # warm-up
    best, started = float("inf"), time.perf_counter()
    while time.perf_counter() - started < seconds or best == float("inf"):
        begin = time.perf_counter()
        matmul(a, b).numpy()
        best = min(best, time.perf_counter() - begin)
    return 2 * size**3 / best / 1e9


def forward_flops(model) -> int:
    """FLOPs of one image's forward pass through the model's Conv2D and Dense layers."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel_h, kernel_w, in_channels, out_channels = layer.kernel.shape
            shape = layer.output.shape  # (None, H, W, C) or (None, C, H, W)
            spatial = (shape[1] * shape[2] if layer.data_format == "channels_last"
                       else shape[2] * shape[3])
            total += 2 * spatial * kernel_h * kernel_w * in_channels * out_channels
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return int(total)


class OursPeer:
    """The trainer's step on its synthetic input; `run(n)` times n steps in one call (or n
    calls of one step for steps_per_loop=1)."""

    def __init__(self, config: BenchConfig, *, jit_compile: bool, steps_per_loop: int | None):
        import tensorflow as tf

        from networks.resnet import train_input, train_steps
        from networks.resnet.train_config import TrainConfig

        self.train_config = TrainConfig(
            model_dir=tempfile.mkdtemp(prefix="train_bench_"), resnet_size=config.resnet_size,
            image_size=config.image_size, channels=config.channels,
            small_input=config.small_input, batch_size=config.batch_size, dtype=config.dtype,
            use_synthetic_data=True, synthetic_num_classes=config.num_classes,
            jit_compile=jit_compile, data_format="channels_last", seed=0)
        self.strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
        data = train_input.resolve_data(self.train_config)
        schedule = train_steps.learning_rate_schedule(self.train_config, steps_per_epoch=100)
        self.state = train_steps.build_training_state(self.train_config, data.num_classes,
                                                      schedule, self.strategy)
        self.model = self.state.model
        self.iterator = iter(self.strategy.experimental_distribute_dataset(
            train_input.train_dataset(self.train_config, data)))
        self.train_fn = train_steps.make_train_function(
            self.state, self.strategy, global_batch_size=config.batch_size,
            num_classes=data.num_classes, jit_compile=jit_compile)
        self.steps_per_loop = steps_per_loop

    def run(self, steps: int) -> float:
        import tensorflow as tf

        per_call = self.steps_per_loop or steps
        started = time.perf_counter()
        done = 0
        while done < steps:
            n = min(per_call, steps - done)
            totals = self.train_fn(self.iterator, tf.constant(n))
            float(totals["loss"])  # wait for the result, like the trainer's loop does
            done += n
        return time.perf_counter() - started


class KerasFitPeer:
    """keras.applications.ResNet50 compiled with SGD + momentum and trained with `fit`."""

    def __init__(self, config: BenchConfig, *, jit_compile):
        import keras
        import tensorflow as tf

        # Keras applications read the global policy when their layers are built; restore it.
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(KERAS_POLICIES[config.dtype])
        try:
            self.model = keras.applications.ResNet50(
                weights=None, classes=config.num_classes, classifier_activation=None,
                input_shape=(config.image_size, config.image_size, config.channels))
        finally:
            keras.config.set_dtype_policy(previous)
        self.model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile)
        shape = (config.batch_size, config.image_size, config.image_size, config.channels)
        images = tf.random.uniform(shape, -1.0, 1.0, seed=0)
        labels = tf.random.uniform((config.batch_size,), 0, config.num_classes, tf.int32, seed=0)
        self.dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()

    def run(self, steps: int) -> float:
        import keras

        marks = []

        class Marks(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                marks.append(time.perf_counter())

        # One extra step: the timed span runs from the end of the first batch to the end of
        # the last, so fit's per-call set-up (iterator, callbacks) is not counted.
        self.model.fit(self.dataset, epochs=1, steps_per_epoch=steps + 1, verbose=0,
                       callbacks=[Marks()])
        return marks[-1] - marks[0]


def make_peer(name: str, config: BenchConfig):
    if name == "ours":
        return OursPeer(config, jit_compile=False, steps_per_loop=None)
    if name == "ours_xla":
        return OursPeer(config, jit_compile=True, steps_per_loop=None)
    if name == "ours_loop1":
        return OursPeer(config, jit_compile=False, steps_per_loop=1)
    if name == "keras_fit":
        return KerasFitPeer(config, jit_compile="auto")
    return KerasFitPeer(config, jit_compile=True)


def run_benchmark(config: BenchConfig, log=print) -> dict:
    """Warm up every peer, then alternate timed rounds. Returns per-peer figures."""
    ceiling = matmul_gflops(config.matmul_size, config.matmul_seconds)
    log(f"matmul ceiling: {ceiling:.1f} GFLOP/s ({config.matmul_size}^3 fp32); "
        f"load average {os.getloadavg()[0]:.2f}")
    peers = {}
    for name in config.peers:
        peer = make_peer(name, config)
        if config.warmup_steps:
            peer.run(config.warmup_steps)
        peers[name] = peer
    rates = {name: [] for name in peers}
    for round_index in range(config.rounds):
        for name, peer in peers.items():
            seconds = peer.run(config.steps)
            rates[name].append(config.steps * config.batch_size / seconds)
        log(f"round {round_index + 1}: " + ", ".join(
            f"{name} {values[-1]:.2f} img/s" for name, values in rates.items())
            + f" (load {os.getloadavg()[0]:.2f})")
    results = {}
    for name, peer in peers.items():
        flops = 3 * forward_flops(peer.model)
        median = statistics.median(rates[name])
        results[name] = {"images_per_second": median, "rounds": rates[name],
                         "train_gflop_per_image": flops / 1e9,
                         "gflops": median * flops / 1e9,
                         "share_of_ceiling": median * flops / 1e9 / ceiling}
    return {"ceiling_gflops": ceiling, "peers": results, "load_average": os.getloadavg()}


def ratio(results: dict, peer: str, reference: str) -> float:
    """Median over rounds of peer/reference images/s (each round measured back to back)."""
    mine, theirs = results["peers"][peer]["rounds"], results["peers"][reference]["rounds"]
    return statistics.median(a / b for a, b in zip(mine, theirs))


def format_table(config: BenchConfig, results: dict) -> str:
    lines = [f"ResNet-{config.resnet_size} (keras peer: ResNet50) {config.image_size}x"
             f"{config.image_size}x{config.channels}, batch {config.batch_size}, {config.dtype}, "
             f"synthetic data, {config.rounds} rounds x {config.steps} steps",
             f"{'peer':<14}{'img/s (median)':>15}{'per round':>28}{'GFLOP/img':>11}"
             f"{'GFLOP/s':>9}{'of ceiling':>11}"]
    for name, row in results["peers"].items():
        rounds = " ".join(f"{value:.2f}" for value in row["rounds"])
        lines.append(f"{name:<14}{row['images_per_second']:>15.2f}{rounds:>28}"
                     f"{row['train_gflop_per_image']:>11.2f}{row['gflops']:>9.1f}"
                     f"{row['share_of_ceiling']:>10.0%}")
    lines.append(f"matmul ceiling {results['ceiling_gflops']:.1f} GFLOP/s; load average "
                 f"(1/5/15 min) {' '.join(f'{v:.2f}' for v in results['load_average'])}")
    if "keras_fit" in results["peers"]:
        for name in results["peers"]:
            if name.startswith("ours"):
                lines.append(f"ratio {name} / keras_fit: {ratio(results, name, 'keras_fit'):.2f}x")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resnet_size", type=int, default=50)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--peers", default="ours,keras_fit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup_steps", type=int, default=2)
    parser.add_argument("--matmul_size", type=int, default=2048)
    parser.add_argument("--inter", type=int, default=0, help="inter-op threads (0: TF picks)")
    parser.add_argument("--intra", type=int, default=0, help="intra-op threads (0: TF picks)")
    args = parser.parse_args(argv)
    try:
        config = BenchConfig(
            resnet_size=args.resnet_size, image_size=args.image_size, channels=args.channels,
            batch_size=args.batch_size, dtype=args.dtype, num_classes=args.num_classes,
            peers=tuple(p.strip() for p in args.peers.split(",") if p.strip()),
            rounds=args.rounds, steps=args.steps, warmup_steps=args.warmup_steps,
            matmul_size=args.matmul_size)
    except ValueError as error:
        parser.error(str(error))
    import tensorflow as tf

    # Before any op runs: TensorFlow fixes its thread pools at initialisation.
    tf.config.threading.set_inter_op_parallelism_threads(args.inter)
    tf.config.threading.set_intra_op_parallelism_threads(args.intra)
    results = run_benchmark(config)
    print(format_table(config, results), flush=True)


if __name__ == "__main__":
    main()
