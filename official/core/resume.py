"""What a resumed run may not change (refused) and may change (said, and recorded in
config.json's "resumed_with"): official/core/train_lib.py checks both against the saved
config.json. No TensorFlow here, as in config.py.
"""

from __future__ import annotations

import json
import unicodedata
from typing import TYPE_CHECKING

from dataset.dicom_options import describe_rendering, rendering_of
from official.core.config import AUGMENT_RANGES, CONFIG_FILE, has_checkpoint
from official.core.model_paths import training_rendering
from official.utils.files import same_path

if TYPE_CHECKING:  # the model code (Keras) is not imported to read a config
    from networks.registry import ModelSpec


# What a model_dir must keep to resume, in the order a mismatch is reported.
FROZEN_SPEC_FIELDS = ("resnet_size", "version", "num_classes", "channels", "image_size",
                      "small_input", "architecture")


def frozen_settings(saved: dict, saved_spec: ModelSpec, spec: ModelSpec,
                    class_names: tuple[str, ...], *, ema_decay: float,
                    batch_size: int, dtype: str = "fp32",
                    loss_scale: float | None = None) -> dict[str, tuple]:
    """{key: (saved, this run's)} for what a resumed run must not change (check_resume_config);
    `saved_spec` is the ModelSpec `saved` (a config.json) records."""
    pairs = {key: (getattr(saved_spec, key), getattr(spec, key)) for key in FROZEN_SPEC_FIELDS}
    # Class names after the class count, as a mismatch was always reported.
    ordered = list(pairs.items())
    ordered.insert(3, ("class_names", (saved.get("class_names"), list(class_names))))
    # The checkpoints hold the weight average only when the run made one (--ema_decay). A
    # config.json from before the flag has no such key, and its run made none: read as None
    # (not compared), an average added on resume failed in the restore with a traceback.
    ordered.append(("ema_decay", (saved.get("ema_decay", 0.0), ema_decay)))
    # A step is a batch of this size: the step count, the epochs it stands for and the
    # learning-rate schedule over them all change meaning with it (the global batch, so
    # resuming on more or fewer GPUs keeps it).
    ordered.append(("batch_size", (saved.get("batch_size"), batch_size)))
    # fp16 with a dynamic loss scale wraps the optimizer (keras LossScaleOptimizer): its
    # checkpoint and a plain optimizer's do not restore into each other (the restore failed
    # with a traceback). Other dtype changes keep the variables, and may resume.
    def dynamic(run_dtype, run_loss_scale):
        return run_dtype == "fp16" and run_loss_scale is None
    if saved.get("dtype") is not None and (dynamic(saved["dtype"], saved.get("loss_scale"))
                                           != dynamic(dtype, loss_scale)):
        ordered.append(("dtype", (saved["dtype"], dtype)) if saved["dtype"] != dtype else
                       ("loss_scale", (saved.get("loss_scale") or "dynamic",
                                       loss_scale or "dynamic")))
    return dict(ordered)


# What a resumed run may change, and trains with from the step it resumes at: said in one
# warning, and kept in config.json's "resumed_with" (the flags it records are the last run's).
# A longer --train_epochs lays the learning-rate schedule (and the batch-norm momentum) over the
# new length: the rate at the resumed step can jump by 1,000x.
RESUMABLE_CHANGES = ("data_dir", "train_split", "train_epochs", "base_learning_rate",
                     "lr_scaling", "lr_schedule", "warmup_epochs", "momentum",
                     "batch_norm_momentum", "weight_decay", "label_smoothing", "random_flip",
                     "mirror_axis", *(name for name, *_ in AUGMENT_RANGES), "mixup_alpha",
                     "cutmix_alpha", "dtype", "loss_scale")


def resumed_changes(saved: dict, resolved: dict) -> dict[str, list]:
    """{key: [saved, this run's]} of the RESUMABLE_CHANGES a resumed run makes."""
    def same(key):
        if key == "data_dir" and saved[key] and resolved[key]:  # (older runs: relative)
            return same_path(saved[key], resolved[key])
        return _jsonable(saved[key]) == _jsonable(resolved[key])

    return {key: [saved[key], resolved[key]] for key in RESUMABLE_CHANGES
            if key in saved and not same(key)}


# The RESUMABLE_CHANGES that change the learning-rate schedule: the warning gives the rate
# before and after them.
SCHEDULE_SETTINGS = ("train_epochs", "base_learning_rate", "lr_scaling", "lr_schedule",
                     "warmup_epochs")


def changes_warning(restored: int, changes: dict[str, list],
                    rates: list[float] | None = None) -> str:
    """The warning of a run resumed at step `restored` with resumed_changes' `changes`;
    `rates`: the learning rate after that step as the run began and as it goes on."""
    said = ", ".join(f"{key} {before!r} -> {now!r}" for key, (before, now) in changes.items())
    if rates:
        said += f"; learning rate after step {restored}: " + " -> ".join(
            f"{rate:.3g}" for rate in rates)
    return (f"resumed at step {restored} with changed settings (config.json's resumed_with "
            f"keeps them): {said}")


def rendering_change(saved: dict, rendering: dict | None) -> str | None:
    """A warning when a resumed run's records rendered DICOM files otherwise than the run's
    start (re-converted with another --dicom_voi, ...): prediction renders new files as the
    latest records were. Not refused: a dataset without DICOM files is not concerned."""
    # A run from before config.json recorded the rendering started on the one its data_dir's
    # manifest says; when that is gone, nothing is known to compare. A recorded None is a
    # conversion from before the converter recorded it: the defaults, compared too.
    started, unknown = training_rendering(saved)
    if unknown is not None:
        return None
    before, now = rendering_of(started), rendering_of(rendering)
    if before == now:
        return None
    return (f"this run's records rendered DICOM files with {describe_rendering(now)}, the "
            f"run's start with {describe_rendering(before)}; prediction will render new "
            "DICOM files as these records were")


def check_resume_config(model_dir: str, frozen: dict[str, tuple] | None) -> None:
    """A model_dir resumes only with the network and input it started with.

    Args:
      frozen: {key: (saved value, this run's value)} for the settings that define the network
        and its input; None for a model_dir without config.json (a new run).
    """
    # The folder, not the flag, is named: the Slim trainer calls it --train_dir.
    if frozen is None:
        if has_checkpoint(model_dir):
            raise ValueError(f"{model_dir} has checkpoints but no {CONFIG_FILE}; train into "
                             "an empty folder")
        return
    for key, (before, now) in frozen.items():
        if before is not None and _jsonable(before) != _jsonable(now):
            if _jsonable(before, "NFC") == _jsonable(now, "NFC"):
                # Class names that print alike: the converter reads them in NFC (since
                # 2026-12-05), a model trained on names in another form has them so.
                raise ValueError(
                    f"{model_dir} was trained with {key}={ascii(before)}, this run has "
                    f"{key}={ascii(now)}: the same names in another Unicode form (the "
                    "converter now writes class names in NFC); train into a new folder")
            raise ValueError(f"{model_dir} was trained with {key}={before!r}, this run has "
                             f"{key}={now!r}; use the same settings or a new folder")


def _jsonable(value, normal_form: str | None = None):
    text = json.dumps(value, ensure_ascii=False)
    return json.loads(unicodedata.normalize(normal_form, text) if normal_form else text)
