"""scripts/: ShellCheck, --help and argument counts of every script, the MedNIST recipe's
report, and convert -> sweep -> export on tiny data (the sweep's two runs end in one results
table), and a failed or interrupted sweep rerun (with a stand-in trainer). The GPU-server and
cluster scripts with stand-in tools: test_gpu_scripts.py; the OrganAMNIST scripts:
test_organamnist_scripts.py; collect_results.py's table: test_collect_results.py."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainer_fixtures import REPO_ROOT, trainer_env, write_converted_dataset

SCRIPTS = REPO_ROOT / "scripts"
SHELL_SCRIPTS = sorted([*SCRIPTS.glob("*.sh"), *SCRIPTS.glob("*.sbatch")])
# Every script a user runs, found by listing the folder so that a new one is checked too.
# Files starting with "_" are libraries the scripts source (_common.sh), never run alone.
USER_SCRIPTS = sorted(p.name for p in SCRIPTS.iterdir()
                      if p.is_file() and not p.name.startswith("_"))
# The fewest arguments each script accepts, and one call below that (or, for scripts without
# positional arguments, one stray argument). A new script has to be added here.
WRONG_ARGUMENTS = {
    "collect_results.py": (),
    "convert_dataset.sh": ("raw",),
    "evaluate_export.sh": ("runs/x",),
    "quickstart.sh": ("stray",),
    "recipe_mednist.sh": ("data",),
    "holdout_organamnist.sh": (),
    "recipe_organamnist.sh": (),
    "slurm_train.sbatch": ("data",),
    "sweep_resnet.sh": ("data",),
    "train_all_gpus.sh": ("data",),
    "train_multi_node.sh": ("0", "data"),
    "train_single_gpu.sh": ("data",),
}
USAGE_LINE = re.compile(r"^usage: \S", re.IGNORECASE | re.MULTILINE)


def _bash(script: str, *args: str, env: dict | None = None, timeout: float = 600,
          cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPTS / script), *args], capture_output=True,
                          text=True, env={**trainer_env(), **(env or {})}, timeout=timeout,
                          cwd=cwd)


def _run_script(script: str, *args: str, cwd: Path, home: Path) -> subprocess.CompletedProcess:
    """Runs a script the way its usage says (bash for .sh/.sbatch, Python for .py)."""
    if script.endswith((".sh", ".sbatch")):
        command = ["bash", str(SCRIPTS / script)]
    elif script.endswith(".py"):
        command = [sys.executable, str(SCRIPTS / script)]
    else:
        pytest.fail(f"scripts/{script}: unknown kind of script; teach this test how to run it")
    # HOSTS is set so that train_multi_node.sh is judged on its arguments alone.
    env = {**trainer_env(), "HOME": str(home), "HOSTS": "a,b"}
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env,
                          timeout=60, cwd=cwd)


@pytest.fixture
def empty_cwd_and_home(tmp_path):
    """(cwd, HOME): two empty folders; the test checks that they are still empty."""
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    yield cwd, home
    assert [*cwd.iterdir(), *home.iterdir()] == []


def test_shellcheck_is_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (Debian package: shellcheck)")
    # -x follows `source` lines; run from the root, where `# shellcheck source=` paths start.
    result = subprocess.run(["shellcheck", "-x", *(str(p.relative_to(REPO_ROOT))
                                                   for p in SHELL_SCRIPTS)],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(SHELL_SCRIPTS) >= 10


@pytest.mark.parametrize("script", [p.name for p in SHELL_SCRIPTS])
def test_strict_mode(script):
    text = (SCRIPTS / script).read_text()
    if script.startswith("_"):  # sourced: runs under its caller's shell options
        assert not re.search(r"^\s*set ", text, re.MULTILINE)
        return
    assert text.startswith("#!/usr/bin/env bash\n")
    # The recipes set it in their run-alone branch: quickstart.sh sources their flags.
    assert re.search(r"^ *set -euo pipefail$", text, re.MULTILINE)


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("script", USER_SCRIPTS)
def test_help_prints_usage_and_does_nothing_else(script, flag, empty_cwd_and_home):
    result = _run_script(script, flag, cwd=empty_cwd_and_home[0], home=empty_cwd_and_home[1])
    assert result.returncode == 0, result.stderr
    assert USAGE_LINE.search(result.stdout), result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("script", USER_SCRIPTS)
def test_wrong_number_of_arguments_prints_usage_on_stderr(script, empty_cwd_and_home):
    assert script in WRONG_ARGUMENTS, f"add scripts/{script} to WRONG_ARGUMENTS"
    result = _run_script(script, *WRONG_ARGUMENTS[script], cwd=empty_cwd_and_home[0],
                         home=empty_cwd_and_home[1])
    assert result.returncode == 2, result.stdout + result.stderr
    assert USAGE_LINE.search(result.stderr), result.stderr
    assert result.stdout == ""
    # The last line says what was wrong, after the usage it refers to.
    assert re.match(rf"{re.escape(script)}: error: ", result.stderr.splitlines()[-1])


def test_multi_node_without_hosts_is_a_one_line_error(empty_cwd_and_home):
    cwd, home = empty_cwd_and_home
    result = subprocess.run(["bash", str(SCRIPTS / "train_multi_node.sh"), "0", "d", "m"],
                            capture_output=True, text=True, cwd=cwd,
                            env={**trainer_env(), "HOME": str(home), "HOSTS": ""})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "train_multi_node.sh: error: HOSTS is not set (HOSTS=host1,host2,...)"]


def test_mednist_recipe_prints_only_what_it_measured(tmp_path):
    """The recipe's report is this run's test accuracy and training time, nothing quoted."""
    data = write_converted_dataset(tmp_path / "data", {
        "train": {"Chest": 8, "Hand": 8}, "validation": {"Chest": 2, "Hand": 2},
        "test": {"Chest": 3, "Hand": 3}})
    model = tmp_path / "model"
    result = _bash("recipe_mednist.sh", str(data), str(model), "--max_train_steps=1",
                   "--image_size=32", "--batch_size=8", "--hooks=", "--num_parallel_calls=2",
                   cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = json.loads((model / "eval_test" / "metrics.json").read_text())["accuracy"]
    report = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"MedNIST recipe: test accuracy (\S+) on 6 images, training \(incl\. "
                        r"start-up and validation\) \d+ s", report), result.stdout
    assert report.split()[4] == f"{accuracy:.4f}"  # as dicom_eval.py printed it above
    budget = json.loads((model / "config.json").read_text())["budget"]
    assert budget["seconds"] == 285 and budget["max_train_epochs"] == 3  # the recipe's cap
    # No figure from another run anywhere in the output.
    assert "peer" not in result.stdout and "%" not in result.stdout


def test_convert_sweep_two_runs_then_export_and_evaluate(tmp_path, make_images_labels_dataset):
    raw = make_images_labels_dataset({"Chest": 12, "Hand": 12})
    data = tmp_path / "data"
    converted = _bash("convert_dataset.sh", str(raw), str(data),
                      env={"LAYOUT": "images_labels", "VALIDATION_SIZE": "4", "TEST_SIZE": "4",
                           "NUM_WORKERS": "1"})
    assert converted.returncode == 0, converted.stderr[-2000:]
    manifest = json.loads((data / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"train", "validation", "test"}

    sweep = tmp_path / "sweep"
    result = _bash("sweep_resnet.sh", str(data), str(sweep), "--max_train_steps=1",
                   "--nosmall_input", "--hooks=", "--num_parallel_calls=2",
                   env={"SIZES": "18", "VERSIONS": "1 2", "IMAGE_SIZE": "32",
                        "BATCH_SIZE": "8", "TRAIN_EPOCHS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    with open(sweep / "results.csv") as f:
        rows = list(csv.DictReader(f))
    # Two runs of the smallest network (ResNet-34 would add ~15 s of tracing for nothing the
    # sweep does differently): the versions loop, as the sizes loop, reaches each run's flags.
    assert [(row["run"], row["resnet_size"], row["version"]) for row in rows] == [
        ("resnet18_v1", "18", "1"), ("resnet18_v2", "18", "2")]
    for row in rows:
        assert row["status"] == "ok" and row["step"] == "1" and row["split"] == "test"
        assert row["architecture"] == "resnet" and row["eval_step"] == "1"
        assert 0 <= float(row["split_accuracy"]) <= 1 and 0 <= float(row["eval_accuracy"]) <= 1
        assert float(row["examples_per_second"]) > 0 and int(row["seconds"]) >= 0
    assert all(int(row["params"]) > 1e6 for row in rows)
    assert rows[0]["params"] != rows[1]["params"]  # v1 has a batch norm after every conv
    table = (sweep / "results.md").read_text().splitlines()
    assert table[0].startswith("| run | status | architecture | resnet_size") and len(table) == 4
    assert table[0] in result.stdout  # the sweep prints its table

    # A mistyped DATA_DIR is refused before the export (it used to export, then fail).
    typo = _bash("evaluate_export.sh", str(sweep / "resnet18_v2"), str(tmp_path / "dta"))
    assert typo.returncode == 2 and typo.stderr.splitlines() == [
        f"evaluate_export.sh: {tmp_path / 'dta'}/manifest.json not found (convert the dataset "
        "first)"]
    assert not (sweep / "resnet18_v2" / "export").exists()
    exported = _bash("evaluate_export.sh", str(sweep / "resnet18_v2"), str(data),
                     env={"SPLIT": "validation"})
    assert exported.returncode == 0, exported.stderr[-3000:]
    versions = [p for p in (sweep / "resnet18_v2" / "export").iterdir() if p.name.isdigit()]
    assert len(versions) == 1 and (versions[0] / "saved_model.pb").is_file()
    report = sweep / "resnet18_v2" / "export" / f"eval-{versions[0].name}-validation"
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["num_examples"] == manifest["splits"]["validation"]["num_examples"] > 0
    # A rerun evaluates the same version again: it added an identical copy of the same
    # checkpoint to the folder TF Serving watches each time.
    again = _bash("evaluate_export.sh", str(sweep / "resnet18_v2"), str(data),
                  env={"SPLIT": "validation"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert [p for p in (sweep / "resnet18_v2" / "export").iterdir() if p.name.isdigit()] == \
        versions
    assert (f"evaluate_export.sh: {versions[0]} is already of step 1: not exported again"
            in again.stderr.splitlines())
    # An EXPORT_DIR that is a file: one line, not a Python traceback.
    (tmp_path / "a_file").write_text("")
    refused = _bash("evaluate_export.sh", str(sweep / "resnet18_v2"), str(data),
                    env={"EXPORT_DIR": str(tmp_path / "a_file")})
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.splitlines()[-1].startswith(
        f"evaluate_export.sh: EXPORT_DIR={tmp_path / 'a_file'}: cannot export ("), refused.stderr


# dicom_main.py's stand-in for the sweep's bookkeeping: a model_dir keeps its first
# --image_size (another one is refused, touching nothing, as the trainer does); each accepted
# run adds a line to the checkpoint index (not with --finished: a rerun of a finished run),
# and --crash then fails after that save.
FAKE_TRAINER = """#!/usr/bin/env bash
case "${1:-}" in
  */dicom_main.py) ;;
  *) exec "%s" "$@" ;;
esac
for arg; do
  case "$arg" in --model_dir=*) dir="${arg#*=}" ;; --image_size=*) size="${arg#*=}" ;; esac
done
if [[ -f "$dir/checkpoint" && "$(head -n 1 "$dir/checkpoint")" != "image_size $size" ]]; then
  echo "dicom_main.py: error: $dir was trained with another image_size"; exit 1
fi
[[ -f "$dir/checkpoint" ]] || echo "image_size $size" > "$dir/checkpoint"
[[ " $* " == *" --finished "* ]] || echo "saved" >> "$dir/checkpoint"
echo "trained at $size"
[[ " $* " != *" --interrupted "* ]] || exit 130
[[ " $* " != *" --crash "* ]]
"""


def _fake_sweep(tmp_path):
    """(data folder, sweep folder, environment) for sweep_resnet.sh with FAKE_TRAINER as its
    python: one run, resnet18_v2 at 32 px, not evaluated."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(FAKE_TRAINER % sys.executable)
    (bin_dir / "python").chmod(0o755)
    data, sweep = tmp_path / "data", tmp_path / "sweep"
    data.mkdir()
    (data / "manifest.json").write_text('{"splits": {}}')
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SIZES": "18",
           "VERSIONS": "2", "IMAGE_SIZE": "32", "EVAL_SPLIT": "none"}
    return data, sweep, env


def test_a_failed_rerun_keeps_the_earlier_log_and_does_not_take_over_its_row(tmp_path):
    data, sweep, env = _fake_sweep(tmp_path)
    run = sweep / "resnet18_v2"

    def sweep_once(image_size, *flags):
        result = _bash("sweep_resnet.sh", str(data), str(sweep), *flags,
                       env={**env, "IMAGE_SIZE": image_size}, timeout=60)
        with open(sweep / "results.csv") as f:
            (row,) = csv.DictReader(f)
        return result, row, json.loads((run / "sweep.json").read_text())

    first, row, record = sweep_once("32")
    assert first.returncode == 0 and row["status"] == "ok", first.stderr
    refused, row, rerun = sweep_once("64")
    assert refused.returncode == 1
    assert "trained with another image_size" in refused.stderr
    # The folder still holds the first run: its row, its time, and its log above this one's.
    assert row["status"] == "ok (rerun failed)" and row["seconds"] == str(record["seconds"])
    assert rerun["seconds"] == record["seconds"] and "rerun_seconds" in rerun
    log = (run / "train.log").read_text()
    assert log.count(" attempt: ") == 2 and "trained at 32" in log
    assert log.index("trained at 32") < log.index("--image_size=64") < log.index("another")
    # A rerun that saved before failing changed the model: the row is that failure's.
    crashed, row, _ = sweep_once("32", "--crash")
    assert crashed.returncode == 1 and row["status"] == "failed"
    assert (run / "train.log").read_text().count(" attempt: ") == 3


def test_the_sweep_records_a_runs_time_over_its_attempts(tmp_path):
    data, sweep, env = _fake_sweep(tmp_path)
    record = sweep / "resnet18_v2" / "sweep.json"

    def sweep_once(*flags):
        result = _bash("sweep_resnet.sh", str(data), str(sweep), *flags, env=env, timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(record.read_text())["seconds"]

    sweep_once()
    record.write_text('{"status": "ok", "seconds": 100}')  # as if the first attempt took 100 s
    # A rerun of the finished run only evaluates it: the run's time stays its training's.
    assert sweep_once("--finished") == 100
    # A resume (it saved) adds its time to the run's (the row showed the resume's alone).
    assert sweep_once() >= 100


def test_an_interrupted_run_is_a_row_and_its_time_counts(tmp_path):
    """Ctrl-C (the trainer saves, exit 130) stopped the sweep before sweep.json was written:
    the run's row had no status, and a resume's time replaced the interrupted attempt's."""
    data, sweep, env = _fake_sweep(tmp_path)
    record = sweep / "resnet18_v2" / "sweep.json"
    stopped = _bash("sweep_resnet.sh", str(data), str(sweep), "--interrupted", env=env,
                    timeout=60)
    assert stopped.returncode == 130
    assert "sweep_resnet.sh: stopped at resnet18_v2" in stopped.stderr
    assert json.loads(record.read_text())["status"] == "interrupted"
    record.write_text('{"status": "interrupted", "seconds": 100}')  # as if it trained 100 s
    resumed = _bash("sweep_resnet.sh", str(data), str(sweep), env=env, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    finished = json.loads(record.read_text())
    assert finished["status"] == "ok" and finished["seconds"] >= 100
    # Interrupting a rerun of the finished run before it saved leaves the run's row as it was.
    _bash("sweep_resnet.sh", str(data), str(sweep), "--interrupted", "--finished", env=env,
          timeout=60)
    assert json.loads(record.read_text()) == finished
