"""scripts/ for GPU servers and clusters, run with stand-ins on PATH (nvidia-smi, and a python
that prints what it was given): TF_CONFIG from a host list, the GPUs each script takes (a
scheduler's CUDA_VISIBLE_DEVICES kept), a failing nvidia-smi, SLURM outside SLURM, and a
Ctrl-C or SIGTERM that stops a whole sweep."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.test_scripts import SCRIPTS, _bash
from tests.trainer_fixtures import trainer_env


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


@pytest.mark.parametrize("script, args, env, variable", [
    ("train_multi_node.sh", ("0", "d", "m"), {"HOSTS": "a,b", "GPUS_PER_HOST": "0"},
     {"num_gpus": "GPUS_PER_HOST", "batch_size": "PER_GPU_BATCH_SIZE"}),
    ("train_all_gpus.sh", ("d", "m"), {"GPUS": "0,1"},
     {"num_gpus": "GPUS", "batch_size": "PER_GPU_BATCH_SIZE"})])
@pytest.mark.parametrize("extra", ["--num_gpus=4", "-batch_size=64", "--multi_gpu",
                                   "--nomulti_gpu", "-bs=64", "--ng=4", "--nomg"])
def test_a_flag_the_script_sizes_is_refused(tmp_path, script, args, env, variable, extra):
    """An extra --num_gpus was taken over the script's (absl keeps the later value): the
    batch printed and passed was sized for other GPUs than those that trained."""
    env = _env_with(PATH=_stub_path(tmp_path, {"python": 'echo "$@"'}), **env)

    def run(*extras):
        return subprocess.run([shutil.which("bash"), str(SCRIPTS / script), *args, *extras],
                              capture_output=True, text=True, timeout=60, env=env)

    result = run("--seed=1", extra)
    # (absl takes a flag's short name as the flag: -bs=64 is --batch_size=64)
    name = {"bs": "batch_size", "ng": "num_gpus", "mg": "multi_gpu"}.get(
        *2 * [extra.lstrip("-").split("=")[0].removeprefix("no")])
    assert result.returncode == 2, result.stdout
    assert result.stderr.splitlines() == [
        f"{script}: error: {extra.split('=')[0]}: this script sizes the GPUs and the global "
        f"batch; set {variable.get(name, variable['num_gpus'])} instead"]
    kept = run("--num_gpus_per_task=1")  # a longer name that starts with one refused
    assert kept.returncode == 0 and "--num_gpus_per_task=1" in kept.stdout, kept.stderr


def test_train_all_gpus_without_gpus_says_so(tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("nvidia-smi exists here: the no-GPU message cannot be checked")
    result = _bash("train_all_gpus.sh", str(tmp_path), str(tmp_path))
    assert result.returncode == 1
    assert "nvidia-smi not found; set GPUS=0,1,..." in result.stderr


# nvidia-smi -L as it answers with one GPU, and with the driver but no GPU.
FAKE_NVIDIA_SMI = {"one GPU": 'echo "GPU 0: Tesla T4 (UUID: GPU-0)"',
                   "no GPU": 'echo "No devices were found"; exit 6'}


@pytest.mark.parametrize("nvidia_smi, num_gpus, note", [
    (None, None, "nvidia-smi is not installed"),
    ("no GPU", None, "nvidia-smi -L lists none"),
    ("one GPU", None, None),
    (None, "0", None),  # the user chose the CPU
    ("no GPU", "1", None),  # the user asked for a GPU: dicom_main.py answers
])
def test_train_single_gpu_without_a_gpu_names_num_gpus_first(tmp_path, nvidia_smi, num_gpus,
                                                              note):
    """The default --num_gpus=1 fails on a machine without a GPU with "--num_gpus=1 but 0
    GPU(s) are visible", a flag the user never gave: one line first names NUM_GPUS=0. PATH
    holds only stand-ins (python prints its flags), so a real nvidia-smi cannot answer."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dirname").symlink_to(shutil.which("dirname"))
    (bin_dir / "grep").symlink_to(shutil.which("grep"))
    stubs = {"python": 'echo "$@"'}
    if nvidia_smi:
        stubs["nvidia-smi"] = f'[[ "$*" == "-L" ]] || exit 2; {FAKE_NVIDIA_SMI[nvidia_smi]}'
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!{shutil.which('bash')}\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {key: value for key, value in trainer_env().items() if key != "NUM_GPUS"}
    env["PATH"] = str(bin_dir)
    if num_gpus is not None:
        env["NUM_GPUS"] = num_gpus
    result = subprocess.run([shutil.which("bash"), str(SCRIPTS / "train_single_gpu.sh"), "d", "m"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    expected = [f"train_single_gpu.sh: no GPU found ({note}); NUM_GPUS=0 trains on the CPU"]
    assert result.stderr.splitlines() == (expected if note else [])
    assert f"--num_gpus={num_gpus or 1}" in result.stdout.split()  # the run still goes ahead


def _stub_path(tmp_path, stubs: dict[str, str]) -> str:
    """A PATH of stand-in commands (bash bodies) plus the few real tools the scripts use."""
    bin_dir = tmp_path / "stub_bin"
    bin_dir.mkdir()
    for tool in ("dirname", "grep", "paste", "head", "basename"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!{shutil.which('bash')}\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return str(bin_dir)


def _env_with(**variables: str | None) -> dict:
    """trainer_env() with each variable set, or removed where None (the test machine's own
    CUDA_VISIBLE_DEVICES must not leak in)."""
    env = trainer_env()
    for name, value in variables.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


# What nvidia-smi prints on a server whose driver and library disagree, with its exit status.
BROKEN_DRIVER = ('echo "Failed to initialize NVML: Driver/library version mismatch"; '
                 'echo "NVML library version: 535.183"; exit 18')
FOUR_GPUS = 'printf "0\\n1\\n2\\n3\\n"'


@pytest.mark.parametrize("script, args", [("train_all_gpus.sh", ("d", "m")),
                                          ("train_multi_node.sh", ("0", "d", "m"))])
def test_a_failing_nvidia_smi_is_one_line(tmp_path, script, args):
    path = _stub_path(tmp_path, {"nvidia-smi": BROKEN_DRIVER, "python": 'echo "$@"'})
    env = _env_with(PATH=path, HOSTS="localhost", DRY_RUN="1", CUDA_VISIBLE_DEVICES=None)
    result = subprocess.run([shutil.which("bash"), str(SCRIPTS / script), *args],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1  # it was 18 (nvidia-smi's), with nothing said
    assert result.stderr.splitlines() == [
        f"{script}: error: nvidia-smi failed (exit 18): Failed to initialize NVML: "
        "Driver/library version mismatch ; set the GPUs yourself or fix the driver"]


@pytest.mark.parametrize("visible, gpus, expected", [
    (None, None, ("0,1,2,3", 4)),  # every GPU nvidia-smi lists
    ("2,3", None, ("2,3", 2)),  # a scheduler's allocation (nvidia-smi ignores it)
    ("1,-1,3", None, ("1", 1)),  # CUDA stops at the first invalid entry
    ("2,3", "0", ("0", 1)),  # GPUS chooses
])
def test_train_all_gpus_takes_only_the_gpus_it_was_given(tmp_path, visible, gpus, expected):
    path = _stub_path(tmp_path, {"nvidia-smi": FOUR_GPUS,
                                 "python": 'echo "$CUDA_VISIBLE_DEVICES" "$@"'})
    env = _env_with(PATH=path, CUDA_VISIBLE_DEVICES=visible, GPUS=gpus)
    result = subprocess.run([shutil.which("bash"), str(SCRIPTS / "train_all_gpus.sh"), "d", "m"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    devices, num_gpus = expected
    words = result.stdout.split()
    assert words[0] == devices and f"--num_gpus={num_gpus}" in words
    assert f"--batch_size={32 * num_gpus}" in words


@pytest.mark.parametrize("visible, gpu, expected", [
    (None, None, "0"), ("3", None, "3"), ("3,5", None, "3,5"), ("3", "1", "1")])
def test_train_single_gpu_keeps_a_schedulers_gpu(tmp_path, visible, gpu, expected):
    path = _stub_path(tmp_path, {"python": 'echo "$CUDA_VISIBLE_DEVICES"'})
    env = _env_with(PATH=path, NUM_GPUS="1", CUDA_VISIBLE_DEVICES=visible, GPU=gpu)
    result = subprocess.run([shutil.which("bash"), str(SCRIPTS / "train_single_gpu.sh"), "d",
                             "m"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_slurm_script_outside_slurm_is_one_line():
    env = {key: value for key, value in trainer_env().items() if not key.startswith("SLURM_")}
    result = subprocess.run(["bash", str(SCRIPTS / "slurm_train.sbatch"), "d", "m"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "slurm_train.sbatch: error: SLURM_JOB_NODELIST is not set: submit it with sbatch "
        "(scripts/train_multi_node.sh runs one host of a cluster without SLURM)"]


@pytest.mark.parametrize("status", [130, 143])
def test_a_ctrl_c_or_sigterm_stops_the_whole_sweep(tmp_path, status):
    """The trainer handles Ctrl-C and SIGTERM and exits 130/143 instead of dying by them, so
    bash went on to the next run (recording the stopped one as failed): one Ctrl-C per run."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text("{}")
    stub = _stub_path(tmp_path, {"python": 'echo "dicom_main.py: error: interrupted; ..." >&2; '
                                           f"exit {status}"})
    result = _bash("sweep_resnet.sh", str(data), str(tmp_path / "sweep"),
                   env={"PATH": f"{stub}:{os.environ['PATH']}", "SIZES": "18 34",
                        "VERSIONS": "2", "NUM_GPUS": "0", "EVAL_SPLIT": "none"}, timeout=60)
    assert result.returncode == status
    assert result.stderr.splitlines()[-2:] == [
        "dicom_main.py: error: interrupted; ...",
        "sweep_resnet.sh: stopped at resnet18_v2; run the same command to go on"]
    assert not (tmp_path / "sweep" / "resnet34_v2").exists()
    # Not a failure: the stopped run's row says so, with its seconds (they count on resume).
    recorded = json.loads((tmp_path / "sweep" / "resnet18_v2" / "sweep.json").read_text())
    assert recorded["status"] == "interrupted" and recorded["seconds"] >= 0
