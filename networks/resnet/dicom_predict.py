"""Predict the body part of new DICOM, JPEG and PNG files with a trained model.

    python networks/resnet/dicom_predict.py --model=runs/r18/export \\
        --output_csv=predictions.csv /incoming/study1 /incoming/scan.dcm

Inputs are files and/or folders (searched recursively for .jpg/.jpeg/.png/.dcm/.dicom and
extension-less DICOM files). --model is a training model_dir or a SavedModel; the
preprocessing is rebuilt from the model's saved config, identical to evaluation. A DICOM
file is rendered as the model's training data was (the conversion's --dicom_voi,
--dicom_window_center/width and --dicom_bits, recorded in the model's config; models trained
before that was recorded: as their config's data_dir records, while it is there, else the
defaults, with a warning), from its middle frame.
The CSV has one row per input file:

    file, status (ok | uncertain | error), predicted_class, probability,
    top_k ("Chest:0.9812;Abdomen:0.0150;..."), body_part_tag (the DICOM
    BodyPartExamined normalised to a class name, when it maps), tag_agrees
    (yes | no | empty when there is nothing to compare), error

With --min_confidence=P, predictions whose probability is below P get status and
predicted_class "uncertain" (the model's guess stays in top_k). A file that cannot
be read gets an error row; the run goes on, and one line on stderr counts the failures.
A file named twice (also inside a named folder, or through a link) is predicted once.
Exit status: 0 when at least one file was classified; 1 when every file failed (the CSV
is still written: its rows say why), when a named file or folder does not exist or a
folder cannot be listed (no permission), or when --output_csv (or its .json) would
overwrite an input, is in a folder that does not exist (it is not created), cannot be
written or is being written by another run (then nothing is written); 2 for a bad flag;
130 (143) after Ctrl-C (SIGTERM).

The CSV appears whole or not at all. Until the run ends its rows grow, a batch at a time, in
predictions.partial.csv (the CSV's name with .partial.csv); a Ctrl-C, SIGTERM or failure leaves
that file (complete rows only) beside an earlier predictions.csv left as it was, and its error
line says how many files it holds. --resume then reuses those rows (when the same models,
known by their weights and not only their paths, and the same --tta, --top_k,
--min_confidence and --dicom_force wrote them) and predicts only the other files, and again
those that could not be read; a run that completes removes the partial file. A second run
writing the same --output_csv while one is running is refused (one error line).

--tta=N averages each model's probabilities over N fixed test-time views (never a mirror);
--model=a,b,... is an ensemble whose probabilities are averaged (same class names, same
order). Next to the CSV, predictions.json (the CSV's name with .json) records the models,
the views and the counts.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))))

from absl import flags  # noqa: E402

from dataset.dicom_options import DicomOptions  # noqa: E402
from networks.resnet.dicom_eval import CHECKPOINT_HELP, MODEL_HELP, TTA_HELP  # noqa: E402
from official.core import model_paths, prediction_csv  # noqa: E402
from official.core.config import MAX_TEST_TIME_VIEWS  # noqa: E402
from official.utils import cli  # noqa: E402
from official.utils.decoder_noise import DecoderNoise  # noqa: E402

FLAGS = flags.FLAGS
PROGRAM = "dicom_predict.py"


def define_flags() -> None:
    """Flags exist only when run as a program, so tests can import this module."""
    flags.DEFINE_list("model", None, MODEL_HELP)
    flags.DEFINE_string("checkpoint", None, CHECKPOINT_HELP)
    flags.DEFINE_integer("tta", 1, TTA_HELP, lower_bound=1,
                         upper_bound=MAX_TEST_TIME_VIEWS)
    flags.DEFINE_list("input", [], "Files or folders to classify, comma-separated "
                      "(positional arguments work too, and are the way to name a file whose "
                      "name holds a comma).")
    flags.DEFINE_string("output_csv", "predictions.csv", "Where the CSV goes (its .json next "
                        "to it); the folder must exist.")
    flags.DEFINE_integer("batch_size", 32, "Images per inference batch.", lower_bound=1)
    flags.DEFINE_integer("top_k", 3, "How many classes to list per file (more than the model "
                         "has: all of them).", lower_bound=1)
    flags.DEFINE_float("min_confidence", None, "Below this probability a prediction is marked "
                       "'uncertain' (e.g. 0.8). Default: never.")
    # Checked while parsing, so a bad value is a one-line flag error (exit 2) like the others.
    flags.register_validator("min_confidence", lambda value: value is None or 0 < value <= 1,
                             message="must be in (0, 1]")
    flags.DEFINE_bool("resume", False, "Reuse the rows an interrupted or failed run left in the "
                      "partial file (--output_csv's name with .partial.csv) and predict only "
                      "the other files (and again those that could not be read); refused "
                      "when other models or settings wrote them. "
                      "Without it, a run starts afresh and replaces that file.")
    flags.DEFINE_bool("dicom_force", False, "Read DICOM files that lack the DICM preamble/meta "
                      "(in folders, every file without a suffix is then tried as DICOM).")
    flags.mark_flag_as_required("model")


# What predict_files says it kept, for the Ctrl-C line: run_program's `interrupted` is called
# outside main and sees nothing else.
_KEPT: list = []


def kept_note(kept) -> str:
    """'the rows of 3 of 10 files are kept in p.partial.csv ...' (prediction_csv.Kept)."""
    return (f"the rows of {kept.rows} of {cli.count(kept.total, 'file')} are kept in "
            f"{kept.path} (--resume predicts only the others)")


def left_by_interrupt(output_csv: str, kept=None) -> str:
    """What an interrupted run left: predict_files writes the CSV whole or not at all, so an
    earlier run's CSV under that name is still there, and must not pass for this run's; the
    rows predicted so far are in the partial file (``kept``: default, what main was told)."""
    kept = kept or (_KEPT[-1] if _KEPT else None)
    earlier = (f"{output_csv} is an earlier run's, left as it was"
               if os.path.exists(output_csv) else "")
    if kept is not None and kept.rows:
        return kept_note(kept) + (f"; {earlier}" if earlier else "")
    if earlier:
        return f"no predictions were written; {earlier}"
    return f"no predictions were written to {output_csv}"


def main(argv):
    inputs = list(FLAGS.input) + list(argv[1:])
    if not inputs:
        cli.exit_with_error(PROGRAM, "no files or folders to classify: give them as arguments "
                            "or --input", status=2)
    from official.core import prediction  # pydicom (a second), but no TensorFlow

    output_csv = FLAGS.output_csv
    try:  # what needs no TensorFlow is checked before its import (seconds)
        passed_over = []
        files = prediction.collect_files(inputs, dicom_force=FLAGS.dicom_force,
                                         passed_over=passed_over)
        prediction.check_output_paths(output_csv, files)
        if files:
            model_paths.check_models(FLAGS.model, FLAGS.checkpoint, FLAGS.tta)
    except (OSError, ValueError) as error:
        cli.exit_with_error(PROGRAM, error)
    if not files:
        cli.exit_with_error(PROGRAM, f"no DICOM, JPEG or PNG files under {', '.join(inputs)}")
    from official.core.inference import load_predictor

    try:
        predictor = load_predictor(FLAGS.model, FLAGS.checkpoint, FLAGS.tta)
    except (OSError, ValueError) as error:
        cli.exit_with_error(PROGRAM, error)
    kept = prediction_csv.Kept()
    _KEPT.append(kept)
    try:  # e.g. a full disk or no permission: predict_files leaves no .tmp file behind
        with DecoderNoise() as noise:  # an image TensorFlow refuses: its row says why
            counts = prediction.predict_files(
                predictor, files, output_csv, batch_size=FLAGS.batch_size, top_k=FLAGS.top_k,
                min_confidence=FLAGS.min_confidence,
                dicom_options=DicomOptions.rendering(predictor.dicom_rendering,
                                                     force=FLAGS.dicom_force),
                tta_views=FLAGS.tta, resume=FLAGS.resume, kept=kept,  # and the run's .json
                noise=noise)
    except (OSError, ValueError) as error:
        message = str(error)
        if isinstance(error, OSError) and error.filename and error.strerror:  # not a bare errno
            message = (f"--output_csv={output_csv}: cannot write {error.filename}: "
                       f"{error.strerror}")
        cli.exit_with_error(PROGRAM, message + (f"; {kept_note(kept)}" if kept.rows else ""))
    except Exception as error:  # a bug keeps its traceback, which says where the rows are
        if kept.rows:
            error.add_note(kept_note(kept))
        raise
    print(f"{cli.count(len(files), 'file')}: {counts['ok']} ok, {counts['uncertain']} "
          f"uncertain, {cli.count(counts['error'], 'error')}; predictions in {output_csv}",
          flush=True)
    if passed_over:
        print(f"passed over {cli.count(len(passed_over), 'other file')} in the folders (not "
              f"DICOM, JPEG or PNG; e.g. {min(passed_over)})", flush=True)
    failed = counts["error"]
    if failed == len(files):  # nothing was classified: a script must not carry on
        cli.exit_with_error(PROGRAM, f"{failed} of {cli.count(failed, 'file')} failed; the "
                            f"reasons are in {output_csv}")
    if failed:
        print(f"{PROGRAM}: warning: {failed} of {cli.count(len(files), 'file')} failed; their "
              f"rows in the CSV {output_csv} say why", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    define_flags()
    cli.run_program(PROGRAM, main, cli.flags_parser(PROGRAM, arguments=("FILE_OR_FOLDER",)),
                    interrupted=lambda: left_by_interrupt(FLAGS.output_csv),
                    skip_teardown=True)
