"""A model_dir resumed with a --dtype whose optimizer differs (fp16's dynamic loss scale wraps
it) is refused in one line before training, as other frozen settings are; the restore used to
fail with a traceback after 50 warning lines."""

from __future__ import annotations

import pytest

from networks import registry
from official.core.resume import check_resume_config, frozen_settings

SPEC = registry.ModelSpec(architecture="resnet", num_classes=2, image_size=32, channels=1,
                          resnet_size=18, version=2, small_input=True,
                          data_format="channels_last")


def _check(saved_dtype, dtype, *, saved_loss_scale=None, loss_scale=None):
    saved = {"class_names": ["Chest", "Hand"], "batch_size": 8, "dtype": saved_dtype,
             "loss_scale": saved_loss_scale, "ema_decay": None}
    check_resume_config("runs/a", frozen_settings(
        saved, SPEC, SPEC, ("Chest", "Hand"), ema_decay=None, batch_size=8, dtype=dtype,
        loss_scale=loss_scale))


@pytest.mark.parametrize("saved_dtype,dtype", [("fp32", "fp16"), ("fp16", "fp32"),
                                               ("bf16", "fp16")])
def test_a_dynamic_loss_scale_added_or_removed_is_refused(saved_dtype, dtype):
    with pytest.raises(ValueError, match=f"runs/a was trained with dtype='{saved_dtype}', "
                                         f"this run has dtype='{dtype}'"):
        _check(saved_dtype, dtype)


def test_a_fixed_loss_scale_instead_of_a_dynamic_one_is_refused():
    with pytest.raises(ValueError, match="loss_scale='dynamic', this run has loss_scale=128"):
        _check("fp16", "fp16", loss_scale=128.0)


@pytest.mark.parametrize("saved_dtype,dtype,loss_scale", [
    ("fp32", "bf16", None), ("bf16", "fp32", None), ("fp32", "fp16", 128.0),
    ("fp16", "fp16", None)])
def test_changes_that_keep_the_optimizer_resume(saved_dtype, dtype, loss_scale):
    _check(saved_dtype, dtype, loss_scale=loss_scale)


def test_class_names_in_another_unicode_form_are_refused_visibly():
    # They print alike; the refusal must show the difference (the converter now writes NFC).
    import unicodedata

    nfd, nfc = (unicodedata.normalize(form, "Pelvis Å") for form in ("NFD", "NFC"))
    saved = {"class_names": ["Hand", nfd], "batch_size": 8, "dtype": "fp32", "ema_decay": None}
    with pytest.raises(ValueError, match=r"class_names=\['Hand', 'Pelvis A\\u030a'\], this run "
                                         r"has class_names=\['Hand', 'Pelvis \\xc5'\]: the same "
                                         r"names in another Unicode form"):
        check_resume_config("runs/a", frozen_settings(
            saved, SPEC, SPEC, ("Hand", nfc), ema_decay=None, batch_size=8, dtype="fp32"))
