"""networks/slim/eval_image_classifier.py as a user meets it: every wrong input is one line,
exit 1, before TensorFlow's import (the program runs with an unimportable TensorFlow: a
traceback would show), and right inputs get past those checks. Its evaluation end to end:
tests/test_slim.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from networks import registry
from networks.slim import choices
from official.core.config import TrainConfig, resolved_config, write_config
from tests.trainer_fixtures import (REPO_ROOT, error_lines, tiny_dataset, trainer_env,
                                    write_converted_dataset)

PROGRAM = REPO_ROOT / "networks" / "slim" / "eval_image_classifier.py"
SPEC = registry.ModelSpec(architecture="mobilenet_v3_small", num_classes=2, image_size=32)


def _run(*args: str, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROGRAM), *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd,
                          env=trainer_env(without_tensorflow=True))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A train_dir and an export as the Slim trainer leaves them, as far as the checks read
    them (config.json, the checkpoint list and files, saved_model.pb: no weights, none is
    loaded), a converted dataset of the model's classes, and paths around them."""
    root = tmp_path_factory.mktemp("slim_eval")
    run = root / "run"
    config = resolved_config(TrainConfig(model_dir=str(run)), ("Chest", "Hand"), SPEC, {})
    write_config(str(run), config)
    (run / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n'
                                    'all_model_checkpoint_paths: "ckpt-1"\n')
    for name in ("ckpt-1.index", "ckpt-1.data-00000-of-00001"):
        (run / name).write_bytes(b"")
    export = root / "export" / "1700000000"
    (export / "assets.extra").mkdir(parents=True)
    (export / "saved_model.pb").write_bytes(b"")
    (export / "assets.extra" / "config.json").write_text(json.dumps(config))
    write_config(str(root / "fresh"), config)  # a train_dir before its first checkpoint
    (root / "garbled").mkdir()
    (root / "garbled" / "config.json").write_text('{"class_names": ')
    (root / "a_file").write_text("not a folder")
    return {"root": root, "run": run, "export": root / "export",
            "data": tiny_dataset(root / "data", train_per_class=1, eval_per_class=1),
            "knees": write_converted_dataset(root / "knees", {"test": {"Hand": 1, "Knee": 1}},
                                             classes=("Hand", "Knee"))}


# A name: (flags, the error after "eval_image_classifier.py: error: "), {name} from `made`.
# Each was found only after TensorFlow's import (5-20 s), most in a line that did not name
# the flag.
BAD_INPUTS = {
    "missing path": (
        ["--checkpoint_path={root}/nope"],
        "--checkpoint_path={root}/nope: no such file or folder"),
    "missing ckpt-N": (
        ["--checkpoint_path={run}/ckpt-9"],
        "--checkpoint_path={run}/ckpt-9: no such checkpoint ({run} keeps ckpt-1)"),
    # It was "neither a SavedModel (saved_model.pb) nor a training model_dir (config.json)".
    "a checkpoint's file": (
        ["--checkpoint_path={run}/ckpt-1.index"],
        "--checkpoint_path={run}/ckpt-1.index: one file of checkpoint {run}/ckpt-1; give its "
        "prefix: --checkpoint_path={run}/ckpt-1"),
    "no checkpoint yet": (
        ["--checkpoint_path={root}/fresh"],
        "--checkpoint_path={root}/fresh: a train_dir without a checkpoint (no "
        "{root}/fresh/checkpoint)"),
    "garbled config.json": (
        ["--checkpoint_path={root}/garbled"],
        "{root}/garbled/config.json: not a readable config.json (Expecting value: line 1 "
        "column 17 (char 16))"),
    "not a model": (
        ["--checkpoint_path={data}"],
        "--checkpoint_path={data}: neither a train_dir (config.json), a checkpoint prefix "
        "(ckpt-N, beside its .index file) nor a SavedModel (saved_model.pb)"),
    "unknown model_name": (
        ["--checkpoint_path={run}", "--model_name=alexnet"],
        "--model_name=alexnet: unknown network; valid names: "
        + ", ".join(choices.NETWORK_NAMES) + " (or their Keras class names)"),
    "other model_name": (
        ["--checkpoint_path={run}", "--model_name=vgg_16"],
        "--model_name=vgg_16: {run} holds a mobilenet_v3_small"),
    "other model_name of an export": (
        ["--checkpoint_path={export}", "--model_name=InceptionV4"],
        "--model_name=InceptionV4: {export} holds a mobilenet_v3_small"),
    "missing dataset_dir": (
        ["--checkpoint_path={run}", "--dataset_dir={root}/absent"],
        "{root}/absent: no such folder (expected the output folder of tf_convert_data.py)"),
    "missing split": (
        ["--checkpoint_path={run}", "--dataset_split_name=test"],
        "{data}: no split 'test'; available: train, validation"),
    # The mkdir after the evaluation failed with a bare errno ("[Errno 20] Not a directory").
    "eval_dir under a file": (
        ["--checkpoint_path={run}", "--eval_dir={root}/a_file/report"],
        "--eval_dir={root}/a_file/report: {root}/a_file is a file; the report is written as "
        "a folder"),
    "classes not the model's": (
        ["--checkpoint_path={export}", "--dataset_dir={knees}", "--dataset_split_name=test"],
        "{knees}: classes ['Knee'] are not among the model's ['Chest', 'Hand']"),
}


@pytest.mark.parametrize("flags, message", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_input_is_one_line_before_tensorflow(made, flags, message):
    given = [flag.format(**made) for flag in flags]
    if not any(flag.startswith("--dataset_dir") for flag in given):
        given.append(f"--dataset_dir={made['data']}")
    if not any(flag.startswith("--dataset_split_name") for flag in given):
        given.append("--dataset_split_name=validation")
    result = _run(*given)
    assert result.returncode == 1, result.stderr[-2000:]
    assert error_lines(result.stderr) == [
        f"eval_image_classifier.py: error: {message.format(**made)}"]
    assert result.stdout == ""


@pytest.mark.parametrize("model, extra", [
    ("{run}", ["--model_name=MobileNetV3Small"]),  # its Keras name
    ("{run}/ckpt-1", []), ("{export}", []),
    ("{export}/1700000000", ["--model_name=mobilenet_v3_small"]),
])
def test_right_input_gets_past_the_checks(made, model, extra):
    """Up to TensorFlow's import, here the stand-in's, which fails on purpose."""
    result = _run(f"--checkpoint_path={model.format(**made)}", f"--dataset_dir={made['data']}",
                  "--dataset_split_name=validation", *extra)
    assert "tensorflow imported: this run was to end before" in result.stderr
    assert "eval_image_classifier.py: error" not in result.stderr


def test_a_bare_checkpoint_name_inside_its_train_dir_gets_past_the_checks(made):
    # It was ": no such folder" after the import: the train_dir was taken as "".
    result = _run("--checkpoint_path=ckpt-1", f"--dataset_dir={made['data']}",
                  "--dataset_split_name=validation", cwd=made["run"])
    assert "tensorflow imported: this run was to end before" in result.stderr
    assert "eval_image_classifier.py: error" not in result.stderr


def test_usage_errors_exit_2_and_help_answers_at_once(made):
    result = _run(f"--checkpoint_path={made['run']}", f"--dataset_dir={made['data']}",
                  "--batch_size=0")
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        "eval_image_classifier.py: error: flag --batch_size=0: 0 is not a positive integer"]
    result = _run("--help")
    assert result.returncode == 0 and result.stderr == ""
    # What --checkpoint_path takes, the splits and the names --model_name knows.
    for phrase in ("not its .index file", "--export_dir holding", "comma-separated",
                   "mobilenet_v3_small", "resnetN_vM"):
        assert phrase in " ".join(result.stdout.split()), phrase


@pytest.mark.parametrize("spec", [
    SPEC,
    registry.ModelSpec(architecture="resnet", num_classes=2, image_size=32, resnet_size=50,
                       version=1, small_input=False, data_format="channels_last"),
], ids=lambda spec: spec.name)
def test_the_trained_name_is_the_registrys(spec):
    """choices reads config.json without Keras; registry.ModelSpec.name is the name slim_eval
    compares --model_name with."""
    config = resolved_config(TrainConfig(model_dir="m"), ("A", "B"), spec, {})
    assert choices.trained_network_name(config) == spec.name
    older = {key: value for key, value in config.items() if key != "model"}  # top-level keys
    assert choices.trained_network_name(older) == registry.spec_from_config(older).name
    choices.check_model_name(spec.name.upper(), "m", config)  # its own name, any case
    with pytest.raises(ValueError, match=f"^--model_name=vgg_16: m holds a {spec.name}$"):
        choices.check_model_name("vgg_16", "m", config)
