"""Does the input pipeline keep up? Training on real converted records vs synthetic data, same run.

  python benchmarks/pipeline_bench.py [--data_dir=CONVERTED_MEDNIST] [--rounds=4] [--steps=10]

Trains the same ResNet (default: the MedNIST recipe's ResNet-18 at 64x64, ImageNet stem,
batch 128) twice in one process: once fed by the trainer's real input pipeline
(train_input.train_dataset: parallel interleave over shards, parallel parse + JPEG/PNG decode,
shuffle, parallel augmentation, batch, prefetch) and once with --use_synthetic_data (one random
batch repeated, no pipeline). One side at a time: its trainer is built, warmed up (which
fills the shuffle buffer), timed for `--rounds` blocks of `--steps` steps, and deleted with its
prefetching iterator before the other side is built, so the real pipeline's background threads
never run during the synthetic side's timing. The ratio real/synthetic (of the median block
rates) is 1.0 when the pipeline is never the bottleneck. Both share the same CPU cores, so the
pipeline's own CPU time shows up in the ratio; the sides are not interleaved, so a change in
machine load between them shows up too (the load average is printed per block).

Measured first: the pipeline alone (no model; --pipeline_only stops there), images/s with all
cores and with a private one-thread pool, i.e. the rate one CPU core sustains (how many cores
keep a GPU fed).

Without --data_dir, ../shared/data/MedNIST-dev.tar.gz is extracted and converted
(tf_convert_data.py --need_split=tvt_split) into a temporary folder first.
"""

from __future__ import annotations

import os
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from absl import app, flags  # noqa: E402

from official.core.config import DTYPE_POLICIES  # noqa: E402  (no TensorFlow)
from official.utils import cli  # noqa: E402

PROGRAM = "pipeline_bench.py"
FLAGS = cli.program_flags()
flags.DEFINE_string("data_dir", None, "converted MedNIST (default: convert "
                    "../shared/data/MedNIST-dev.tar.gz into a temporary folder)",
                    flag_values=FLAGS)
flags.DEFINE_integer("resnet_size", 18, "ResNet depth: 18, 34, 50, 101, 152 or 200.",
                     flag_values=FLAGS)
flags.DEFINE_integer("image_size", 64, "Image side in pixels.", flag_values=FLAGS)
flags.DEFINE_boolean("small_input", False, "The 3x3 stride-1 stem without max-pool.",
                     flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 128, "Batch size.", flag_values=FLAGS)
flags.DEFINE_enum("dtype", "fp32", list(DTYPE_POLICIES), "Precision.", flag_values=FLAGS)
flags.DEFINE_integer("rounds", 4, "Timed blocks per side.", flag_values=FLAGS)
flags.DEFINE_integer("steps", 10, "Steps per timed block.", flag_values=FLAGS)
flags.DEFINE_integer("warmup_steps", 3, "Untimed steps per side first.", flag_values=FLAGS)
flags.DEFINE_integer("pipeline_batches", 40, "Batches timed of the pipeline alone.",
                     flag_values=FLAGS)
flags.DEFINE_boolean("cache", False, "Cache the decoded records.", flag_values=FLAGS)
flags.DEFINE_integer("num_parallel_calls", 4, "Parallel preprocessing calls.",
                     flag_values=FLAGS)
flags.DEFINE_boolean("pipeline_only", False,
                     "only the pipeline's own images/s (no model, no ratio)", flag_values=FLAGS)
parse_flags = cli.flags_parser(PROGRAM, FLAGS, doc=__doc__)


def main(argv: list[str]) -> None:
    del argv  # no positional arguments (parse_flags checked)
    if min(FLAGS.rounds, FLAGS.steps, FLAGS.batch_size, FLAGS.pipeline_batches) < 1:
        cli.exit_with_error(PROGRAM, "--rounds, --steps, --batch_size and --pipeline_batches "
                            "must be >= 1", status=2)
    from benchmarks import pipeline_bench_lib

    with tempfile.TemporaryDirectory(prefix="pipeline_bench_data_") as work_dir:
        try:
            data_dir = FLAGS.data_dir or pipeline_bench_lib.convert_mednist(work_dir)
        except FileNotFoundError as error:
            cli.exit_with_error(PROGRAM, error, status=2)
        config = pipeline_bench_lib.PipelineBenchConfig(
            data_dir=data_dir, resnet_size=FLAGS.resnet_size, image_size=FLAGS.image_size,
            small_input=FLAGS.small_input, batch_size=FLAGS.batch_size, dtype=FLAGS.dtype,
            rounds=FLAGS.rounds, steps=FLAGS.steps, warmup_steps=FLAGS.warmup_steps,
            pipeline_batches=FLAGS.pipeline_batches, cache=FLAGS.cache,
            num_parallel_calls=FLAGS.num_parallel_calls, pipeline_only=FLAGS.pipeline_only)
        results = pipeline_bench_lib.run_benchmark(config)
        print(pipeline_bench_lib.format_table(config, results), flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
