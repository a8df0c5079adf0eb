"""Evaluate a trained model on a split of a converted dataset and write a report.

    python networks/resnet/dicom_eval.py --model=runs/r18 --data_dir=data/mednist --split=test

--model is a training model_dir (latest checkpoint, or --checkpoint=ckpt-400) or an
exported SavedModel (its folder, or the export_dir holding numbered versions). The report
goes to --output_dir, by default next to the model (<model_dir>/eval_<split>/, or
<export_dir>/eval-<version>-<split>/; data other than the model's training data adds the name
of its folder, -<name>, a --checkpoint -ckpt-N, and --tta=N -ttaN).

    --tta=5                    average each model's probabilities over 5 fixed test-time views
                               (identity, +-5 degree rotations, 1.1/0.9 zoom, ...; never a mirror)
    --model=runs/a,runs/b/export --output_dir=eval_ab
                               an ensemble: the members' probabilities are averaged; they must
                               have the same class names in the same order

metrics.json records the members ("members") and the views ("tta_views").

    metrics.json          accuracy, top-k, per-class precision/recall/F1/support/ROC AUC,
                          macro and weighted averages, confusion matrix, example count,
                          left/right swaps of classes named X-left/X-right (also printed)
    confusion_matrix.png  counts with row-normalised shading
    misclassified.csv     file, true, predicted, probability (the predicted class's),
                          true_class_probability
    events.out.tfevents*  the same scalars and the confusion matrix image for TensorBoard
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))))

from absl import flags  # noqa: E402

from dataset import converted  # noqa: E402
from official.core import model_paths  # noqa: E402
from official.core.config import MAX_TEST_TIME_VIEWS  # noqa: E402
from official.utils import cli  # noqa: E402
from official.utils.decoder_noise import DecoderNoise  # noqa: E402

FLAGS = flags.FLAGS
PROGRAM = "dicom_eval.py"


MODEL_HELP = ("Training model_dir or SavedModel folder (or export_dir). Several, comma-separated, "
              "form an ensemble: each member preprocesses the images itself (image sizes may "
              "differ) and their probabilities are averaged; all must have the same class names "
              "in the same order.")
TTA_HELP = ("Test-time augmentation: average the probabilities over this many fixed views of "
            "each image (dataset/test_time.py: identity, +-5 degree rotations, 1.1/0.9 zoom, "
            "+-1/16 shifts; never a mirror, so left/right classes are safe). 1 = off, up to 7. "
            "Not with a SavedModel exported with views built in (it averages its own).")
CHECKPOINT_HELP = ("Checkpoint to use instead of the model_dir's latest: its prefix as a path "
                   "(runs/a/ckpt-400) or its name inside the model_dir (ckpt-400); only with a "
                   "single model_dir.")


def define_flags() -> None:
    """Flags exist only when run as a program, so tests can import this module."""
    flags.DEFINE_list("model", None, MODEL_HELP)
    flags.DEFINE_string("checkpoint", None, CHECKPOINT_HELP)
    flags.DEFINE_integer("tta", 1, TTA_HELP, lower_bound=1,
                         upper_bound=MAX_TEST_TIME_VIEWS)
    flags.DEFINE_string("data_dir", None, "Folder written by tf_convert_data.py.")
    flags.DEFINE_string("split", "test", "Split to evaluate (train, validation, test, or the "
                        "--output_name of an unsplit conversion; several, comma-separated, as "
                        "one).")
    flags.DEFINE_string("output_dir", None, "Where the report goes (default: next to the model; "
                        "required for an ensemble).")
    flags.DEFINE_integer("batch_size", 64, "Images per inference batch.", lower_bound=1)
    flags.mark_flags_as_required(["model", "data_dir"])
    flags.register_multi_flags_validator(
        ["model", "output_dir"], lambda f: len(f["model"] or ()) < 2 or bool(f["output_dir"]),
        "an ensemble (several --model) needs --output_dir: its report belongs to no single "
        "model")


def main(argv):
    del argv  # cli.flags_parser refused any
    try:  # what needs no TensorFlow is checked before its import (seconds)
        split = converted.split_info(FLAGS.data_dir, FLAGS.split)  # before the model's restore
        cli.check_output_folder("--output_dir", FLAGS.output_dir, "the report")
        model_classes = model_paths.check_models(FLAGS.model, FLAGS.checkpoint, FLAGS.tta)
        if model_classes is not None:  # config.json's classes against the manifest's
            model_paths.check_data_classes(split.data_dir, split.class_names, model_classes)
    except (OSError, ValueError) as error:
        cli.exit_with_error(PROGRAM, error)
    from official.core import evaluation
    from official.core.inference import load_predictor
    from official.utils.report import write_report

    try:
        predictor = load_predictor(FLAGS.model, FLAGS.checkpoint, FLAGS.tta)
        # (An ensemble has an --output_dir: define_flags.)
        output_dir = FLAGS.output_dir or evaluation.default_report_folder(
            FLAGS.model[0], predictor, FLAGS.split, FLAGS.data_dir,
            checkpoint_named=bool(FLAGS.checkpoint))
        with DecoderNoise() as noise:  # an image TensorFlow refuses: the error names it
            labels, probabilities, filenames = evaluation.evaluate_split(
                predictor, split, batch_size=FLAGS.batch_size, noise=noise)
    except (OSError, ValueError) as error:
        cli.exit_with_error(PROGRAM, error)
    members = predictor.members
    single = len(members) == 1
    title = os.path.basename(predictor.source) if single else f"ensemble of {len(members)}"
    try:  # e.g. a full disk, or no permission for the default folder beside the model
        metrics = write_report(
            output_dir, labels=labels, probabilities=probabilities,
            class_names=predictor.class_names, filenames=filenames,
            title=f"{FLAGS.split} split, {title}"
            + (f", {FLAGS.tta} views" if FLAGS.tta > 1 else ""),
            data_classes=evaluation.data_classes(split, predictor.class_names),
            extra={"split": FLAGS.split, "data_dir": os.path.abspath(FLAGS.data_dir),
                   "source_dir": evaluation.source_dir(FLAGS.data_dir),
                   "model": predictor.source,
                   "members": model_paths.member_records(predictor),
                   "tta_views": FLAGS.tta})
        evaluation.write_tensorboard(output_dir, metrics,
                                     evaluation.report_step(predictor) if single else 0)
    except OSError as error:
        cli.exit_with_error(PROGRAM, f"{output_dir}: cannot write the report ({error})")
    print(f"{FLAGS.split}: accuracy {metrics['accuracy']:.4f} on {metrics['num_examples']} "
          f"images; report in {output_dir}")
    if absent := metrics.get("classes_not_in_data"):
        print(f"  the data holds {len(predictor.class_names) - len(absent)} of the model's "
              f"{len(predictor.class_names)} classes; macro averages are over those (not in "
              f"the data: {', '.join(absent)})")
    for pair, swaps in metrics["left_right_swaps"].items():
        print(f"  left/right swaps {pair}: {swaps['left_to_right']} left->right, "
              f"{swaps['right_to_left']} right->left")
    return 0


if __name__ == "__main__":
    define_flags()
    cli.run_program(PROGRAM, main, cli.flags_parser(PROGRAM),
                    interrupted=lambda: cli.report_left(FLAGS.output_dir),
                    skip_teardown=True)
