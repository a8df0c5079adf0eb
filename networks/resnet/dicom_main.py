"""Train and evaluate a ResNet on a converted dataset (native TensorFlow, tf.distribute).

The original example command works, --data_dir being the folder tf_convert_data.py wrote (its
--output_dir; README.md converts /data/sample/training into /data/sample/records):

    python networks/resnet/dicom_main.py \\
    --data_dir=/data/sample/records \\
    --model_dir=/data/model \\
    --train_epochs=100 \\
    --epochs_between_evals=1  \\
    --batch_size=32 \\
    --version=2 \\
    --resnet_size=152 \\
    --multi_gpu=False

A small-image run on MedNIST-style 64x64 data, exporting a SavedModel at the end:

    python networks/resnet/dicom_main.py -dd data/mednist -md runs/r18 -rs 18 -te 3 \\
        --image_size=64 --batch_size=64 --export_dir=runs/r18/export

Rerunning with the same --model_dir resumes from its last checkpoint. Every flag: --help.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))))

from absl import flags  # noqa: E402

from dataset import converted  # noqa: E402
from official.core.config import TrainConfig, check_run_folders  # noqa: E402
from official.utils import cli  # noqa: E402
from official.utils.flags import core as flags_core  # noqa: E402
from official.utils.misc import cluster_config  # noqa: E402

FLAGS = flags.FLAGS
PROGRAM = "dicom_main.py"


def config_from_flags() -> TrainConfig:
    """FLAGS -> frozen TrainConfig (with network_from_flags, the only code that reads FLAGS)."""
    return TrainConfig(
        model_dir=FLAGS.model_dir, data_dir=FLAGS.data_dir,
        image_size=FLAGS.image_size, channels=FLAGS.channels, train_epochs=FLAGS.train_epochs,
        epochs_between_evals=FLAGS.epochs_between_evals, stop_threshold=FLAGS.stop_threshold,
        max_train_steps=FLAGS.max_train_steps,
        train_budget_seconds=FLAGS.train_budget_seconds, batch_size=FLAGS.batch_size, dtype=FLAGS.dtype,
        loss_scale=FLAGS.loss_scale, base_learning_rate=FLAGS.base_learning_rate,
        lr_scaling=FLAGS.lr_scaling, lr_schedule=FLAGS.lr_schedule,
        warmup_epochs=FLAGS.warmup_epochs,
        weight_decay=FLAGS.weight_decay, label_smoothing=FLAGS.label_smoothing,
        batch_norm_momentum=FLAGS.batch_norm_momentum,
        random_flip=FLAGS.random_flip, mirror_swap=FLAGS.mirror_swap,
        mirror_axis=FLAGS.mirror_axis, augment_scale=FLAGS.augment_scale,
        augment_translate=FLAGS.augment_translate, augment_rotate=FLAGS.augment_rotate,
        augment_noise=FLAGS.augment_noise, augment_invert=FLAGS.augment_invert,
        augment_gamma=FLAGS.augment_gamma, augment_blur=FLAGS.augment_blur,
        augment_rot90=FLAGS.augment_rot90, augment_frame=FLAGS.augment_frame,
        color_jitter=FLAGS.color_jitter, mixup_alpha=FLAGS.mixup_alpha,
        cutmix_alpha=FLAGS.cutmix_alpha, ema_decay=FLAGS.ema_decay,
        export_tta=FLAGS.export_tta, train_split=FLAGS.train_split,
        eval_split=FLAGS.eval_split, use_synthetic_data=FLAGS.use_synthetic_data,
        synthetic_num_classes=FLAGS.synthetic_num_classes,
        num_parallel_calls=FLAGS.num_parallel_calls, cache=FLAGS.cache,
        steps_per_loop=FLAGS.steps_per_loop, jit_compile=FLAGS.jit_compile,
        checkpoint_every_steps=FLAGS.checkpoint_every_steps,
        keep_checkpoints=FLAGS.keep_checkpoints, seed=FLAGS.seed,
        deterministic=FLAGS.deterministic, hooks=flags_core.parse_hooks(FLAGS.hooks),
        log_every_steps=FLAGS.log_every_steps, export_dir=FLAGS.export_dir,
        benchmark_log_dir=FLAGS.benchmark_log_dir, gcp_project=FLAGS.gcp_project,
        bigquery_data_set=FLAGS.bigquery_data_set, bigquery_run_table=FLAGS.bigquery_run_table,
        bigquery_metric_table=FLAGS.bigquery_metric_table)


def network_arguments_from_flags() -> dict:
    """FLAGS -> the ResNetNetwork arguments (networks/resnet/train_steps.py)."""
    return dict(resnet_size=int(FLAGS.resnet_size), version=int(FLAGS.version),
                small_input=FLAGS.small_input, data_format=FLAGS.data_format)


def main(argv) -> None:
    del argv  # cli.flags_parser refused any

    def run() -> str:
        # The flags, the folders, the cluster and the data's splits are checked before
        # TensorFlow's import (5 s): a mistake is said at once. (train_lib.train checks the
        # folders again, for its other callers.)
        config, arguments = config_from_flags(), network_arguments_from_flags()
        check_run_folders(config)
        cluster_config.resolve_cluster(FLAGS.worker_hosts, FLAGS.task_index)
        if config.data_dir and not config.use_synthetic_data:
            train = converted.split_info(config.data_dir, config.train_split)
            converted.split_info(config.data_dir, config.eval_split)
            # official/core/train_input.py resolve_data checks the pairs again, after the
            # import: that check guards train_lib.train's other callers (code calling the
            # library, a --use_synthetic_data run on a converted folder), not this program.
            config.check_mirror_pairs(train.class_names)
        import tensorflow as tf

        from networks.resnet import train_steps
        from official.core import train_lib
        from official.utils.logs import logger as logger_lib
        from official.utils.misc import distribution_utils

        network = train_steps.ResNetNetwork(**arguments)
        if config.gcp_project:
            logger_lib.require_bigquery()  # fail before hours of training, not after
        # Thread pools and devices must be set before TensorFlow initialises.
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_parallelism_threads)
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.intra_op_parallelism_threads)
        strategy = distribution_utils.get_distribution_strategy(
            FLAGS.num_gpus, FLAGS.multi_gpu, FLAGS.num_cpu_replicas,
            worker_hosts=FLAGS.worker_hosts, task_index=FLAGS.task_index,
            collective_timeout_seconds=FLAGS.collective_timeout_seconds,
            heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_seconds,
            startup_timeout_seconds=FLAGS.startup_timeout_seconds)
        result = train_lib.train(config, strategy, network)
        return result.summary_line(eval_split=config.eval_split, model_dir=config.model_dir,
                                   replicas=strategy.num_replicas_in_sync)

    cli.print_summary_or_exit(PROGRAM, run)


if __name__ == "__main__":
    flags_core.define_flags()
    flags.adopt_module_key_flags(flags_core)  # --help lists them, not only --helpfull
    cli.run_program(PROGRAM, main, cli.flags_parser(PROGRAM),
                    interrupted=lambda: cli.checkpoints_left(FLAGS.model_dir), skip_teardown=True)
