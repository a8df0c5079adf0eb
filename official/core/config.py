"""The trainer's frozen configuration, its result, and config.json in model_dir.

TrainConfig is model-neutral: which network to train is the network plug-in's (see
official/core/train_lib.py), resolved into a networks.registry.ModelSpec. config.json holds every
TrainConfig field, the class names, the ModelSpec under "model" (and, as older runs had them,
its fields at the top level); evaluation, prediction and export rebuild the model from it.

No TensorFlow here: the command-line programs import this module before parsing flags.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from typing import TYPE_CHECKING

from official.utils.files import file_in_the_way, nearest_existing, written_atomically

if TYPE_CHECKING:  # the model code (Keras) is not imported to read a config
    from networks.registry import ModelSpec

CONFIG_FILE = "config.json"
CHECKPOINT_STATE_FILE = "checkpoint"  # tf.train.CheckpointManager's index of a model_dir
DTYPE_POLICIES = {"fp32": "float32", "fp16": "mixed_float16", "bf16": "mixed_bfloat16"}
LR_SCALINGS = ("linear", "none")
LR_SCHEDULES = ("piecewise", "cosine")
# len(dataset.test_time.TTA_VIEWS), here so that the --tta flags can be bounded before
# TensorFlow is imported (tests/test_registry.py checks the two agree).
MAX_TEST_TIME_VIEWS = 7
# Valid range of each augmentation flag, [low, high) or [low, high] (a probability);
# dataset/augment.py AugmentSpec checks the same.
AUGMENT_RANGES = (("augment_scale", 0.0, 1.0, ")"), ("augment_translate", 0.0, 0.5, ")"),
                  ("augment_rotate", 0.0, 180.0, ")"), ("augment_noise", 0.0, 1.0, ")"),
                  ("augment_invert", 0.0, 1.0, "]"), ("color_jitter", 0.0, 1.0, ")"),
                  ("augment_gamma", 0.0, 1.0, ")"), ("augment_blur", 0.0, 3.0, ")"),
                  ("augment_rot90", 0.0, 1.0, "]"), ("augment_frame", 0.0, 1.0, "]"),
                  ("mirror_swap", 0.0, 1.0, "]"))
# The image axis that runs along the patient's left-right axis (dataset/augment.py MIRROR_AXES).
MIRROR_AXES = ("left_right", "up_down")
SYNTHETIC_BATCHES_PER_EPOCH = 100  # --use_synthetic_data without a manifest


def flip_crosses_sides(mirror_axis: str, augment_rot90: float,
                       augment_rotate: float = 0.0) -> str:
    """Why --random_flip (a left-right flip) can mirror the patient's left and right, or ""
    when it cannot: the columns carry them, or a turn before the flip may lay them there (a
    half turn and a left-right flip are an up-down mirror; a turn by more than 90 degrees and
    the flip move a side past the midline)."""
    if mirror_axis == "left_right":
        return ("--mirror_axis=left_right says the columns carry left and right (up_down if "
                "the rows do)")
    if augment_rot90:
        return f"--augment_rot90={augment_rot90} turns images before the flip"
    if augment_rotate > 90:
        return f"--augment_rotate={augment_rotate} turns images by over 90 degrees before the flip"
    return ""


_SIDES = {"left": "right", "right": "left"}


def _other_side(name: str) -> str:
    # "kidney-left" -> "kidney-right", "Left Hand" -> "Right Hand": each left/right word swapped,
    # its case kept.
    def swap(match):
        word = match.group(0)
        other = _SIDES[word.lower()]
        return other.upper() if word.isupper() else other.capitalize() if word[0].isupper() \
            else other
    return re.sub(r"(?<![A-Za-z])(left|right)(?![A-Za-z])", swap, name, flags=re.IGNORECASE)


def mirror_partners(class_names) -> tuple[int, ...]:
    """For each class, the class its mirror image shows: two classes whose names differ only in
    a left/right word ("kidney-left", "kidney-right") are each other's; every other class is
    its own (a liver seen in a mirror is an anatomy that does not occur, so mirror_swap leaves
    unpaired classes alone). Plain Python, so that dicom_main.py checks the pairs before
    TensorFlow's import; dataset/augment.py mirror_swap takes the result as a tensor.
    """
    index = {name: position for position, name in enumerate(class_names)}
    return tuple(index.get(_other_side(name), position)
                 for position, name in enumerate(class_names))


def mirror_swap_partners(mirror_swap: float, data_dir: str, class_names) -> tuple[int, ...]:
    """mirror_partners for --mirror_swap, which needs a pair of classes to swap.

    Raises:
      ValueError: no two of ``class_names`` differ only in left/right.
    """
    partners = mirror_partners(class_names)
    if all(partner == index for index, partner in enumerate(partners)):
        raise ValueError(f"--mirror_swap={mirror_swap}: no two classes of --data_dir="
                         f"{data_dir} differ only in left/right (classes: "
                         f"{', '.join(class_names)})")
    return partners


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model_dir: str
    data_dir: str | None = None
    image_size: int = 224
    channels: int = 1
    train_epochs: int = 100
    epochs_between_evals: int = 1
    stop_threshold: float | None = None
    max_train_steps: int | None = None
    train_budget_seconds: float | None = None  # official/core/budget.py
    batch_size: int = 32  # global, split across replicas
    dtype: str = "fp32"
    loss_scale: float | None = None  # fp16 only; None = dynamic
    base_learning_rate: float = 0.1
    lr_scaling: str = "linear"
    lr_schedule: str = "piecewise"
    warmup_epochs: float | None = None  # None: 5% of train_epochs
    momentum: float = 0.9
    batch_norm_momentum: float | None = None  # None: from the run length (train_steps)
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    random_flip: bool = False
    mirror_swap: float = 0.0  # probability; dataset/augment.py mirror_swap
    mirror_axis: str = "left_right"
    # Generalisation (all off by default): laterality-safe augmentation (dataset/augment.py),
    # batch mixing, and an exponential moving average of the weights for eval and export.
    augment_scale: float = 0.0
    augment_translate: float = 0.0
    augment_rotate: float = 0.0  # degrees
    augment_noise: float = 0.0
    augment_invert: float = 0.0
    augment_gamma: float = 0.0
    augment_blur: float = 0.0  # pixels, at the stored size
    augment_rot90: float = 0.0  # probability of a quarter turn
    augment_frame: float = 0.0  # probability of a frame of one random grey
    color_jitter: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    ema_decay: float = 0.0
    export_tta: int = 1
    train_split: str = "train"
    eval_split: str = "validation"
    use_synthetic_data: bool = False
    synthetic_num_classes: int = 6
    num_parallel_calls: int = 5
    cache: bool = False
    steps_per_loop: int = 1
    jit_compile: bool = False
    checkpoint_every_steps: int = 500
    keep_checkpoints: int = 5
    seed: int | None = None
    deterministic: bool = False
    hooks: tuple[str, ...] = ("LoggingTensorHook",)
    log_every_steps: int = 100
    export_dir: str | None = None
    benchmark_log_dir: str | None = None
    gcp_project: str | None = None
    bigquery_data_set: str = "test_benchmark"
    bigquery_run_table: str = "benchmark_run"
    bigquery_metric_table: str = "benchmark_metric"

    def __post_init__(self):
        if self.dtype not in DTYPE_POLICIES:
            raise ValueError(f"--dtype={self.dtype}: must be one of {sorted(DTYPE_POLICIES)}")
        if self.channels not in (1, 3):
            raise ValueError(f"--channels={self.channels}: must be 1 or 3")
        if self.lr_scaling not in LR_SCALINGS:
            raise ValueError(f"--lr_scaling={self.lr_scaling}: must be 'linear' or 'none'")
        if self.train_budget_seconds is not None and not self.train_budget_seconds > 0:
            raise ValueError(f"--train_budget_seconds={self.train_budget_seconds}: must be "
                             "positive")
        if self.batch_norm_momentum is not None and not 0 <= self.batch_norm_momentum < 1:
            raise ValueError(f"--batch_norm_momentum={self.batch_norm_momentum}: must be in "
                             "[0, 1)")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"--lr_schedule={self.lr_schedule}: must be one of "
                             f"{list(LR_SCHEDULES)}")
        for name, low, high, end in AUGMENT_RANGES:
            value = getattr(self, name)
            if not (low <= value < high or (end == "]" and value == high)):
                raise ValueError(f"--{name}={value}: must be in [{low:g}, {high:g}{end}")
        if self.mirror_axis not in MIRROR_AXES:
            raise ValueError(f"--mirror_axis={self.mirror_axis}: must be one of "
                             f"{list(MIRROR_AXES)}")
        if self.random_flip and self.mirror_swap and (
                crossing := flip_crosses_sides(self.mirror_axis, self.augment_rot90,
                                               self.augment_rotate)):
            # The flip comes after the swap (and after the quarter turn, which can lay the
            # rows' left and right along the columns): it mirrors half the swapped images
            # back and keeps their new label, a left organ labelled right.
            raise ValueError(f"--random_flip with --mirror_swap={self.mirror_swap}: "
                             f"{crossing}, so the flip mirrors the patient's "
                             "left and right without relabelling (undoing half the swaps); "
                             "drop --random_flip")
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name}={getattr(self, name)}: must be >= 0 (0: off)")
        if self.export_tta < 1:  # the upper bound: dataset.test_time, checked by train_lib
            raise ValueError(f"--export_tta={self.export_tta}: must be >= 1 (1: off)")
        if not (self.ema_decay == 0.0 or 0.0 < self.ema_decay < 1.0):
            raise ValueError(f"--ema_decay={self.ema_decay}: must be in (0, 1), or 0 for off")
        if self.loss_scale is not None and self.dtype != "fp16":
            raise ValueError(f"--loss_scale is only used with --dtype=fp16, got --dtype="
                             f"{self.dtype}")
        # The BigQuery names only say where --gcp_project's upload goes: without it they
        # were silently unused (a run the user believed uploaded).
        for name, default in (("bigquery_data_set", "test_benchmark"),
                              ("bigquery_run_table", "benchmark_run"),
                              ("bigquery_metric_table", "benchmark_metric")):
            if self.gcp_project is None and getattr(self, name) != default:
                raise ValueError(f"--{name}={getattr(self, name)} needs --gcp_project (the "
                                 "project to upload to); without it nothing is uploaded")

    def check_mirror_pairs(self, class_names) -> None:
        """--mirror_swap needs a pair of classes to swap among the data's ``class_names``
        (ValueError: mirror_swap_partners)."""
        if self.mirror_swap:
            mirror_swap_partners(self.mirror_swap, self.data_dir, class_names)

    def optimizer_spec(self) -> OptimizerSpec:
        return OptimizerSpec(dtype=self.dtype, loss_scale=self.loss_scale,
                             weight_decay=self.weight_decay, momentum=self.momentum,
                             batch_norm_momentum=self.batch_norm_momentum)

    def schedule_spec(self, steps_per_epoch: int, train_steps: int | None = None
                      ) -> ScheduleSpec:
        """train_steps: the steps the run will take (--train_budget_seconds), else
        train_epochs of them."""
        return ScheduleSpec(steps_per_epoch=steps_per_epoch, lr_schedule=self.lr_schedule,
                            base_learning_rate=self.base_learning_rate,
                            lr_scaling=self.lr_scaling, batch_size=self.batch_size,
                            train_steps=train_steps or self.train_epochs * steps_per_epoch,
                            warmup_epochs=self.warmup_epochs)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    model_name: str  # networks.registry.ModelSpec.name: "resnet50_v2", "inception_v4"
    step: int
    resumed_from_step: int
    # "train_epochs" | "train_budget_seconds" | "budget_deadline" | "max_train_steps" |
    # "stop_threshold"
    stopped_by: str
    eval_accuracy: float
    eval_loss: float
    eval_examples: int
    examples_per_second: float | None
    export_path: str | None
    budget_epochs: float | None = None  # --train_budget_seconds: the epochs trained in it
    # ... and the seconds of it this run counted (to its last step, validation excluded): far
    # under the budget = the run reached --train_epochs first, or was resumed (its clock
    # restarts); at it = lengthened halfway or stopped by the deadline (budget.py).
    budget_seconds_used: float | None = None
    budget_seconds: float | None = None

    def summary_line(self, *, eval_split: str, model_dir: str, replicas: int,
                     dir_flag: str = "model_dir") -> str:
        """The one line the training CLIs print at the end (`dir_flag`: what their flag for
        the run's folder is called)."""
        start = (f"resumed from {self.resumed_from_step}" if self.resumed_from_step
                 else "new run")
        line = (f"{self.model_name}: step {self.step} ({start}, stopped by "
                f"{self.stopped_by}), {eval_split} "
                f"accuracy {self.eval_accuracy:.4f} loss {self.eval_loss:.4f} on "
                f"{self.eval_examples} examples, {replicas} replica(s); {dir_flag} {model_dir}")
        if self.examples_per_second:
            line += f"; {self.examples_per_second:.1f} examples/s"
        if self.budget_epochs:
            line += f"; {self.budget_epochs:.2f} epochs in the --train_budget_seconds budget"
            if self.budget_seconds_used is not None and self.budget_seconds:
                line += (f" (this run used {self.budget_seconds_used:.0f} s of "
                         f"{self.budget_seconds:g})")
        if self.export_path:
            line += f"; exported {self.export_path}"
        return line


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """What a network plug-in's model precision, regularisation and optimizer read of the run
    (built once by TrainConfig.optimizer_spec)."""
    dtype: str
    loss_scale: float | None
    weight_decay: float
    momentum: float
    batch_norm_momentum: float | None  # None: from the run length


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
    """What a learning-rate schedule reads of the run (built once by TrainConfig.schedule_spec,
    when the manifest has given the steps per epoch)."""
    steps_per_epoch: int
    lr_schedule: str
    base_learning_rate: float
    lr_scaling: str
    batch_size: int  # global
    train_steps: int  # the whole run's (train_epochs of them, or what the time budget fits)
    warmup_epochs: float | None  # None: 5% of the run


# --- config ----------------------------------------------------------------------------------

def read_config(model_dir: str) -> dict:
    """The resolved config.json a training run saved in `model_dir`."""
    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"{model_dir}: no such folder")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found (is {model_dir} a training --model_dir?)")
    try:
        with open(path) as f:
            saved = json.load(f)
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path}: not a readable {CONFIG_FILE} ({error})") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: not a training {CONFIG_FILE} (a JSON object)")
    return saved


def resolved_config(config: TrainConfig, class_names: tuple[str, ...], spec: ModelSpec,
                    network_entries: dict) -> dict:
    """Everything config.json records: the flags, the class names, the network's ModelSpec
    under "model" and (for readers of older runs) its fields at the top level."""
    model = spec.to_dict()
    # The data as a full path: an evaluation from another working directory tells the
    # training data from other data by it (evaluation.default_output_dir).
    data_dir = config.data_dir
    if data_dir and "://" not in data_dir:
        data_dir = os.path.abspath(data_dir)
    return {**dataclasses.asdict(config), "data_dir": data_dir, "hooks": list(config.hooks),
            "class_names": list(class_names), **model, "model": model, **network_entries}


_TEMPORARY_ROOTS = {os.path.realpath(path) for path in ("/tmp", "/var/tmp",
                                                         tempfile.gettempdir())}


def check_run_folders(config: TrainConfig) -> None:
    """The folders a run writes, checked before it trains.

    Raises:
      ValueError: --model_dir or --export_dir is the system's temporary folder itself (the
        original's default), is a file or lies under one (the export's
        mkdir failed after the training) or cannot be written, --model_dir is the dataset's
        own folder (checkpoints among the shards, config.json beside manifest.json), or
        --export_dir is the --model_dir.
    """
    # The paths, not the flags, are named: the Slim trainer's are --train_dir and --dataset_dir.
    for path in (config.model_dir, config.export_dir):
        # The original's default for both --model_dir and --data_dir (kept as the flags'
        # default): checkpoints and config.json loose among every program's files, a second
        # run there resuming the first, and a killed run's leftovers looked for among them.
        if path and os.path.realpath(path) in _TEMPORARY_ROOTS:
            raise ValueError(f"{path}: the system's temporary folder itself, shared by every "
                             "program; give the run a folder of its own (e.g. "
                             f"{os.path.join(path, 'dicom_model')})")
        if path and (blocker := file_in_the_way(path)):
            where = "" if blocker == os.path.abspath(path) else f" {blocker}"
            raise ValueError(f"{path}:{where} is a file; the trainer writes a folder there")
        if path and not os.access(probe := nearest_existing(path), os.W_OK | os.X_OK):
            # A read-only export_dir failed at the export, after all the training.
            where = "" if probe == os.path.abspath(path) else f" {probe}"
            raise ValueError(f"{path}:{where} is not writable (a read-only file system, or no "
                             "permission); the trainer writes a folder there")
    if (config.data_dir and not config.use_synthetic_data
            and os.path.realpath(config.model_dir) == os.path.realpath(config.data_dir)):
        raise ValueError(f"{config.model_dir}: the run's folder is its data folder (the "
                         "converted records); give the run a folder of its own")
    # Numbered exports beside the checkpoints: which one would an evaluation of the folder be?
    if config.export_dir and os.path.realpath(config.export_dir) == os.path.realpath(
            config.model_dir):
        raise ValueError(f"{config.export_dir}: the export's folder is the run's folder; give "
                         f"the export a folder of its own (e.g. {config.model_dir}/export)")


def config_to_resume(model_dir: str) -> dict | None:
    """config.json of the run `model_dir` holds, or None for a new run. A config.json without
    a checkpoint is a run that failed before its first save: nothing was trained under its
    settings, so they bind nothing and the next run starts afresh (and rewrites it)."""
    if not (has_checkpoint(model_dir) and os.path.isfile(os.path.join(model_dir, CONFIG_FILE))):
        return None
    return read_config(model_dir)


def write_config(model_dir: str, resolved: dict) -> None:
    os.makedirs(model_dir, exist_ok=True)
    with written_atomically(os.path.join(model_dir, CONFIG_FILE)) as tmp, open(tmp, "w") as f:
        json.dump(resolved, f, indent=2, sort_keys=True)


def has_checkpoint(model_dir: str) -> bool:
    return os.path.isfile(os.path.join(model_dir, CHECKPOINT_STATE_FILE))
