"""Export trained model_dirs as a SavedModel: one model, or an ensemble of several in one file.

    python networks/resnet/dicom_export.py --model_dir=runs/a --export_dir=runs/a/export
    python networks/resnet/dicom_export.py --model_dir=runs/a,runs/b --export_dir=runs/ens

Each --model_dir is a trainer's model_dir; its latest checkpoint is used (--checkpoint picks
another for a single model_dir), with the weight average when it was trained with
--ema_decay, as dicom_main.py's own --export_dir would. Several model_dirs become one
SavedModel whose signatures average the members' probabilities, so dicom_eval.py,
dicom_predict.py and TF Serving see one model (the members must share --image_size,
--channels and the class names in the same order; the network may differ). The SavedModel
goes into a new numbered folder of --export_dir, as the trainer's export does, with the same
two signatures; --tta=N averages N fixed test-time views inside it.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))))

from absl import flags  # noqa: E402

from networks.resnet.dicom_eval import CHECKPOINT_HELP  # noqa: E402
from official.core import model_paths  # noqa: E402
from official.core.config import MAX_TEST_TIME_VIEWS, read_config  # noqa: E402
from official.utils import cli  # noqa: E402

FLAGS = flags.FLAGS
PROGRAM = "dicom_export.py"


def define_flags() -> None:
    """Flags exist only when run as a program, so tests can import this module."""
    flags.DEFINE_list("model_dir", None, "Training model_dir(s); several, comma-separated, "
                      "are exported as one ensemble.")
    flags.DEFINE_string("export_dir", None, "Where the SavedModel's numbered folder goes.")
    flags.DEFINE_string("checkpoint", None, CHECKPOINT_HELP)
    flags.DEFINE_integer("tta", None, "Test-time views averaged inside the export (1: off). "
                         "Default: the trainer's --export_tta (the same for every model_dir "
                         "of an ensemble, else 1), so a re-export equals the trainer's own.",
                         lower_bound=1, upper_bound=MAX_TEST_TIME_VIEWS)
    flags.mark_flags_as_required(["model_dir", "export_dir"])
    flags.register_multi_flags_validator(
        ["checkpoint", "model_dir"],
        lambda f: not f["checkpoint"] or len(f["model_dir"] or ()) < 2,
        "--checkpoint picks one model_dir's checkpoint; it cannot be used with several")


def main(argv):
    del argv  # cli.flags_parser refused any

    def run() -> str:
        # What needs no TensorFlow is checked before its import (seconds).
        cli.check_output_folder("--export_dir", FLAGS.export_dir, "the export")
        for model_dir in FLAGS.model_dir:
            # Its numbered versions beside the checkpoints: a later evaluation of the
            # model_dir would have had to choose between them.
            if os.path.realpath(model_dir) == os.path.realpath(FLAGS.export_dir):
                raise ValueError(f"--export_dir={FLAGS.export_dir} is a --model_dir; give the "
                                 f"export a folder of its own (e.g. {model_dir}/export)")
        model_paths.check_distinct(FLAGS.model_dir)
        model_paths.check_ensemble([(model_dir, read_config(model_dir))
                                    for model_dir in FLAGS.model_dir],
                                   same=("image_size", "channels"))
        from official.core import export, restore

        members = []
        for model_dir in FLAGS.model_dir:
            model, config = restore.load_model_from_dir(model_dir, FLAGS.checkpoint)
            members.append((model, config, model_dir))
        tta = FLAGS.tta or export.trained_export_tta([config for _, config, _ in members])
        path = export.export_ensemble(members, FLAGS.export_dir, tta)
        kind = "model" if len(members) == 1 else f"ensemble of {len(members)} models"
        views = f" ({tta} test-time views averaged)" if tta > 1 else ""
        return f"exported the {kind} to {path}{views}"

    cli.print_summary_or_exit(PROGRAM, run)


if __name__ == "__main__":
    define_flags()
    cli.run_program(PROGRAM, main, cli.flags_parser(PROGRAM), interrupted=lambda: (
        f"{FLAGS.export_dir} holds no half-written export"), skip_teardown=True)
