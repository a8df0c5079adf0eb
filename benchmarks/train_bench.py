"""Training throughput of our trainer vs Keras `fit` on the same ResNet, fp32 and bf16, same run.

  python benchmarks/train_bench.py [--resnet_size=50] [--version=1] [--image_size=224] \\
      [--batch_size=32] [--dtypes=fp32,bf16] [--peers=ours,keras_fit] [--rounds=3] [--steps=3]

Like with like: "keras_fit" trains keras.applications.ResNet{50,101,152}, which is ResNet v1, so
"ours" runs --version=1 (our v1 is "v1.5": same 53 convolutions, 53 batch norms and parameter
shapes; the stride of a downsampling block sits on its 3x3 instead of its first 1x1, +6% FLOPs;
Keras' convolutions carry biases, ours do not). keras.applications.ResNet50V2 is further from our
v2 (it downsamples in the last block of a stage, with max-pool shortcuts: -15% FLOPs), so there
is no v2 peer. The table prints each model's parameter count, layer counts, where its strides
sit and its FLOPs, so the match can be checked rather than trusted.

Both sides train on synthetic data (one random batch repeated: no input pipeline) with the same
batch, image size, channels and precision. "ours" is the trainer's own code path
(train_input.train_dataset with --use_synthetic_data, train_steps.build_training_state and
make_train_function, `--steps` steps in one tf.function call); "keras_fit" is
`model.fit(dataset, steps_per_epoch=...)` with Keras' defaults (no XLA on a CPU-only machine),
built under the global policy of the dtype ("mixed_bfloat16" for bf16). Optional peers:
"ours_xla" (jit_compile on the step), "ours_loop1" (one step per call, Python between steps),
"ours_conv" (ours with every convolution a oneDNN Conv2D: no PatchMatmulConv2D on tiny maps),
"ours_convgrad" (ours with oneDNN's kernel gradients at 4x4: no MatmulKernelGradConv2D),
"keras_fit_xla" (compile(jit_compile=True)). Every peer runs in every dtype of --dtypes.

Warm-up (tracing, XLA compilation, oneDNN kernel creation) is excluded: each runner first runs
`--warmup_steps` steps, then all runners take turns, `--steps` timed steps each per round, so a
change in machine load hits all of them alike. Per-round images/s are printed with the median.

Ceilings, measured in the same process for each dtype: a square matmul (--matmul_size^3) and a
3x3 convolution (batch 32, --conv_size^2 pixels, 128 -> 128 channels), best GFLOP/s over
2 s each. Each runner's throughput is reported as a share of both ceilings of its
own dtype, counting 3x the forward FLOPs (forward + two backward products per layer) of the
model's convolutions and dense layers (multiply-add = 2 FLOPs). keras ResNet50 at 224x224x3:
3.86 G multiply-adds forward, 23.1 GFLOP per training image by this count (the often-quoted
4.1 G also counts batch norm, ReLU, pooling and additions, which are memory-bound work).
"""

from __future__ import annotations

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from absl import app, flags  # noqa: E402

from official.utils import cli  # noqa: E402

PROGRAM = "train_bench.py"
FLAGS = cli.program_flags()
flags.DEFINE_integer("resnet_size", 50, "ResNet depth: 18, 34, 50, 101, 152 or 200 (the keras_fit "
                     "peers: 50, 101 or 152).", flag_values=FLAGS)
flags.DEFINE_integer("version", 1, "1 (v1.5, the keras peers' match) or 2 (ours only)",
                     flag_values=FLAGS)
flags.DEFINE_integer("image_size", 224, "Image side in pixels.", flag_values=FLAGS)
flags.DEFINE_integer("channels", 3, "Image channels.", flag_values=FLAGS)
flags.DEFINE_boolean("small_input", False, "our 3x3 stride-1 stem without max-pool (ours only)",
                     flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 32, "Batch size.", flag_values=FLAGS)
flags.DEFINE_string("dtypes", "fp32,bf16", "comma-separated: fp32,bf16,fp16", flag_values=FLAGS)
flags.DEFINE_integer("num_classes", 1000, "Classes of the synthetic data.", flag_values=FLAGS)
flags.DEFINE_string("peers", "ours,keras_fit", "comma-separated: ours, ours_xla, ours_loop1, "
                    "ours_conv, ours_convgrad, keras_fit, keras_fit_xla", flag_values=FLAGS)
flags.DEFINE_integer("rounds", 3, "Timed rounds.", flag_values=FLAGS)
flags.DEFINE_integer("steps", 3, "Timed steps per runner and round.", flag_values=FLAGS)
flags.DEFINE_integer("warmup_steps", 2, "Untimed steps per runner first.", flag_values=FLAGS)
flags.DEFINE_integer("matmul_size", 2048, "Side of the matmul ceiling.", flag_values=FLAGS)
flags.DEFINE_integer("conv_size", 28, "Side of the convolution ceiling.", flag_values=FLAGS)
flags.DEFINE_integer("inter", 0, "inter-op threads (0: TF picks)", flag_values=FLAGS)
flags.DEFINE_integer("intra", 0, "intra-op threads (0: TF picks)", flag_values=FLAGS)
parse_flags = cli.flags_parser(PROGRAM, FLAGS, doc=__doc__)


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def main(argv: list[str]) -> None:
    del argv  # no positional arguments (parse_flags checked)
    import tensorflow as tf

    from benchmarks import train_bench_lib

    try:
        config = train_bench_lib.BenchConfig(
            resnet_size=FLAGS.resnet_size, version=FLAGS.version, image_size=FLAGS.image_size,
            channels=FLAGS.channels, small_input=FLAGS.small_input,
            batch_size=FLAGS.batch_size, dtypes=_names(FLAGS.dtypes),
            num_classes=FLAGS.num_classes, peers=_names(FLAGS.peers), rounds=FLAGS.rounds,
            steps=FLAGS.steps, warmup_steps=FLAGS.warmup_steps,
            matmul_size=FLAGS.matmul_size, conv_size=FLAGS.conv_size)
    except ValueError as error:  # flags that do not go together
        cli.exit_with_error(PROGRAM, error, status=2)
    # Before any op runs: TensorFlow fixes its thread pools at initialisation.
    tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter)
    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.intra)
    results = train_bench_lib.run_benchmark(config)
    print(train_bench_lib.format_table(config, results), flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
