"""Converts a folder of DICOM/JPEG/PNG images into sharded, verified TFRecords.

Example (the original command):
  python tf_convert_data.py --dataset_name=dicom --dataset_dir=DIR \\
      --output_name=dicom_train --output_dir=OUT --need_split=tvt_split

Inputs: DIR/images/<stem>.<ext> + DIR/labels/<stem>.txt, or DIR/<Class>/<file>
(MedNIST), or DIR/{train,val,test}/<Class>/<file> with --need_split=predefined.
Output in OUT: <split>-NNNNN-of-MMMMM.tfrecord shards, labels.txt and
manifest.json (written last). Exit status 1 with one line per problem when the
input cannot be converted; nothing is written then (an earlier output stays as it
was). Exit status 2 for a flag absl rejects, a stray argument or --dicom_voi=given
without a window; other settings that do not fit together (e.g.
--beam_pipeline_options without --runner=beam) exit 1.

On Apache Beam (pip install -r requirements-beam.txt), e.g. a Flink cluster:
  python tf_convert_data.py --dataset_dir=DIR --output_dir=OUT --need_split=tvt_split \\
      --runner=beam --beam_pipeline_options="runner=FlinkRunner,flink_master=HOST:8081"
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags

from dataset.convert import ConvertConfig, convert_dataset
from dataset.conversion_plan import ConversionError
from dataset.manifest import format_summary
from dataset.shards import MANIFEST
from dataset.workers import WorkerLost
from official.utils import cli

FLAGS = flags.FLAGS
PROGRAM = "tf_convert_data.py"
flags.DEFINE_string("dataset_name", "dicom", "Name of the dataset, recorded in the manifest.")
flags.DEFINE_string("dataset_dir", None, "Folder with the input images (see --layout).")
flags.DEFINE_string("output_name", "data",
                    "File-name prefix of the shards when --need_split=None "
                    "(<output_name>-NNNNN-of-MMMMM.tfrecord).")
flags.DEFINE_string("output_dir", None, "Folder for shards, labels.txt and manifest.json; "
                    "created if missing; a previous conversion there is replaced.")
flags.DEFINE_enum("need_split", "None", ["None", "tt_split", "tvt_split", "predefined"],
                  "None: one output named --output_name; tt_split: train/test; tvt_split: "
                  "train/validation/test; predefined: keep DIR/{train,val|validation,test}/.")
flags.DEFINE_float("validation_size", 0.1, "Validation size: a count if >= 1, else a fraction. "
                   "Counts become fractions of the total, so only fractions keep existing "
                   "files in their split when files are added. Ignored by tt_split.")
flags.DEFINE_float("test_size", 0.1, "Test size: a count if >= 1, else a fraction (a count "
                   "becomes a fraction of the total, as --validation_size's).")
flags.DEFINE_integer("seed", 0, "Seed of the split assignment and of the record order.")
flags.DEFINE_enum("layout", "auto", ["auto", "images_labels", "class_folders", "predefined"],
                  "Input layout. auto: images_labels if DIR/images exists, predefined if all "
                  "sub-folders are split names, else class_folders (DIR/<Class>/<file>).")
flags.DEFINE_string("groups_csv", None, "CSV of 'file,group' rows (file: path relative to "
                    "DIR, or file stem; a row that matches no file is an error). Files of "
                    "one group share a split; a row decides its file's group (a DICOM file "
                    "without one goes with its patient's files that have one), and a patient "
                    "left in several splits is warned of. Default group: the DICOM patient "
                    "(without one: its study, else its series), else the file stem.")
flags.DEFINE_float("shard_size_mb", 128, "Target shard size in MiB.")
flags.DEFINE_integer("num_workers", 0, "Worker processes for decoding (0: all CPU cores; "
                     "with --runner=beam, also the processes of Beam's local runner).")
flags.DEFINE_enum("on_error", "fail", ["fail", "skip"],
                  "fail: any bad input stops the conversion before anything is written; "
                  "skip: convert the rest and list skipped files in the manifest.")
flags.DEFINE_enum("label_source", "labels", ["labels", "tag"],
                  "labels: label files / class folders; tag: DICOM BodyPartExamined mapped "
                  "to a class name (non-DICOM files keep their label; DICOM files need no "
                  "label file or class folder, e.g. a flat DIR/<file>.dcm, and where no "
                  "label names the classes they are the body parts' names: Chest, Head, "
                  "CSpine, WholeBody, ...). A label x tag agreement table is reported "
                  "whenever both exist.")
flags.DEFINE_bool("dicom_force", False, "Read DICOM files without the DICM preamble/file meta "
                  "(every file without a suffix is then tried as DICOM).")
flags.DEFINE_enum("dicom_voi", "window", ["window", "minmax", "given", "lut"],
                  "DICOM grey-level window: the file's window, min-max of the pixels, "
                  "--dicom_window_center/width, or the file's VOI LUT.")
flags.DEFINE_float("dicom_window_center", None, "Window center for --dicom_voi=given.")
flags.DEFINE_float("dicom_window_width", None, "Window width for --dicom_voi=given.")
# Checked while parsing, so the missing window is a one-line flag error (exit 2) naming the
# flags, not DicomOptions' complaint about its own fields.
flags.register_multi_flags_validator(
    ["dicom_voi", "dicom_window_center", "dicom_window_width"],
    lambda f: f["dicom_voi"] != "given" or (f["dicom_window_center"] is not None
                                            and (f["dicom_window_width"] or 0) > 0),
    "--dicom_voi=given needs --dicom_window_center and a --dicom_window_width > 0")
flags.DEFINE_enum("dicom_bits", "8", ["8", "16"],
                  "Bits per sample of rendered DICOM PNGs. The trainer, evaluation, prediction "
                  "and the export decode every image to 8 bits, so 16 only keeps a finer copy "
                  "in the records for other tools (about 2.7x the size); the model sees the "
                  "same pixels within one grey level.")
flags.DEFINE_enum("dicom_frames", "middle", ["middle", "all"],
                  "Multi-frame DICOM: the middle frame, or one example per frame "
                  "(image/filename gets a '#frame=N' suffix).")
flags.DEFINE_string("hash_key_env", "BODY_PART_HASH_KEY",
                    "Environment variable holding the key of the patient hash used to group "
                    "DICOM files by patient. Unset: a fixed built-in key (the hash never "
                    "leaves the process, so this is safe). Changing the key reshuffles splits.")
flags.DEFINE_enum("runner", "local", ["local", "beam"],
                  "local: this machine's cores; beam: an Apache Beam pipeline (same output "
                  "records, splits and manifest counts; needs apache-beam).")
flags.DEFINE_string("beam_pipeline_options", "",
                    "With --runner=beam: comma-separated Beam options, e.g. "
                    "'runner=FlinkRunner,flink_master=host:8081'. Default: Beam's local "
                    "runner with --num_workers processes.")
flags.mark_flags_as_required(["dataset_dir", "output_dir"])


def _left_behind(output_dir: str) -> str:
    """What a run that did not finish left in ``output_dir``. The commit removes an earlier
    conversion's manifest.json before anything else of it, so a manifest there now is an
    earlier conversion left whole (the run stopped before its commit)."""
    if os.path.exists(os.path.join(output_dir, MANIFEST)):
        return "its earlier conversion is as it was"
    return "a folder without its manifest.json is never read as a dataset"


def main(argv) -> int:
    del argv  # cli.flags_parser refused any
    from dataset.dicom_options import DicomOptions

    sizes = [f"--{name}" for name in ("validation_size", "test_size") if FLAGS[name].present]
    if sizes and FLAGS.need_split in ("None", "predefined"):
        # Most likely a forgotten --need_split: said, not silently ignored.
        print(f"warning: {' and '.join(sizes)} ignored: --need_split={FLAGS.need_split} cuts "
              "no split (tt_split or tvt_split does)", file=sys.stderr)
    try:
        config = ConvertConfig(
            dataset_name=FLAGS.dataset_name, dataset_dir=FLAGS.dataset_dir,
            output_dir=FLAGS.output_dir, output_name=FLAGS.output_name,
            need_split=FLAGS.need_split, validation_size=FLAGS.validation_size,
            test_size=FLAGS.test_size, seed=FLAGS.seed, layout=FLAGS.layout,
            groups_csv=FLAGS.groups_csv, shard_size_mb=FLAGS.shard_size_mb,
            num_workers=FLAGS.num_workers, on_error=FLAGS.on_error,
            label_source=FLAGS.label_source, hash_key_env=FLAGS.hash_key_env,
            dicom=DicomOptions(force=FLAGS.dicom_force, voi=FLAGS.dicom_voi,
                               window_center=FLAGS.dicom_window_center,
                               window_width=FLAGS.dicom_window_width,
                               bits=int(FLAGS.dicom_bits), frames=FLAGS.dicom_frames))
        if FLAGS.runner == "beam":
            # Beam logs every worker's start and stop at INFO, which would bury the summary.
            logging.getLogger("apache_beam").setLevel(logging.WARNING)
            from dataset.beam_convert import convert_dataset_beam, pipeline_args

            manifest = convert_dataset_beam(
                config, pipeline_args(FLAGS.beam_pipeline_options, FLAGS.num_workers))
        elif FLAGS.beam_pipeline_options:
            raise ValueError("--beam_pipeline_options needs --runner=beam")
        else:
            manifest = convert_dataset(config)
    except ConversionError as error:
        # The hint only where a rerun with --on_error=skip would convert the rest: not after
        # one, nor for a dataset-wide problem, nor when skipping would leave too few files.
        outcome = "nothing was written" + (" (--on_error=skip converts the rest)"
                                           if error.skippable else "")
        if error.would_skip:
            # --on_error=skip: what it would leave out, apart from what stopped it.
            print("\n".join(f"would skip: {line}" for line in error.would_skip),
                  file=sys.stderr)
            outcome += (" (--on_error=skip cannot get past the error(s); it would leave out "
                        f"the {len(error.would_skip)} file(s) marked 'would skip')")
        if len(error.problems) == 1:
            print(f"error: {error.problems[0]}; {outcome}", file=sys.stderr)
        else:
            print("\n".join(f"error: {line}" for line in error.problems), file=sys.stderr)
            print(f"error: {len(error.problems)} problem(s); {outcome}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except WorkerLost as error:
        print(f"error: {error}; the conversion into {FLAGS.output_dir} did not finish "
              f"({_left_behind(FLAGS.output_dir)})", file=sys.stderr)
        return 1
    except OSError as error:  # a full disk or a read-only folder while writing the records,
        # or an input folder that cannot be read (its OSError names it); the staging folder
        # is gone by now. Other errnos are bugs: their traceback is kept.
        if not cli.expected(error):
            raise
        where = error.filename or FLAGS.output_dir
        print(f"error: {where}: {error.strerror or error}; the conversion into "
              f"{FLAGS.output_dir} did not finish ({_left_behind(FLAGS.output_dir)})",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (cli.stop_on_sigterm)
        # The staging folder is gone by now; an interrupted commit leaves no manifest.json,
        # which every reader refuses, so there is never a complete-looking partial output.
        what, status = cli.interruption(stop)
        print(f"error: {what}; the conversion into {FLAGS.output_dir} did not finish "
              f"(rerun it; {_left_behind(FLAGS.output_dir)})", file=sys.stderr)
        return status
    print(format_summary(manifest))
    total = sum(s["num_examples"] for s in manifest["splits"].values())
    print(f"wrote {cli.count(total, 'example')} to {os.path.abspath(FLAGS.output_dir)}")
    return 0


if __name__ == "__main__":
    cli.stop_on_sigterm()  # a scheduler's stop cleans up as Ctrl-C does
    app.run(main, flags_parser=cli.flags_parser(PROGRAM))
