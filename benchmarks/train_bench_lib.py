"""benchmarks/train_bench.py's peers, ceilings, FLOP count and table (its docstring says what
is measured and how); TensorFlow, so the program imports it once its flags are parsed."""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time

import keras
import tensorflow as tf

from networks.resnet import conv_layers, train_steps
from official.core import steps, train_input
from official.core.config import TrainConfig

PEERS = ("ours", "ours_xla", "ours_loop1", "ours_conv", "ours_convgrad", "keras_fit",
         "keras_fit_xla")
KERAS_POLICIES = {"fp32": "float32", "fp16": "mixed_float16", "bf16": "mixed_bfloat16"}
COMPUTE_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# keras.applications' ResNets of each depth; all three are v1 (stride on the first 1x1).
KERAS_RESNETS = {50: "ResNet50", 101: "ResNet101", 152: "ResNet152"}
CONV_BATCH, CONV_CHANNELS = 32, 128  # the conv ceiling: a stage-2-like 3x3 layer


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    resnet_size: int = 50
    version: int = 1
    image_size: int = 224
    channels: int = 3
    batch_size: int = 32
    dtypes: tuple[str, ...] = ("fp32", "bf16")
    num_classes: int = 1000
    peers: tuple[str, ...] = ("ours", "keras_fit")
    rounds: int = 3
    steps: int = 3
    warmup_steps: int = 2
    matmul_size: int = 2048
    conv_size: int = 28
    ceiling_seconds: float = 2.0
    small_input: bool = False

    def __post_init__(self):
        unknown = [peer for peer in self.peers if peer not in PEERS]
        if unknown or not self.peers:
            raise ValueError(f"--peers={','.join(self.peers)}: each must be one of {list(PEERS)}")
        bad_dtypes = [dtype for dtype in self.dtypes if dtype not in KERAS_POLICIES]
        if bad_dtypes or not self.dtypes or len(set(self.dtypes)) != len(self.dtypes):
            raise ValueError(f"--dtypes={','.join(self.dtypes)}: each must be one of "
                             f"{sorted(KERAS_POLICIES)}, listed once")
        if self.version not in (1, 2):
            raise ValueError(f"--version={self.version}: must be 1 or 2")
        if any(peer.startswith("keras") for peer in self.peers):
            if self.resnet_size not in KERAS_RESNETS:
                raise ValueError(f"--resnet_size={self.resnet_size}: keras.applications has "
                                 f"no peer; use one of {sorted(KERAS_RESNETS)} or --peers=ours")
            if self.version != 1 or self.small_input:
                raise ValueError("keras_fit peers are keras.applications ResNet v1 with the "
                                 "ImageNet stem: use --version=1 without --small_input, or "
                                 "--peers=ours")
        if min(self.rounds, self.steps, self.batch_size, self.matmul_size,
               self.conv_size) < 1 or self.warmup_steps < 0:
            raise ValueError("--rounds, --steps, --batch_size, --matmul_size and --conv_size "
                             "must be >= 1, --warmup_steps >= 0")


def _best_seconds(run, seconds: float) -> float:
    """Shortest wall time of `run()` over repeated calls for `seconds` (after one warm-up)."""
    run()
    best, started = float("inf"), time.perf_counter()
    while time.perf_counter() - started < seconds or best == float("inf"):
        begin = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - begin)
    return best


def matmul_gflops(size: int = 2048, dtype: str = "fp32", seconds: float = 2.0) -> float:
    """GFLOP/s of a size^3 matmul in `dtype` (best of repeated runs): a compute ceiling."""
    compute = COMPUTE_DTYPES[dtype]
    a = tf.cast(tf.random.uniform((size, size), seed=1), compute)
    b = tf.cast(tf.random.uniform((size, size), seed=2), compute)

    @tf.function
    def product(x, y):
        # The reduction makes .numpy() wait for the product without copying it to Python.
        return tf.reduce_sum(tf.cast(tf.matmul(x, y), tf.float32))

    return 2 * size**3 / _best_seconds(lambda: product(a, b).numpy(), seconds) / 1e9


def conv_gflops(size: int = 28, dtype: str = "fp32", seconds: float = 2.0) -> float:
    """GFLOP/s of a 3x3 stride-1 convolution, batch 32, size x size, 128 -> 128 channels, in
    `dtype` (best of repeated runs): the ceiling closer to a ResNet's own work than a matmul."""
    compute = COMPUTE_DTYPES[dtype]
    images = tf.cast(tf.random.uniform((CONV_BATCH, size, size, CONV_CHANNELS), seed=1), compute)
    kernel = tf.cast(tf.random.uniform((3, 3, CONV_CHANNELS, CONV_CHANNELS), seed=2), compute)

    @tf.function
    def convolve(x, k):
        return tf.reduce_sum(tf.cast(tf.nn.conv2d(x, k, 1, "SAME"), tf.float32))

    flops = 2 * CONV_BATCH * size * size * 9 * CONV_CHANNELS * CONV_CHANNELS
    return flops / _best_seconds(lambda: convolve(images, kernel).numpy(), seconds) / 1e9


def forward_flops(model) -> int:
    """FLOPs of one image's forward pass through the model's Conv2D and Dense layers."""
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


def architecture(model) -> dict:
    """What makes two ResNets the same: parameter count, convolutions (and how many carry a
    bias), batch norms, which kernel sizes carry a stride of 2 (besides the 7x7 stem: v1 puts it
    on 1x1s, v1.5 on 3x3s) and forward multiply-adds per image."""
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    strided = [layer.kernel.shape[0] for layer in convs if max(layer.strides) > 1]
    return {"parameters": model.count_params(), "convolutions": len(convs),
            "conv_biases": sum(bool(layer.use_bias) for layer in convs),
            "batch_norms": sum(isinstance(layer, keras.layers.BatchNormalization)
                               for layer in model.layers),
            "strided_1x1": strided.count(1), "strided_3x3": strided.count(3),
            "forward_gmac": forward_flops(model) / 2e9}


class OursPeer:
    """The trainer's step on its synthetic input; `run(n)` times n steps in one call (or n
    calls of one step for steps_per_loop=1)."""

    def __init__(self, config: BenchConfig, *, dtype: str, jit_compile: bool,
                 steps_per_loop: int | None, conv_plan: conv_layers.ConvPlan | None = None):
        # Nothing is saved in it; removed with the peer (or at exit), not left in /tmp.
        self.model_dir = tempfile.TemporaryDirectory(prefix="train_bench_")
        self.train_config = TrainConfig(
            model_dir=self.model_dir.name, image_size=config.image_size,
            channels=config.channels, batch_size=config.batch_size, dtype=dtype,
            use_synthetic_data=True, synthetic_num_classes=config.num_classes,
            jit_compile=jit_compile, seed=0)
        network = train_steps.ResNetNetwork(
            resnet_size=config.resnet_size, version=config.version,
            small_input=config.small_input, data_format="channels_last",
            conv_plan=conv_plan)
        self.strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
        input_spec = train_input.InputSpec.from_config(self.train_config)
        data = train_input.resolve_data(input_spec)
        spec = network.model_spec(data.num_classes, image_size=config.image_size,
                                  channels=config.channels)
        schedule = network.learning_rate_schedule(self.train_config.schedule_spec(100))
        self.state = network.build_training_state(spec, self.train_config.optimizer_spec(),
                                                  schedule, self.strategy)
        self.model = self.state.model
        self.iterator = iter(self.strategy.experimental_distribute_dataset(
            train_input.train_dataset(input_spec, data)))
        self.train_fn = steps.make_train_function(
            self.state, self.strategy, global_batch_size=config.batch_size,
            num_classes=data.num_classes, jit_compile=jit_compile)
        self.steps_per_loop = steps_per_loop
        self.description = (f"ours ResNet-{config.resnet_size} "
                            f"{'v1.5' if config.version == 1 else 'v2'}"
                            f"{'' if conv_plan is None else f', {conv_plan}'}")

    def run(self, steps: int) -> float:
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
    """keras.applications.ResNet{size} (v1) compiled with SGD + momentum, trained with `fit`."""

    def __init__(self, config: BenchConfig, *, dtype: str, jit_compile):
        name = KERAS_RESNETS[config.resnet_size]
        # Keras applications read the global policy when their layers are built; restore it.
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(KERAS_POLICIES[dtype])
        try:
            self.model = getattr(keras.applications, name)(
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
        self.description = f"keras.applications.{name} v1"

    def run(self, steps: int) -> float:
        marks = []

        class Marks(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                marks.append(time.perf_counter())

        # One extra step: the timed span runs from the end of the first batch to the end of
        # the last, so fit's per-call set-up (iterator, callbacks) is not counted.
        self.model.fit(self.dataset, epochs=1, steps_per_epoch=steps + 1, verbose=0,
                       callbacks=[Marks()])
        return marks[-1] - marks[0]


def make_peer(name: str, config: BenchConfig, dtype: str):
    if name == "ours":
        return OursPeer(config, dtype=dtype, jit_compile=False, steps_per_loop=None)
    if name == "ours_xla":
        return OursPeer(config, dtype=dtype, jit_compile=True, steps_per_loop=None)
    if name == "ours_loop1":
        return OursPeer(config, dtype=dtype, jit_compile=False, steps_per_loop=1)
    if name == "ours_conv":
        return OursPeer(config, dtype=dtype, jit_compile=False, steps_per_loop=None,
                        conv_plan=conv_layers.PLAIN_CONVOLUTIONS)
    if name == "ours_convgrad":
        return OursPeer(config, dtype=dtype, jit_compile=False, steps_per_loop=None,
                        conv_plan=dataclasses.replace(conv_layers.ConvPlan(),
                                                      kernel_grad_matmul_max_pixels=0))
    if name == "keras_fit":
        return KerasFitPeer(config, dtype=dtype, jit_compile="auto")
    return KerasFitPeer(config, dtype=dtype, jit_compile=True)


def run_benchmark(config: BenchConfig, log=print) -> dict:
    """Measure the ceilings, warm up every (peer, dtype) runner, then alternate timed rounds.

    Returns {"ceilings": {dtype: {"matmul": GFLOP/s, "conv": GFLOP/s}}, "runners": {(peer,
    dtype): figures}, "architectures": {peer: architecture()}, "descriptions": {peer: str},
    "load_average": (1, 5, 15 min)}.
    """
    ceilings = {}
    for dtype in config.dtypes:
        ceilings[dtype] = {
            "matmul": matmul_gflops(config.matmul_size, dtype, config.ceiling_seconds),
            "conv": conv_gflops(config.conv_size, dtype, config.ceiling_seconds)}
        log(f"{dtype} ceilings: matmul {ceilings[dtype]['matmul']:.1f} GFLOP/s "
            f"({config.matmul_size}^3), conv {ceilings[dtype]['conv']:.1f} GFLOP/s (3x3, "
            f"{CONV_BATCH}x{config.conv_size}x{config.conv_size}x{CONV_CHANNELS}); "
            f"load average {os.getloadavg()[0]:.2f}")
    runners = {}
    for name in config.peers:
        for dtype in config.dtypes:
            runner = make_peer(name, config, dtype)
            if config.warmup_steps:
                runner.run(config.warmup_steps)
            runners[name, dtype] = runner
    rates = {key: [] for key in runners}
    for round_index in range(config.rounds):
        for key, runner in runners.items():
            rates[key].append(config.steps * config.batch_size / runner.run(config.steps))
        log(f"round {round_index + 1}: " + ", ".join(
            f"{name} {dtype} {values[-1]:.2f} img/s" for (name, dtype), values in rates.items())
            + f" (load {os.getloadavg()[0]:.2f})")
    results = {}
    for (name, dtype), runner in runners.items():
        flops = 3 * forward_flops(runner.model)
        median = statistics.median(rates[name, dtype])
        gflops = median * flops / 1e9
        results[name, dtype] = {
            "images_per_second": median, "rounds": rates[name, dtype],
            "train_gflop_per_image": flops / 1e9, "gflops": gflops,
            "share_of_matmul": gflops / ceilings[dtype]["matmul"],
            "share_of_conv": gflops / ceilings[dtype]["conv"]}
    first = config.dtypes[0]
    return {"ceilings": ceilings, "runners": results,
            "architectures": {name: architecture(runners[name, first].model)
                              for name in config.peers},
            "descriptions": {name: runners[name, first].description for name in config.peers},
            "load_average": os.getloadavg()}


def ratio(results: dict, runner: tuple[str, str], reference: tuple[str, str]) -> float:
    """Median over rounds of runner/reference images/s (each round measured back to back)."""
    mine = results["runners"][runner]["rounds"]
    theirs = results["runners"][reference]["rounds"]
    return statistics.median(a / b for a, b in zip(mine, theirs))


def format_table(config: BenchConfig, results: dict) -> str:
    lines = [f"ResNet-{config.resnet_size} {config.image_size}x{config.image_size}x"
             f"{config.channels}, batch {config.batch_size}, synthetic data, {config.rounds} "
             f"rounds x {config.steps} steps"]
    for name, arch in results["architectures"].items():
        lines.append(
            f"{name}: {results['descriptions'][name]}, {arch['parameters']:,} parameters, "
            f"{arch['convolutions']} convs ({arch['conv_biases']} with bias), "
            f"{arch['batch_norms']} batch norms, stride 2 on {arch['strided_1x1']} 1x1 + "
            f"{arch['strided_3x3']} 3x3 convs, {arch['forward_gmac']:.3f} G multiply-adds "
            "forward")
    lines.append(f"{'peer':<14}{'dtype':<6}{'img/s (median)':>15}{'per round':>24}"
                 f"{'GFLOP/img':>10}{'GFLOP/s':>9}{'of matmul':>10}{'of conv':>9}")
    for (name, dtype), row in results["runners"].items():
        rounds = " ".join(f"{value:.2f}" for value in row["rounds"])
        lines.append(f"{name:<14}{dtype:<6}{row['images_per_second']:>15.2f}  {rounds:>22}"
                     f"{row['train_gflop_per_image']:>10.2f}{row['gflops']:>9.1f}"
                     f"{row['share_of_matmul']:>10.0%}{row['share_of_conv']:>9.0%}")
    for dtype, ceiling in results["ceilings"].items():
        lines.append(f"{dtype} ceilings (same run): matmul {ceiling['matmul']:.1f} GFLOP/s, "
                     f"conv {ceiling['conv']:.1f} GFLOP/s")
    lines.append("load average (1/5/15 min) "
                 + " ".join(f"{v:.2f}" for v in results["load_average"]))
    runners = results["runners"]
    for dtype in config.dtypes:
        if ("keras_fit", dtype) not in runners:
            continue
        keras_row = runners["keras_fit", dtype]
        for name in config.peers:
            if name.startswith("ours"):
                work = runners[name, dtype]["gflops"] / keras_row["gflops"]
                lines.append(f"ratio {name} / keras_fit ({dtype}): "
                             f"{ratio(results, (name, dtype), ('keras_fit', dtype)):.2f}x "
                             f"images/s, {work:.2f}x GFLOP/s")
    for peer in ("ours_conv", "ours_convgrad"):
        if "ours" in config.peers and peer in config.peers:
            for dtype in config.dtypes:
                lines.append(f"ratio ours / {peer} ({dtype}): "
                             f"{ratio(results, ('ours', dtype), (peer, dtype)):.2f}x images/s")
    if "fp32" in config.dtypes:
        for dtype in config.dtypes:
            if dtype != "fp32":
                for name in config.peers:
                    lines.append(f"ratio {name} {dtype} / {name} fp32: "
                                 f"{ratio(results, (name, dtype), (name, 'fp32')):.2f}x images/s")
    return "\n".join(lines)
