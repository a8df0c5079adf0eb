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

A wrong --dataset_dir, split, --checkpoint_path, --model_name or --eval_dir, and data with a
class the model lacks, are refused in one line before TensorFlow's import (seconds).
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))))

import re  # noqa: E402

from absl import flags  # noqa: E402

from dataset import converted  # noqa: E402
from networks.slim import choices  # noqa: E402
from official.core import model_paths  # noqa: E402
from official.core.config import CONFIG_FILE, has_checkpoint, read_config  # noqa: E402
from official.utils import cli  # noqa: E402

FLAGS = flags.FLAGS
PROGRAM = "eval_image_classifier.py"


# One file of a checkpoint (what a file browser shows) rather than its prefix ckpt-N.
_CHECKPOINT_FILE = re.compile(r"\.(index|data-\d+-of-\d+)$")


def define_flags() -> None:
    flags.DEFINE_string("checkpoint_path", None, "A --train_dir (its latest checkpoint), one of "
                        "its checkpoints by prefix (train_dir/ckpt-400, not its .index file), "
                        "or an exported SavedModel (its folder, or the --export_dir holding "
                        "numbered versions: the newest).")
    flags.DEFINE_string("dataset_dir", None, "A folder written by tf_convert_data.py.")
    flags.DEFINE_string("dataset_split_name", "test", "The split to evaluate (train, "
                        "validation, test, or the --output_name of an unsplit conversion; "
                        "several, comma-separated, as one).")
    flags.DEFINE_string("dataset_name", None, "Accepted for Slim's commands; the dataset is "
                        "the one --dataset_dir holds.")
    flags.DEFINE_float("moving_average_decay", None, "Accepted for Slim's commands: a run "
                       "trained with --moving_average_decay is evaluated on its average "
                       "whatever this says.")
    flags.DEFINE_string("model_name", None, "Optional: checked against the trained network "
                        f"({', '.join(choices.NETWORK_NAMES)}, their Slim or Keras names, or "
                        "resnetN_vM for a ResNet).")
    flags.DEFINE_string("eval_dir", None, "Where the report goes (default: next to the model, "
                        "as above).")
    flags.DEFINE_integer("batch_size", 100, "Images per inference batch.", lower_bound=1)
    flags.mark_flags_as_required(["checkpoint_path", "dataset_dir"])


def model_to_evaluate(checkpoint_path: str) -> tuple[str, dict]:
    """--checkpoint_path checked as networks/slim/slim_eval.py evaluate reads it, from its
    files alone (no TensorFlow).

    Returns:
      (the path to give evaluate, which takes a prefix's folder for its train_dir: so a bare
      ckpt-N, named from inside that folder, becomes ./ckpt-N; the model's config.json).

    Raises:
      FileNotFoundError, ValueError: one line naming the flag and what is wrong.
    """
    flag = f"--checkpoint_path={checkpoint_path}"
    if os.path.exists(checkpoint_path + ".index"):  # a ckpt-N prefix
        train_dir = os.path.dirname(checkpoint_path) or os.curdir
        if not os.path.isfile(os.path.join(train_dir, CONFIG_FILE)):
            raise FileNotFoundError(f"{flag}: {train_dir} holds no {CONFIG_FILE}: a checkpoint "
                                    "is evaluated in the train_dir that wrote it")
        return os.path.join(train_dir, os.path.basename(checkpoint_path)), read_config(train_dir)
    prefix = _CHECKPOINT_FILE.sub("", checkpoint_path)
    if prefix != checkpoint_path and os.path.exists(prefix + ".index"):
        raise ValueError(f"{flag}: one file of checkpoint {prefix}; give its prefix: "
                         f"--checkpoint_path={prefix}")
    saved_model = model_paths.resolve_saved_model(checkpoint_path)
    if saved_model is not None:
        return checkpoint_path, model_paths.saved_model_config(saved_model, checkpoint_path,
                                                               None, 1)
    if os.path.isfile(os.path.join(checkpoint_path, CONFIG_FILE)):
        config = read_config(checkpoint_path)
        if not has_checkpoint(checkpoint_path):
            raise FileNotFoundError(f"{flag}: a train_dir without a checkpoint (no "
                                    f"{os.path.join(checkpoint_path, 'checkpoint')})")
        return checkpoint_path, config
    train_dir = os.path.dirname(checkpoint_path) or os.curdir
    kept = sorted((name[:-len(".index")] for name in _listing(train_dir)
                   if name.endswith(".index")), key=lambda name: (len(name), name))
    if kept and os.path.isfile(os.path.join(train_dir, CONFIG_FILE)):
        raise FileNotFoundError(f"{flag}: no such checkpoint ({train_dir} keeps "
                                f"{', '.join(kept)})")
    choices.check_checkpoint_path(checkpoint_path)  # names nothing at all
    raise FileNotFoundError(f"{flag}: neither a train_dir ({CONFIG_FILE}), a checkpoint "
                            "prefix (ckpt-N, beside its .index file) nor a SavedModel "
                            "(saved_model.pb)")


def _listing(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:  # not a folder, or not readable: no checkpoints to offer
        return []


def main(argv) -> None:
    del argv  # cli.flags_parser refused any
    try:  # what needs no TensorFlow is checked before its import (seconds), the split first
        split = converted.split_info(FLAGS.dataset_dir, FLAGS.dataset_split_name)
        cli.check_output_folder("--eval_dir", FLAGS.eval_dir, "the report")
        checkpoint_path, config = model_to_evaluate(FLAGS.checkpoint_path)
        choices.check_model_name(FLAGS.model_name, FLAGS.checkpoint_path, config)
        if isinstance(config.get("class_names"), list):
            model_paths.check_data_classes(split.data_dir, split.class_names,
                                           config["class_names"])
    except (OSError, ValueError) as error:
        cli.exit_with_error(PROGRAM, error)
    from networks.slim import slim_eval

    try:
        metrics, output_dir = slim_eval.evaluate(
            checkpoint_path, FLAGS.dataset_dir, FLAGS.dataset_split_name,
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
