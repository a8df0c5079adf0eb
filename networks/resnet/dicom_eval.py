"""Evaluate a trained model on a split of a converted dataset and write a report.

    python networks/resnet/dicom_eval.py --model=runs/r18 --data_dir=data/mednist --split=test

--model is a training model_dir (latest checkpoint, or --checkpoint=.../ckpt-400) or an
exported SavedModel (its folder, or the export_dir holding numbered versions). The report
goes to --output_dir, by default next to the model (<model_dir>/eval_<split>/, or
<export_dir>/eval-<version>-<split>/; with --tta=N the folder name ends in -ttaN).

    --tta=5                    average each model's probabilities over 5 fixed test-time views
                               (identity, +-5 degree rotations, 1.1/0.9 zoom, ...; never a mirror)
    --model=runs/a,runs/b/export --output_dir=eval_ab
                               an ensemble: the members' probabilities are averaged; they must
                               have the same class names in the same order

metrics.json records the members ("members") and the views ("tta_views").

    metrics.json          accuracy, top-k, per-class precision/recall/F1/support/ROC AUC,
                          macro and weighted averages, confusion matrix, example count
    confusion_matrix.png  counts with row-normalised shading
    misclassified.csv     file, true, predicted, probability
    events.out.tfevents*  the same scalars and the confusion matrix image for TensorBoard
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def default_output_dir(model: str, predictor_source: str, split: str, tta_views: int = 1) -> str:
    """<model_dir>/eval_<split> for a model_dir; a sibling of the version for a SavedModel.

    Test-time views add "-tta<N>", so they never overwrite the plain report.
    """
    suffix = f"-tta{tta_views}" if tta_views > 1 else ""
    if os.path.isfile(os.path.join(model, "config.json")):
        return os.path.join(model, f"eval_{split}{suffix}")
    version_dir = predictor_source.rstrip("/")
    return os.path.join(os.path.dirname(version_dir),
                        f"eval-{os.path.basename(version_dir)}-{split}{suffix}")


def evaluate_split(predictor, data_dir: str, split: str, *, batch_size: int):
    """Runs ``predictor`` over every record of a split.

    Returns:
      (labels int [N], probabilities float [N, C], filenames list[str]).

    Raises:
      ValueError: the split's classes differ from the model's.
    """
    import numpy as np
    import tensorflow as tf

    from dataset import features, reader

    info = reader.split_info(data_dir, split)
    if list(info.class_names) != predictor.class_names:
        raise ValueError(f"{data_dir}: classes {list(info.class_names)} differ from the model's "
                         f"{predictor.class_names}")
    spec = {key: features.feature_spec()[key]
            for key in (features.KEY_ENCODED, features.KEY_LABEL, features.KEY_FILENAME)}
    # Sequential read keeps the report's row order stable across runs.
    records = (tf.data.TFRecordDataset(list(info.files)).batch(batch_size)
               .map(lambda batch: tf.io.parse_example(batch, spec)).prefetch(2))
    labels, probabilities, filenames = [], [], []
    from tqdm import tqdm

    # disable=None: no bar when stderr is a log file rather than a terminal (a bar there is
    # hundreds of carriage-return updates on one line).
    with tqdm(total=info.num_examples, unit="img", desc=f"evaluating {split}",
              disable=None) as progress:
        for batch in records:
            probabilities.append(predictor(batch[features.KEY_ENCODED]))
            labels.append(batch[features.KEY_LABEL].numpy())
            filenames.extend(name.decode() for name in batch[features.KEY_FILENAME].numpy())
            progress.update(len(labels[-1]))
    return np.concatenate(labels), np.concatenate(probabilities), filenames


def write_tensorboard(output_dir: str, metrics: dict, step: int) -> None:
    import tensorflow as tf

    from official.utils.report import summary_scalars

    png = open(os.path.join(output_dir, "confusion_matrix.png"), "rb").read()
    writer = tf.summary.create_file_writer(output_dir)
    with writer.as_default():
        for name, value in summary_scalars(metrics).items():
            tf.summary.scalar(name, value, step=step)
        tf.summary.image("confusion_matrix", tf.io.decode_png(png)[tf.newaxis], step=step)
    writer.close()


MODEL_HELP = ("Training model_dir or SavedModel folder (or export_dir). Several, comma-separated, "
              "form an ensemble: each member preprocesses the images itself (image sizes may "
              "differ) and their probabilities are averaged; all must have the same class names "
              "in the same order.")
TTA_HELP = ("Test-time augmentation: average the probabilities over this many fixed views of "
            "each image (dataset/test_time.py: identity, +-5 degree rotations, 1.1/0.9 zoom, "
            "+-1/16 shifts; never a mirror, so left/right classes are safe). 1 = off, up to 7. "
            "Not with a SavedModel exported with views built in (it averages its own).")


def define_flags() -> None:
    """Flags exist only when run as a program, so tests can import this module."""
    flags.DEFINE_list("model", None, MODEL_HELP)
    flags.DEFINE_string("checkpoint", None, "Checkpoint prefix inside a model_dir (default: "
                        "latest); only with a single --model.")
    flags.DEFINE_integer("tta", 1, TTA_HELP, lower_bound=1)
    flags.DEFINE_string("data_dir", None, "Folder written by tf_convert_data.py.")
    flags.DEFINE_string("split", "test", "Split to evaluate (train, validation, test, or the "
                        "--output_name of an unsplit conversion).")
    flags.DEFINE_string("output_dir", None, "Where the report goes (default: next to the model; "
                        "required for an ensemble).")
    flags.DEFINE_integer("batch_size", 64, "Images per inference batch.")
    flags.mark_flags_as_required(["model", "data_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if len(FLAGS.model) > 1 and not FLAGS.output_dir:
        raise app.UsageError("an ensemble (several --model) needs --output_dir: its report "
                             "belongs to no single model")
    from networks.resnet.inference import Ensemble, load_predictor
    from official.utils.report import write_report

    try:
        predictor = load_predictor(FLAGS.model, FLAGS.checkpoint, FLAGS.tta)
        labels, probabilities, filenames = evaluate_split(
            predictor, FLAGS.data_dir, FLAGS.split, batch_size=FLAGS.batch_size)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    members = predictor.members if isinstance(predictor, Ensemble) else [predictor]
    output_dir = FLAGS.output_dir or default_output_dir(FLAGS.model[0], predictor.source,
                                                        FLAGS.split, predictor.tta_views)
    step = (int(predictor.source.rsplit("-", 1)[-1])
            if len(members) == 1 and "ckpt-" in predictor.source else 0)
    title = (os.path.basename(predictor.source) if len(members) == 1
             else f"ensemble of {len(members)}")
    metrics = write_report(
        output_dir, labels=labels, probabilities=probabilities,
        class_names=predictor.class_names, filenames=filenames,
        title=f"{FLAGS.split} split, {title}" + (f", {FLAGS.tta} views" if FLAGS.tta > 1 else ""),
        extra={"split": FLAGS.split, "data_dir": os.path.abspath(FLAGS.data_dir),
               "model": predictor.source,
               "members": [{"model": member.source, "tta_views": member.tta_views}
                           for member in members],
               "tta_views": FLAGS.tta})
    write_tensorboard(output_dir, metrics, step)
    print(f"{FLAGS.split}: accuracy {metrics['accuracy']:.4f} on {metrics['num_examples']} "
          f"images; report in {output_dir}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
