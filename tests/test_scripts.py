"""scripts/: ShellCheck, usage text, TF_CONFIG from a host list, and convert -> sweep -> export
on tiny data (the sweep's two runs end in one results table)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.trainer_fixtures import REPO_ROOT, trainer_env

SCRIPTS = REPO_ROOT / "scripts"
SHELL_SCRIPTS = sorted([*SCRIPTS.glob("*.sh"), *SCRIPTS.glob("*.sbatch")])
MINE = ("convert_dataset.sh", "train_single_gpu.sh", "train_all_gpus.sh",
        "train_multi_node.sh", "slurm_train.sbatch", "sweep_resnet.sh", "evaluate_export.sh")


def _bash(script: str, *args: str, env: dict | None = None, timeout: float = 600,
          cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPTS / script), *args], capture_output=True,
                          text=True, env={**trainer_env(), **(env or {})}, timeout=timeout,
                          cwd=cwd)


def test_shellcheck_is_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (Debian package: shellcheck)")
    # -x follows `source` lines; run from the root, where `# shellcheck source=` paths start.
    result = subprocess.run(["shellcheck", "-x", *(str(p.relative_to(REPO_ROOT))
                                                   for p in SHELL_SCRIPTS)],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {p.name for p in SHELL_SCRIPTS} >= set(MINE)


@pytest.mark.parametrize("script", MINE)
def test_usage_text_and_strict_mode(script):
    text = (SCRIPTS / script).read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    if script.endswith(".sbatch"):
        return  # needs SLURM to run; its usage is its header
    shown = _bash(script, "--help")
    assert shown.returncode == 0 and "Usage: " in shown.stdout, shown.stderr
    missing = _bash(script)  # no arguments: the usage on stderr, exit 2
    assert missing.returncode == 2 and "Usage: " in missing.stderr


def test_multi_node_builds_tf_config_from_the_host_list():
    result = _bash("train_multi_node.sh", "1", "/data", "/runs/x", "--seed=3",
                   env={"HOSTS": "10.0.0.1:3000, gpu2", "DRY_RUN": "1", "GPUS_PER_HOST": "0",
                        "PER_GPU_BATCH_SIZE": "16"})
    assert result.returncode == 0, result.stderr
    tf_config = json.loads(result.stdout.splitlines()[0].removeprefix("TF_CONFIG="))
    assert tf_config == {"cluster": {"worker": ["10.0.0.1:3000", "gpu2:2222"]},
                         "task": {"type": "worker", "index": 1}}
    command = result.stdout.splitlines()[1]
    assert "--batch_size=32" in command and "--num_gpus=0" in command
    assert command.rstrip().endswith("--seed=3")

    bad = _bash("train_multi_node.sh", "2", "/data", "/runs/x", env={"HOSTS": "a,b"})
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == "train_multi_node.sh: TASK_INDEX=2 must be 0-1"
    auto = _bash("train_multi_node.sh", "auto", "/d", "/m",
                 env={"HOSTS": f"elsewhere,{os.uname().nodename}", "DRY_RUN": "1"})
    assert auto.returncode == 0 and '"index": 1' in auto.stdout, auto.stderr


def test_train_all_gpus_without_gpus_says_so(tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("nvidia-smi exists here: the no-GPU message cannot be checked")
    result = _bash("train_all_gpus.sh", str(tmp_path), str(tmp_path))
    assert result.returncode == 1
    assert "nvidia-smi not found; set GPUS=0,1,..." in result.stderr


def test_convert_sweep_two_sizes_then_export_and_evaluate(tmp_path, make_images_labels_dataset):
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
                   env={"SIZES": "18 34", "VERSIONS": "2", "IMAGE_SIZE": "32",
                        "BATCH_SIZE": "8", "TRAIN_EPOCHS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    with open(sweep / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(row["run"], row["resnet_size"], row["version"]) for row in rows] == [
        ("resnet18_v2", "18", "2"), ("resnet34_v2", "34", "2")]
    for row in rows:
        assert row["status"] == "ok" and row["step"] == "1" and row["split"] == "test"
        assert 0 <= float(row["split_accuracy"]) <= 1 and 0 <= float(row["eval_accuracy"]) <= 1
        assert float(row["examples_per_second"]) > 0 and int(row["seconds"]) >= 0
    assert int(rows[1]["params"]) > 1.8 * int(rows[0]["params"]) > 1e6  # 21.3M vs 11.2M
    table = (sweep / "results.md").read_text().splitlines()
    assert table[0].startswith("| run | status | resnet_size") and len(table) == 4
    assert table[0] in result.stdout  # the sweep prints its table

    exported = _bash("evaluate_export.sh", str(sweep / "resnet18_v2"), str(data),
                     env={"SPLIT": "validation"})
    assert exported.returncode == 0, exported.stderr[-3000:]
    versions = [p for p in (sweep / "resnet18_v2" / "export").iterdir() if p.name.isdigit()]
    assert len(versions) == 1 and (versions[0] / "saved_model.pb").is_file()
    report = sweep / "resnet18_v2" / "export" / f"eval-{versions[0].name}-validation"
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["num_examples"] == manifest["splits"]["validation"]["num_examples"] > 0
