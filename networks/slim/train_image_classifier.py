"""Train Inception-v4 and keras.applications networks on a converted dataset, with TF-Slim's
script and flag names.

The original README's commands work (plus --dataset_dir, the converter's --output_dir):

    python networks/slim/train_image_classifier.py \\
    --save_interval_secs=3000 --save_summaries_secs=3000 \\
    --dataset_dir=/data/sample/records \\
    --train_dir=/data/log_dir/inception_v4 \\
    --model_name=inception_v4 \\
    --max_number_of_steps=1680

Fine-tune only the new head from local ImageNet weights, then everything from that run:

    python networks/slim/train_image_classifier.py --dataset_dir=data/mednist \\
        --train_dir=runs/iv3_head --model_name=inception_v3 --image_size=139 \\
        --checkpoint_path=weights/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5 \\
        --trainable_scopes=logits --max_number_of_steps=500
    python networks/slim/train_image_classifier.py --dataset_dir=data/mednist \\
        --train_dir=runs/iv3_all --model_name=inception_v3 --image_size=139 \\
        --checkpoint_path=runs/iv3_head --optimizer=momentum --learning_rate=0.001 \\
        --max_number_of_steps=2000

The loop, input pipeline, distribution, precision, resume, evaluation and export are the ResNet
trainer's (official/core/train_lib.py): rerunning with the same --train_dir resumes;
the validation split is evaluated every --epochs_between_evals epochs. Every flag: --help.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))))

from absl import flags, logging  # noqa: E402

from networks.slim import choices  # noqa: E402
from networks.slim.choices import DECAY_TYPES, OPTIMIZERS  # noqa: E402
from official.core.config import (DTYPE_POLICIES, TrainConfig, check_run_folders,  # noqa: E402
                                  config_to_resume)
from official.utils import cli  # noqa: E402

FLAGS = flags.FLAGS
PROGRAM = "train_image_classifier.py"
DEFAULT_EPOCHS = 100  # with neither --max_number_of_steps nor --train_epochs


def define_flags() -> None:
    """Slim's names and defaults where Slim had the flag; the ResNet trainer's otherwise."""
    d = flags
    d.DEFINE_string("train_dir", None, "Checkpoints, config.json and summaries; rerunning "
                    "with the same folder resumes.")
    d.DEFINE_string("dataset_dir", None, "A folder written by tf_convert_data.py.")
    d.DEFINE_string("dataset_split_name", "train", "The split to train on; several with "
                    "commas (e.g. train,validation).")
    d.DEFINE_string("dataset_name", None, "Accepted for Slim's commands; the dataset is the "
                    "one --dataset_dir holds (its classes and splits are in its manifest).")
    d.DEFINE_string("eval_split_name", "validation", "The split evaluated after each cycle.")
    d.DEFINE_string("model_name", "inception_v3", "The network: "
                    + ", ".join(choices.NETWORK_NAMES) + " (Keras class names such as "
                    "InceptionV3 too).")
    d.DEFINE_string("checkpoint_path", None, "Initial weights, from a local file only: a "
                    ".weights.h5/.h5 of the backbone (keras.applications *_notop.h5), a .keras "
                    "model, or a --train_dir (or its ckpt-N) of this tool. Ignored when "
                    "--train_dir already has a checkpoint.")
    d.DEFINE_list("checkpoint_exclude_scopes", [], "Layer-name prefixes NOT loaded from "
                  "--checkpoint_path (they keep their fresh initialisation).")
    d.DEFINE_list("trainable_scopes", [], "Layer-name prefixes that train; all others are "
                  "frozen (batch norm in inference mode). Empty: everything trains. "
                  "'logits' is the new head.")
    d.DEFINE_integer("max_number_of_steps", None, "Stop after this many steps.", lower_bound=1)
    d.DEFINE_float("train_budget_seconds", None, "Train as many steps as fit in this many "
                   "seconds on this machine, at most --train_epochs (a few steps are "
                   "timed first), longer if the steps then run faster, and stop at that "
                   "budget if the machine slows down (official/core/budget.py).",
                   lower_bound=1.0)
    d.DEFINE_integer("train_epochs", None, "Stop after this many epochs (default: until "
                     f"--max_number_of_steps, or {DEFAULT_EPOCHS} epochs).", lower_bound=1)
    d.DEFINE_integer("epochs_between_evals", 1, "Evaluate every this many epochs.",
                     lower_bound=1)
    d.DEFINE_integer("batch_size", 32, "Global batch size, split over the replicas (in "
                     "TF-Slim it was per clone: --num_clones=4 --batch_size=32 there is "
                     "--batch_size=128 here).", lower_bound=1)
    d.DEFINE_integer("image_size", None, "Input height and width in pixels (default: the "
                     "network's; networks/slim/README.md lists each default and minimum).",
                     lower_bound=1)
    # Its own flag, not an alias: with an alias, --image_size=299 --train_image_size=139
    # quietly trained at the last one given.
    d.DEFINE_integer("train_image_size", None, "TF-Slim's name for --image_size.",
                     lower_bound=1)
    d.register_multi_flags_validator(
        ["image_size", "train_image_size"],
        lambda values: None in values.values() or len(set(values.values())) == 1,
        "--image_size and --train_image_size (TF-Slim's name for it) differ: give one")
    d.DEFINE_enum("channels", "1", ("1", "3"), "Decoded image channels (1: grey, repeated to 3 "
                  "inside the model).")
    d.DEFINE_boolean("random_flip", False, "Random left-right flips (not for laterality).")
    d.DEFINE_enum("optimizer", "rmsprop", OPTIMIZERS, "The optimizer.")
    d.DEFINE_float("learning_rate", 0.01, "Initial learning rate.")
    d.DEFINE_enum("learning_rate_decay_type", "exponential", DECAY_TYPES, "fixed; exponential: "
                  "times --learning_rate_decay_factor every --num_epochs_per_decay epochs; "
                  "polynomial: linearly to --end_learning_rate over --num_epochs_per_decay "
                  "epochs, then constant.")
    d.DEFINE_float("learning_rate_decay_factor", 0.94, "Exponential decay factor.")
    d.DEFINE_float("num_epochs_per_decay", 2.0, "Epochs between decays.")
    d.DEFINE_float("end_learning_rate", 0.0001, "Polynomial decay's final rate.")
    d.DEFINE_float("momentum", 0.9, "Momentum of --optimizer=momentum.")
    d.DEFINE_float("rmsprop_momentum", 0.9, "RMSProp momentum.")
    d.DEFINE_float("rmsprop_decay", 0.9, "RMSProp decay (rho).")
    d.DEFINE_float("opt_epsilon", 1.0, "Epsilon of Adam and RMSProp.")
    d.DEFINE_float("adam_beta1", 0.9, "Adam beta 1.")
    d.DEFINE_float("adam_beta2", 0.999, "Adam beta 2.")
    d.DEFINE_float("weight_decay", 0.00004, "L2 on the trainable kernels: weight_decay * "
                   "sum(w**2) / 2, as Slim's l2_regularizer.", lower_bound=0.0)
    d.DEFINE_float("label_smoothing", 0.0, "Label smoothing.", lower_bound=0.0)
    d.DEFINE_float("moving_average_decay", None, "Keep an exponential moving average of the "
                   "weights with this decay (e.g. 0.9999): the average is what is evaluated, "
                   "checkpointed and exported, and what eval_image_classifier.py and "
                   "dicom_eval.py load (dicom_main.py's --ema_decay). Default: none.",
                   lower_bound=0.0, upper_bound=1.0)
    d.DEFINE_enum("dtype", "fp32", tuple(DTYPE_POLICIES), "Compute precision, as "
                  "dicom_main.py's --dtype (fp16 is for GPUs; on a CPU, bf16).")
    d.DEFINE_integer("num_clones", None, "GPUs to mirror over (default: 1 if visible, else "
                     "0: the CPU).",
                     lower_bound=0)
    d.DEFINE_integer("num_cpu_replicas", 0, "Mirror over this many logical CPUs (testing).",
                     lower_bound=0)
    d.DEFINE_integer("num_preprocessing_threads", 4, "Parallel preprocessing calls.",
                     lower_bound=1)
    d.DEFINE_integer("log_every_n_steps", 10, "Log the loss every this many steps.",
                     lower_bound=1)
    d.DEFINE_integer("checkpoint_every_steps", 500, "Also checkpoint every this many steps "
                     "(0: only at each evaluation, where it always does).", lower_bound=0)
    d.DEFINE_integer("save_interval_secs", 600, "Accepted for Slim's commands; checkpoints "
                     "follow --checkpoint_every_steps and the evaluations.")
    d.DEFINE_integer("save_summaries_secs", 600, "Accepted for Slim's commands; summaries are "
                     "written every step.")
    d.DEFINE_integer("seed", None, "Random seed.")
    d.DEFINE_string("export_dir", None, "Export a SavedModel here at the end.")
    d.mark_flags_as_required(["train_dir", "dataset_dir"])


def configs_from_flags():
    """FLAGS -> (TrainConfig, SlimConfig): the only place that reads FLAGS."""
    from networks.slim import nets
    from networks.slim.slim_train import SlimConfig

    name = choices.resolve_name(FLAGS.model_name)
    if name != FLAGS.model_name.strip().lower():
        logging.info("--model_name=%s: the network %s", FLAGS.model_name, name)
    image_size = (FLAGS.image_size or FLAGS.train_image_size
                  or nets.NETWORKS[name].default_image_size)
    nets.check_image_size(name, image_size)
    epochs = FLAGS.train_epochs or (10**9 if FLAGS.max_number_of_steps else DEFAULT_EPOCHS)
    train = TrainConfig(
        model_dir=FLAGS.train_dir, data_dir=FLAGS.dataset_dir, image_size=image_size,
        channels=int(FLAGS.channels), train_epochs=epochs,
        epochs_between_evals=FLAGS.epochs_between_evals,
        max_train_steps=FLAGS.max_number_of_steps,
        train_budget_seconds=FLAGS.train_budget_seconds, batch_size=FLAGS.batch_size,
        dtype=FLAGS.dtype, weight_decay=FLAGS.weight_decay,
        # Unused by the Slim schedule (config.json's "slim" has it), recorded for the reader.
        base_learning_rate=FLAGS.learning_rate, lr_scaling="none", momentum=FLAGS.momentum,
        label_smoothing=FLAGS.label_smoothing, random_flip=FLAGS.random_flip,
        train_split=FLAGS.dataset_split_name, eval_split=FLAGS.eval_split_name,
        num_parallel_calls=FLAGS.num_preprocessing_threads,
        checkpoint_every_steps=FLAGS.checkpoint_every_steps, seed=FLAGS.seed,
        log_every_steps=FLAGS.log_every_n_steps, export_dir=FLAGS.export_dir,
        ema_decay=FLAGS.moving_average_decay or 0.0)
    slim = SlimConfig(
        model_name=name, checkpoint_path=FLAGS.checkpoint_path,
        checkpoint_exclude_scopes=tuple(FLAGS.checkpoint_exclude_scopes),
        trainable_scopes=tuple(FLAGS.trainable_scopes), optimizer=FLAGS.optimizer,
        learning_rate=FLAGS.learning_rate,
        learning_rate_decay_type=FLAGS.learning_rate_decay_type,
        learning_rate_decay_factor=FLAGS.learning_rate_decay_factor,
        num_epochs_per_decay=FLAGS.num_epochs_per_decay,
        end_learning_rate=FLAGS.end_learning_rate, momentum=FLAGS.momentum,
        rmsprop_momentum=FLAGS.rmsprop_momentum, rmsprop_decay=FLAGS.rmsprop_decay,
        opt_epsilon=FLAGS.opt_epsilon, adam_beta1=FLAGS.adam_beta1,
        adam_beta2=FLAGS.adam_beta2)
    return train, slim


def run() -> str:
    # What needs no TensorFlow is checked before its import (seconds): the folders from their
    # paths alone (train_lib.train checks them again with the whole config).
    choices.resolve_name(FLAGS.model_name)
    check_run_folders(TrainConfig(model_dir=FLAGS.train_dir, data_dir=FLAGS.dataset_dir,
                                  export_dir=FLAGS.export_dir))
    if FLAGS.checkpoint_path and config_to_resume(FLAGS.train_dir) is None:  # as check_resume
        choices.check_checkpoint_path(FLAGS.checkpoint_path)
    from networks.slim import slim_train
    from official.core import train_lib
    from official.utils.misc import distribution_utils

    train_config, slim = configs_from_flags()
    if slim.checkpoint_exclude_scopes and not slim.checkpoint_path:
        logging.warning("--checkpoint_exclude_scopes has no effect without --checkpoint_path")
    slim_train.check_resume(train_config.model_dir, slim)
    strategy = distribution_utils.get_distribution_strategy(
        FLAGS.num_clones, False, FLAGS.num_cpu_replicas, gpus_flag="--num_clones")
    result = train_lib.train(train_config, strategy, slim_train.SlimNetwork(slim))
    return result.summary_line(eval_split=train_config.eval_split,
                               model_dir=train_config.model_dir,
                               replicas=strategy.num_replicas_in_sync, dir_flag="train_dir")


def main(argv) -> None:
    del argv  # cli.flags_parser refused any
    cli.print_summary_or_exit(PROGRAM, run)


if __name__ == "__main__":
    define_flags()
    cli.run_program(PROGRAM, main, cli.flags_parser(PROGRAM),
                    interrupted=lambda: cli.checkpoints_left(FLAGS.train_dir), skip_teardown=True)
