"""Evaluate a train_dir (or a checkpoint, or an exported SavedModel) on a split, Slim's way.

    python networks/slim/eval_image_classifier.py --alsologtostderr \\
    --model_name=inception_v4 \\
    --checkpoint_path=/data/log_dir/inception_v4 \\
    --dataset_dir=/data/sample/training --dataset_split_name=test

The model is rebuilt from the train_dir's config.json (--model_name is only checked against it)
and evaluated through the same serving path as networks/resnet/dicom_eval.py, which writes the
report (metrics.json, confusion_matrix.png, misclassified.csv, TensorBoard events) to
--eval_dir (default: <train_dir>/eval_<split>).
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))))

from absl import app, flags  # noqa: E402

from official.utils import cli  # noqa: E402

FLAGS = flags.FLAGS
PROGRAM = "eval_image_classifier.py"


def define_flags() -> None:
    flags.DEFINE_string("checkpoint_path", None, "A --train_dir (latest checkpoint), one of its "
                        "ckpt-N prefixes, or an exported SavedModel.")
    flags.DEFINE_string("dataset_dir", None, "A folder written by tf_convert_data.py.")
    flags.DEFINE_string("dataset_split_name", "test", "The split to evaluate.")
    flags.DEFINE_string("model_name", None, "Optional: checked against the trained network.")
    flags.DEFINE_string("eval_dir", None, "Where the report goes (default: next to the model).")
    flags.DEFINE_integer("batch_size", 100, "Images per inference batch.", lower_bound=1)
    flags.mark_flags_as_required(["checkpoint_path", "dataset_dir"])


def evaluate(checkpoint_path: str, dataset_dir: str, split: str, *, batch_size: int,
             model_name: str | None = None, eval_dir: str | None = None) -> tuple[dict, str]:
    """Evaluate and write the report; returns (metrics, report folder).

    Raises:
      ValueError: --model_name differs from the trained network, or classes differ.
      FileNotFoundError: no model at checkpoint_path.
    """
    import tensorflow as tf

    from networks.resnet import dicom_eval
    from networks.resnet.inference import Predictor
    from networks.slim import nets
    from official.utils.report import write_report

    model_path, checkpoint = checkpoint_path, None
    if tf.io.gfile.exists(checkpoint_path + ".index"):  # a ckpt-N prefix
        model_path, checkpoint = os.path.dirname(checkpoint_path), checkpoint_path
    predictor = Predictor(model_path, checkpoint)
    trained = predictor.config.get("architecture", "resnet")
    if model_name and trained != "resnet" and nets.resolve_name(model_name) != trained:
        raise ValueError(f"--model_name={model_name}: {checkpoint_path} holds a {trained}")
    labels, probabilities, filenames = dicom_eval.evaluate_split(
        predictor, dataset_dir, split, batch_size=batch_size)
    output_dir = eval_dir or dicom_eval.default_output_dir(model_path, predictor.source, split)
    step = int(predictor.source.rsplit("-", 1)[-1]) if "ckpt-" in predictor.source else 0
    metrics = write_report(
        output_dir, labels=labels, probabilities=probabilities,
        class_names=predictor.class_names, filenames=filenames,
        title=f"{trained}, {split} split, {os.path.basename(predictor.source)}",
        extra={"split": split, "data_dir": os.path.abspath(dataset_dir),
               "model": predictor.source, "architecture": trained})
    dicom_eval.write_tensorboard(output_dir, metrics, step)
    return metrics, output_dir


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        metrics, output_dir = evaluate(
            FLAGS.checkpoint_path, FLAGS.dataset_dir, FLAGS.dataset_split_name,
            batch_size=FLAGS.batch_size, model_name=FLAGS.model_name, eval_dir=FLAGS.eval_dir)
    except (OSError, ValueError) as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"{FLAGS.dataset_split_name}: accuracy {metrics['accuracy']:.4f} on "
          f"{metrics['num_examples']} images; report in {output_dir}", flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.flags_parser(PROGRAM))
