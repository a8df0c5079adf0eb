"""Evaluate a train_dir (or a checkpoint, or an exported SavedModel) on a split, Slim's way.

    python networks/slim/eval_image_classifier.py --alsologtostderr \\
    --model_name=inception_v4 \\
    --checkpoint_path=/data/log_dir/inception_v4 \\
    --dataset_dir=/data/sample/records --dataset_split_name=test

The model is rebuilt from the train_dir's config.json (--model_name is only checked against it)
and evaluated through the same serving path as networks/resnet/dicom_eval.py, which writes the
report (metrics.json, confusion_matrix.png, misclassified.csv, TensorBoard events) to
--eval_dir (default: <train_dir>/eval_<split>; eval_<split>-<its folder's name> for data other
than the training data; -ckpt-N added for a named ckpt-N).
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))))

from absl import flags  # noqa: E402

from official.utils import cli  # noqa: E402

FLAGS = flags.FLAGS
PROGRAM = "eval_image_classifier.py"


def define_flags() -> None:
    flags.DEFINE_string("checkpoint_path", None, "A --train_dir (latest checkpoint), one of its "
                        "ckpt-N prefixes, or an exported SavedModel.")
    flags.DEFINE_string("dataset_dir", None, "A folder written by tf_convert_data.py.")
    flags.DEFINE_string("dataset_split_name", "test", "The split to evaluate.")
    flags.DEFINE_string("dataset_name", None, "Accepted for Slim's commands; the dataset is "
                        "the one --dataset_dir holds.")
    flags.DEFINE_float("moving_average_decay", None, "Accepted for Slim's commands: a run "
                       "trained with --moving_average_decay is evaluated on its average "
                       "whatever this says.")
    flags.DEFINE_string("model_name", None, "Optional: checked against the trained network.")
    flags.DEFINE_string("eval_dir", None, "Where the report goes (default: next to the model).")
    flags.DEFINE_integer("batch_size", 100, "Images per inference batch.", lower_bound=1)
    flags.mark_flags_as_required(["checkpoint_path", "dataset_dir"])


def main(argv) -> None:
    del argv  # cli.flags_parser refused any
    from networks.slim import slim_eval

    try:
        metrics, output_dir = slim_eval.evaluate(
            FLAGS.checkpoint_path, FLAGS.dataset_dir, FLAGS.dataset_split_name,
            batch_size=FLAGS.batch_size, model_name=FLAGS.model_name, eval_dir=FLAGS.eval_dir)
    except (OSError, ValueError) as error:
        cli.exit_with_error(PROGRAM, error)
    print(f"{FLAGS.dataset_split_name}: accuracy {metrics['accuracy']:.4f} on "
          f"{metrics['num_examples']} images; report in {output_dir}", flush=True)


if __name__ == "__main__":
    define_flags()
    cli.run_program(PROGRAM, main, cli.flags_parser(PROGRAM),
                    interrupted=lambda: cli.report_left(FLAGS.eval_dir),
                    skip_teardown=True)
