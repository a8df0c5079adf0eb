"""The trainer's flag surface: original names, short names, defaults, and one-line errors."""

from __future__ import annotations

import pytest
from absl import flags

from networks.resnet import dicom_main
from official.utils.flags import core as flags_core
from tests.trainer_fixtures import error_lines, run_trainer


@pytest.fixture
def parse():
    """Parse argv into a private FlagValues with the trainer's flags (absl's global FLAGS is
    process-wide, so tests never touch it)."""
    values = flags.FlagValues()
    flags.DEFINE_integer("verbosity", -1, "absl.logging's flag, with its short name",
                         short_name="v", flag_values=values)
    flags_core.define_flags(values)

    def run(*argv):
        values.unparse_flags()
        values(["dicom_main.py", *argv])
        return values

    return run


# The original's help text: its defaults, by long name.
ORIGINAL_DEFAULTS = {
    "data_dir": "/tmp", "model_dir": "/tmp", "train_epochs": 100, "epochs_between_evals": 1,
    "stop_threshold": None, "batch_size": 32, "hooks": ["LoggingTensorHook"],
    "num_parallel_calls": 5, "inter_op_parallelism_threads": 0,
    "intra_op_parallelism_threads": 0, "use_synthetic_data": False, "max_train_steps": None,
    "dtype": "fp32", "loss_scale": None, "data_format": None, "export_dir": None,
    "benchmark_log_dir": None, "gcp_project": None, "bigquery_data_set": "test_benchmark",
    "bigquery_run_table": "benchmark_run", "bigquery_metric_table": "benchmark_metric",
    "version": "2", "resnet_size": "50", "multi_gpu": False,
}


def test_original_defaults(parse):
    values = parse()
    for name, default in ORIGINAL_DEFAULTS.items():
        assert values[name].value == default, name
    assert values["num_gpus"].value is None  # auto: 1 if a GPU is visible (documented change)


@pytest.mark.parametrize("argv, expected", [
    (["--multi_gpu=False"], False),
    (["--multi_gpu=false"], False),
    (["--multi_gpu=True"], True),
    (["--multi_gpu"], True),
    (["--nomulti_gpu"], False),
    (["-mg=False"], False),
])
def test_multi_gpu_false_means_false(parse, argv, expected):
    assert parse(*argv).multi_gpu is expected


def test_every_short_name(parse):
    values = parse(
        "-dd=/d", "-md=/m", "-te=7", "-ebe=2", "-st=0.9", "-bs=16", "-ng=0",
        "-hk=ExamplesPerSecondHook,loggingtensorhook", "-npc=3", "-inter=2", "-intra=4",
        "-synth", "-mts=11", "-dt=fp16", "-ls=64", "-df=channels_last", "-ed=/e", "-bld=/b",
        "-gp=proj", "-bds=ds", "-brt=rt", "-bmt=mt", "-v=1", "-rs=18", "-mg=False")
    expected = {
        "data_dir": "/d", "model_dir": "/m", "train_epochs": 7, "epochs_between_evals": 2,
        "stop_threshold": 0.9, "batch_size": 16, "num_gpus": 0,
        "hooks": ["ExamplesPerSecondHook", "loggingtensorhook"], "num_parallel_calls": 3,
        "inter_op_parallelism_threads": 2, "intra_op_parallelism_threads": 4,
        "use_synthetic_data": True, "max_train_steps": 11, "dtype": "fp16", "loss_scale": 64.0,
        "data_format": "channels_last", "export_dir": "/e", "benchmark_log_dir": "/b",
        "gcp_project": "proj", "bigquery_data_set": "ds", "bigquery_run_table": "rt",
        "bigquery_metric_table": "mt", "version": "1", "resnet_size": "18", "multi_gpu": False,
    }
    for name, value in expected.items():
        assert values[name].value == value, name
    # -v is the original's --version; absl's --verbosity keeps only its long name.
    assert values["verbosity"].short_name is None


def test_original_command_parses(parse):
    values = parse("--data_dir=/data/sample/training", "--model_dir=/data/model",
                   "--train_epochs=100", "--epochs_between_evals=1", "--batch_size=32",
                   "--version=2", "--resnet_size=152", "--multi_gpu=False")
    assert (values.resnet_size, values.version, values.multi_gpu) == ("152", "2", False)


def test_hooks_are_case_insensitive_and_unknown_names_list_the_valid_ones():
    assert flags_core.parse_hooks(["profilerhook", " LoggingMetricHook", ""]) == (
        "ProfilerHook", "LoggingMetricHook")
    with pytest.raises(ValueError, match="unknown hook 'Nope'.*LoggingTensorHook.*ProfilerHook"):
        flags_core.parse_hooks(["Nope"])


def test_config_from_flags(parse, monkeypatch):
    values = parse("-rs=34", "-v=1", "--image_size=64", "-hk=examplespersecondhook", "-bs=8")
    monkeypatch.setattr(dicom_main, "FLAGS", values)
    config, network = dicom_main.config_from_flags(), dicom_main.network_arguments_from_flags()
    assert (network["resnet_size"], network["version"], config.image_size) == (34, 1, 64)
    assert config.hooks == ("ExamplesPerSecondHook",)
    assert config.random_flip is False  # laterality: never flip unless asked
    monkeypatch.setattr(dicom_main, "FLAGS", parse("-gp=proj", "-bmt=metrics"))
    assert dicom_main.config_from_flags().bigquery_metric_table == "metrics"


@pytest.mark.parametrize("argv, message", [
    (["--resnet_size=19"], "--resnet_size=19: value should be one of <18|34|50|101|152|200>"),
    (["--version=3"], "--version=3: value should be one of <1|2>"),
    (["--dtype=fp64"], "--dtype=fp64"),
    (["--hooks=Nope", "--use_synthetic_data"], "unknown hook 'Nope'"),
    (["--batch_size=0"], "--batch_size=0"),
    # Where an upload goes, with nothing to upload to: it was silently unused.
    (["-bds=mine", "--use_synthetic_data"], "--bigquery_data_set=mine needs --gcp_project"),
])
def test_bad_flags_one_line_error(argv, message, tmp_path):
    result = run_trainer(f"--model_dir={tmp_path / 'm'}", *argv, timeout=120)
    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert message in lines[0] and lines[0].startswith("dicom_main.py: error:")


def test_small_input_defaults_on_only_for_tiny_images():
    from official.utils.misc.model_helpers import resolve_small_input

    assert resolve_small_input(None, 28) and resolve_small_input(None, 32)
    assert not resolve_small_input(None, 64)  # 64 px uses the (16x cheaper) ImageNet stem
    assert resolve_small_input(True, 224) and not resolve_small_input(False, 28)
