"""Command-line flags of the ResNet trainer, with the original's long and short names.

The original (tensorflow/models official/resnet, Estimator era, as used by this project's
`dicom_main.py`) parsed these with argparse; here they are absl flags with the same names, short
names and defaults, so the original commands keep working. Differences, each on purpose:

* `--multi_gpu=False` means False. The original declared it `type=bool`, and `bool("False")` is
  True. absl booleans also accept `--multi_gpu` / `--nomulti_gpu`.
* `--hooks` takes a comma-separated list (`--hooks=LoggingTensorHook,ExamplesPerSecondHook`)
  instead of space-separated words.
* `--num_gpus` defaults to "the number of visible GPUs, capped at 1" instead of "1 if TensorFlow
  was built with CUDA": pip's TensorFlow is always built with CUDA, so the old default asked for a
  GPU on every CPU-only machine.
* `--loss_scale` unset means *dynamic* loss scaling for fp16 (the original used a fixed 128).

Only the definitions live here (and `parse_hooks`); the trainer's `main()` turns
FLAGS into a frozen config once (see networks/resnet/dicom_main.py). The choices of a flag are
defined by the module that owns the setting (official/core/config.py for precisions and
learning-rate options).
"""

from __future__ import annotations

from absl import flags

from official.core.config import (DTYPE_POLICIES, LR_SCALINGS, LR_SCHEDULES,
                                  MAX_TEST_TIME_VIEWS, MIRROR_AXES)

# networks/resnet/resnet_model.RESNET_SIZES' keys, written out: importing the model (Keras)
# before the flags are parsed would make --help slow. tests/test_registry.py checks they agree.
RESNET_SIZE_CHOICES = ("18", "34", "50", "101", "152", "200")
DTYPE_CHOICES = tuple(DTYPE_POLICIES)
HOOK_NAMES = ("LoggingTensorHook", "ProfilerHook", "ExamplesPerSecondHook", "LoggingMetricHook")


class _Definer:
    """`define.string(...)` = `flags.DEFINE_string(..., flag_values=<these FlagValues>)`."""

    def __init__(self, flag_values: flags.FlagValues):
        self.flag_values = flag_values

    def __getattr__(self, kind: str):
        definer = getattr(flags, "DEFINE_" + kind)
        return lambda *args, **kwargs: definer(*args, flag_values=self.flag_values, **kwargs)


def _define_base(define: _Definer) -> None:
    # Original defaults (official/utils/flags/_base.py): data_dir and model_dir both /tmp.
    define.string("data_dir", "/tmp", "The location of the input data: a folder written "
                        "by tf_convert_data.py (shards + manifest.json).", short_name="dd")
    define.string("model_dir", "/tmp", "The location of the model checkpoint files, "
                        "config.json and TensorBoard summaries. Rerunning with the same "
                        "--model_dir resumes from the last checkpoint. Give each run a folder "
                        "of its own: the default (the original's), /tmp itself, is refused.",
                        short_name="md")
    define.integer("train_epochs", 100, "The number of epochs used to train.",
                         lower_bound=1, short_name="te")
    define.integer("epochs_between_evals", 1, "The number of training epochs to run "
                         "between evaluations.", lower_bound=1, short_name="ebe")
    # Bounded: an accuracy above 1 could never stop the run (the original accepted it).
    define.float("stop_threshold", None, "If passed, training will stop at the earlier of "
                       "train_epochs and when the evaluation accuracy is greater than or equal "
                       "to stop_threshold.", lower_bound=0.0, upper_bound=1.0,
                       short_name="st")
    define.integer("batch_size", 32, "Global batch size for training and evaluation "
                         "(split across replicas).", lower_bound=1, short_name="bs")
    define.integer("num_gpus", None, "How many GPUs to use with the DistributionStrategies "
                         "API, on each worker of a multi-worker cluster. Default: 1 if a GPU "
                         "is visible, else 0 (CPU).", lower_bound=0, short_name="ng")
    define.list("hooks", ["LoggingTensorHook"], "Comma-separated train hooks, "
                      "case-insensitive, empty for none: LoggingTensorHook (loss, accuracy and "
                      "learning rate every --log_every_steps steps), ExamplesPerSecondHook "
                      "(examples/s, as often), ProfilerHook (a profiler trace of 5 train calls "
                      "into <model_dir>/profile), LoggingMetricHook (LoggingTensorHook's "
                      "figures to the benchmark logger: needs --benchmark_log_dir or "
                      "--gcp_project).", short_name="hk")
    define.boolean("multi_gpu", False, "Mirror the model over all visible GPUs "
                         "(same as --num_gpus=<all>).", short_name="mg")


def _define_performance(define: _Definer) -> None:
    define.integer("num_parallel_calls", 5, "The number of records that are processed in "
                         "parallel during input processing; about the number of CPU cores.",
                         lower_bound=1, short_name="npc")
    define.integer("inter_op_parallelism_threads", 0, "Number of inter_op_parallelism_"
                         "threads to use for CPU (0: TensorFlow picks).", lower_bound=0,
                         short_name="inter")
    define.integer("intra_op_parallelism_threads", 0, "Number of intra_op_parallelism_"
                         "threads to use for CPU (0: TensorFlow picks).", lower_bound=0,
                         short_name="intra")
    define.boolean("use_synthetic_data", False, "Feed random images of the right shape "
                         "instead of reading files: measures the model without the input "
                         "pipeline, learns nothing.", short_name="synth")
    define.integer("max_train_steps", None, "Stop training when the global step reaches "
                         "this value, even before --train_epochs.", lower_bound=1,
                         short_name="mts")
    define.float("train_budget_seconds", None, "Train as many steps as fit in this many "
                 "seconds on this machine (at least one epoch, at most --train_epochs): a "
                 "few steps are timed first, then the run's length (and with it the "
                 "learning-rate schedule) is fixed; a resumed run keeps it. If the steps "
                 "then run faster than timed, the run is lengthened once, halfway, and the "
                 "rest of the schedule stretched. It is also a deadline: if the machine slows "
                 "down, the run stops at the budget, short of its steps (stopped by "
                 "budget_deadline; never before one epoch). Counts "
                 "start-up and training, not validation or export. config.json's \"budget\" "
                 "records the measurement.", lower_bound=1.0)
    define.enum("dtype", "fp32", DTYPE_CHOICES, "Compute precision: fp32; fp16 (mixed "
                      "float16 with loss scaling; for GPUs: on a CPU it runs about 100x "
                      "slower than fp32); bf16 (mixed bfloat16: GPUs from Ampere, and CPUs "
                      "with AVX512_BF16 or AMX). Variables stay float32.", short_name="dt")
    define.float("loss_scale", None, "Fixed loss scale for fp16. Unset: dynamic loss "
                       "scaling (halved on overflow, where the step is skipped; doubled after "
                       "2000 good steps).", lower_bound=1.0, short_name="ls")
    define.enum("data_format", None, ("channels_first", "channels_last"), "Override the "
                      "model's data format. Default: channels_first on GPU, channels_last on "
                      "CPU.", short_name="df")
    define.boolean("jit_compile", False, "Compile the train step with XLA.")
    define.integer("steps_per_loop", 1, "Train steps per tf.function call (fewer Python "
                         "round trips; hooks and summaries see every Nth step).", lower_bound=1)
    define.boolean("cache", False, "Keep decoded training and evaluation images in memory "
                         "after the first epoch.")
    define.integer("num_cpu_replicas", 0, "Split the CPU into this many logical devices "
                         "and mirror over them when no GPU is used (for testing distribution "
                         "on CPU-only machines; no speed-up).", lower_bound=0)


def _define_benchmark(define: _Definer) -> None:
    define.string("export_dir", None, "If set, a SavedModel of the model is exported to "
                        "<export_dir>/<version>/ at the end of training.", short_name="ed")
    define.string("benchmark_log_dir", None, "Write run information and metrics as JSON "
                        "lines to this folder (benchmark_run.log gets one line per run, "
                        "a resumed run included; metric.log's lines name it by run_id).",
                  short_name="bld")
    define.string("gcp_project", None, "The GCP project where the benchmark will be "
                        "uploaded to BigQuery (needs google-cloud-bigquery).", short_name="gp")
    define.string("bigquery_data_set", "test_benchmark", "The BigQuery dataset name where "
                        "the benchmark will be uploaded.", short_name="bds")
    define.string("bigquery_run_table", "benchmark_run", "The BigQuery table name where "
                        "the benchmark run information will be uploaded.", short_name="brt")
    define.string("bigquery_metric_table", "benchmark_metric", "The BigQuery table name "
                        "where the benchmark metric information will be uploaded.",
                        short_name="bmt")


def _define_resnet(define: _Definer) -> None:
    define.enum("version", "2", ("1", "2"), "Version of ResNet: 1 (v1.5, post-activation) "
                      "or 2 (pre-activation).", short_name="v")
    define.enum("resnet_size", "50", RESNET_SIZE_CHOICES, "The size of the ResNet model "
                      "to use.", short_name="rs")
    define.integer("image_size", 224, "Side in pixels of the square image the network "
                         "sees; images are resized to it.", lower_bound=8)
    define.boolean("small_input", None, "Use the small-image stem (3x3 conv, no max "
                         "pool) instead of 7x7/2 + pool. Default: on when --image_size <= 32.")
    define.integer("channels", 1, "Image channels the model reads: 1 (grey, radiographs; "
                         "colour images are read as grey, and the trainer warns of them) "
                         "or 3 (RGB).", lower_bound=1, upper_bound=3)
    define.boolean("random_flip", False, "Randomly flip training images left-right. Off "
                         "by default: when the image's left-right axis is the patient's (the "
                         "radiological convention) a flip turns a left organ into a right one. "
                         "benchmarks/stress_eval.py --preset=orientation shows which image "
                         "axis carries left and right in your data (OrganAMNIST: up-down, so "
                         "there this flip is a front-back mirror that keeps labels true, "
                         "unless --augment_rot90, or an --augment_rotate over 90 degrees, turns "
                         "images first); "
                         "benchmarks/mirror_audit.py shows whether scans stored mirrored "
                         "already occur in it (OrganAMNIST's training split: about a fifth).")
    define.float("base_learning_rate", 0.1, "Learning rate for a global batch of 256 "
                       "(scaled linearly with the batch, see --lr_scaling).", lower_bound=0.0)
    define.enum("lr_scaling", "linear", LR_SCALINGS, "linear: lr = "
                      "base_learning_rate * global_batch / 256 (TF official); none: lr = "
                      "base_learning_rate.")
    define.enum("lr_schedule", "piecewise", LR_SCHEDULES, "After the warm-up: "
                      "piecewise (x0.1 at 30/60/80/90% of the run, TF official) or cosine "
                      "(smooth decay to 0 at the end; better for runs of a few epochs).")
    define.float("batch_norm_momentum", None, "Momentum of the batch-norm moving averages "
                       "used at evaluation. Default: 1 - 20 / total train steps, within "
                       "[0.9, 0.997] (0.997 = TF official, for long runs; a short run needs a "
                       "shorter average or it evaluates with statistics from its first steps).",
                       lower_bound=0.0, upper_bound=0.9999)
    define.float("warmup_epochs", None, "Linear learning-rate warm-up length in epochs. "
                       "Default: 5% of --train_epochs (5 of 100 epochs).", lower_bound=0.0)
    define.float("weight_decay", 1e-4, "L2 weight decay on non-batch-norm weights.",
                       lower_bound=0.0)
    define.float("label_smoothing", 0.0, "Label smoothing for the training loss.",
                       lower_bound=0.0, upper_bound=1.0)
    define.integer("checkpoint_every_steps", 500, "Also save a checkpoint every this many "
                         "steps (0: only at evaluations).", lower_bound=0)
    define.integer("keep_checkpoints", 5, "How many recent checkpoints to keep.",
                         lower_bound=1)
    define.string("eval_split", "validation", "Split evaluated every "
                  "--epochs_between_evals epochs and at the end of training.")
    define.string("train_split", "train", "Split trained on; several with commas, e.g. "
                  "train,validation for a final model on every labelled image once the "
                  "settings are chosen (the --eval_split figures are then not of unseen images).")
    define.integer("synthetic_num_classes", 6, "Classes for --use_synthetic_data when "
                         "--data_dir has no manifest.json.", lower_bound=2)
    define.integer("seed", None, "Random seed for weights, shuffling and augmentation; "
                   "a run repeats exactly only with --deterministic too (the parallel "
                   "input pipeline otherwise hands out its random draws as its calls "
                   "finish).")
    define.boolean("deterministic", False, "Deterministic ops and input order (slower); "
                         "uses --seed, or 0 when unset.")
    define.integer("log_every_steps", 100, "Steps between two reports of the --hooks that "
                         "log (at most once per --steps_per_loop call).", lower_bound=1)


def _define_generalisation(define: _Definer) -> None:
    # Each is off at 0. Left and right organs are separate classes: no transform mirrors an
    # image but --mirror_swap, which relabels what it mirrors as the other side.
    define.float("augment_scale", 0.0, "Random zoom of training images by a factor in "
                 "[1 - s, 1 + s] (e.g. 0.1).", lower_bound=0.0, upper_bound=0.99)
    define.float("augment_translate", 0.0, "Random shift of training images by up to this "
                 "fraction of the side (e.g. 0.08).", lower_bound=0.0, upper_bound=0.49)
    define.float("augment_rotate", 0.0, "Random rotation of training images by up to this "
                 "many degrees either way (e.g. 10; a rotation, never a mirror).",
                 lower_bound=0.0, upper_bound=179.0)
    define.float("augment_noise", 0.0, "Gaussian noise on training images, standard "
                 "deviation as a fraction of the 0-255 range (e.g. 0.02).", lower_bound=0.0,
                 upper_bound=0.99)
    define.float("augment_invert", 0.0, "Probability of inverting a training image's grey "
                 "scale (MONOCHROME1 vs MONOCHROME2 renderings of the same anatomy).",
                 lower_bound=0.0, upper_bound=1.0)
    define.float("augment_gamma", 0.0, "Random gamma curve on training images, gamma "
                 "log-uniform in [1/(1+g), 1+g] (e.g. 0.3: another window or contrast phase).",
                 lower_bound=0.0, upper_bound=0.99)
    define.float("augment_blur", 0.0, "Random Gaussian blur of training images, standard "
                 "deviation up to this many pixels of the stored image (e.g. 0.8: thicker "
                 "slices, softer kernels).", lower_bound=0.0, upper_bound=2.99)
    define.float("augment_rot90", 0.0, "Probability of turning a training image by a random "
                 "quarter turn (90/180/270 degrees: radiographs stored sideways or upside "
                 "down; a rotation, never a mirror).", lower_bound=0.0, upper_bound=1.0)
    define.float("augment_frame", 0.0, "Probability of shrinking a training image to 60-95% "
                 "of its side on a border of one random grey (film on a light box, collimator "
                 "edges): the border stops being a clue to the class.", lower_bound=0.0,
                 upper_bound=1.0)
    define.float("mirror_swap", 0.0, "Probability of mirroring a training image of a class "
                 "that has a mirror partner (names differing only in left/right, e.g. "
                 "kidney-left/kidney-right) across the patient's left-right axis and "
                 "relabelling it as the partner. Unpaired classes are never mirrored. 0: off.",
                 lower_bound=0.0, upper_bound=1.0)
    define.enum("mirror_axis", "left_right", MIRROR_AXES, "The image axis along the "
                "patient's left-right axis, for --mirror_swap and the --random_flip checks: "
                "left_right (the radiological convention) or up_down (OrganAMNIST; "
                "benchmarks/stress_eval.py --preset=orientation shows which).")
    define.float("color_jitter", 0.0, "Random brightness shift (up to this fraction of 255) "
                 "and contrast factor in [1 - j, 1 + j] on training images.",
                 lower_bound=0.0, upper_bound=0.99)
    define.float("mixup_alpha", 0.0, "mixup: blend pairs of training images and their labels "
                 "with a Beta(a, a) weight (e.g. 0.2). With --cutmix_alpha too, each batch "
                 "uses one of the two at random.", lower_bound=0.0)
    define.float("cutmix_alpha", 0.0, "CutMix: paste a box of another training image, "
                 "labels weighted by its area, Beta(a, a) (e.g. 1.0).", lower_bound=0.0)
    define.float("ema_decay", 0.0, "Evaluate, checkpoint and export an exponential moving "
                 "average of the weights with this per-step decay (e.g. 0.999; warmed up as "
                 "min(decay, (1+step)/(10+step))). 0: off.", lower_bound=0.0,
                 upper_bound=0.99999)
    define.integer("export_tta", 1, "Views averaged by the exported model's signatures "
                   "(test-time augmentation: small shifts, zooms and rotations, never a "
                   "mirror). 1: off.", lower_bound=1, upper_bound=MAX_TEST_TIME_VIEWS)


def _define_cluster(define: _Definer) -> None:
    # Multi-worker training (MultiWorkerMirroredStrategy); TF_CONFIG works without these flags.
    define.list("worker_hosts", None, "Comma-separated host:port of every worker, the same "
                "list and order on every host; worker 0 is the chief (writes checkpoints, "
                "summaries, exports). Builds TF_CONFIG; do not also set TF_CONFIG.")
    define.integer("task_index", None, "This host's position in --worker_hosts (0-based).",
                   lower_bound=0)
    define.integer("heartbeat_timeout_seconds", 30, "Multi-worker: a worker that stops "
                   "answering for this long fails the whole run (every worker exits).",
                   lower_bound=1)
    define.integer("collective_timeout_seconds", 600, "Multi-worker: abort a gradient "
                   "all-reduce that waits longer than this for a stuck (alive) worker.",
                   lower_bound=1)
    define.integer("startup_timeout_seconds", 600, "Multi-worker: a worker whose peers have "
                   "not all started within this long exits with one line naming them. "
                   "Ctrl-C ends the wait at once; SIGTERM only at its end.", lower_bound=1)


def _free_short_name_v(flag_values: flags.FlagValues) -> None:
    # absl.logging claims -v for --verbosity; the original trainer used -v for --version, and
    # its commands must keep working. --verbosity keeps its long name.
    if "v" in flag_values and flag_values["v"].name == "verbosity":
        flag_values["verbosity"].short_name = None
        delattr(flag_values, "v")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Define every trainer flag (on absl's global FLAGS unless given; once, before parsing)."""
    _free_short_name_v(flag_values)
    define = _Definer(flag_values)
    _define_base(define)
    _define_performance(define)
    _define_benchmark(define)
    _define_resnet(define)
    _define_generalisation(define)
    _define_cluster(define)


def parse_hooks(names: list[str]) -> tuple[str, ...]:
    """Canonical hook names from a case-insensitive list; ValueError lists the valid ones."""
    canonical = {name.lower(): name for name in HOOK_NAMES}
    result = []
    for name in names:
        name = name.strip()
        if not name:
            continue
        if name.lower() not in canonical:
            raise ValueError(f"--hooks: unknown hook {name!r}; valid (case-insensitive): "
                             + ", ".join(HOOK_NAMES))
        result.append(canonical[name.lower()])
    return tuple(result)
