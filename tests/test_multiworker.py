"""Multi-worker training: two worker processes on 127.0.0.1 under MultiWorkerMirroredStrategy.

Run as a script, this file is one worker (see `_worker_main`): dicom_main.py's own flag parsing
and training, then the final model variables saved to an .npz so the test can compare workers.
A cluster's edges (signals, start-up, leftovers, a malformed cluster) are in
tests/test_multiworker_edges.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from official.core import checkpointing
from tests.trainer_fixtures import FAST_FLAGS, REPO_ROOT, error_lines, tiny_dataset, trainer_env

# --deterministic: the random crop draws from a stateful RNG inside a parallel map, so without
# it the augmentation of an example depends on thread timing, in every process differently.
# A validation (and its checkpoint) every 5 epochs, not every epoch: it is the same code under
# one strategy as under the other, and the eight left out saved the three processes ~11 CPU-s.
FLAGS = (*FAST_FLAGS, "--deterministic", "--batch_size=8", "--train_epochs=2",
         "--epochs_between_evals=5")
# The budget's timing is reported (CALIBRATED_STEP_SECONDS), so its real steps only cost time:
# 3 timed steps (1 warm-up + 3 = 4 taken) instead of budget.CALIBRATION_STEPS' 20.
TIMED = {"CALIBRATED_STEP_SECONDS": "100", "LENGTHEN_TIMED_STEPS": "3", "CALIBRATION_STEPS": "3"}
WORKER_TIMEOUT = 240  # seconds; a hung cluster fails the test instead of hanging it


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _start(tmp_path: Path, name: str, *flags: str, env: dict | None = None) -> subprocess.Popen:
    """One process of this file as a worker; its TMPDIR is private so leftovers are visible.
    `env`: more environment (CALIBRATED_STEP_SECONDS, see _worker_main)."""
    env = {**trainer_env(), **(env or {})}
    env["TMPDIR"] = str(tmp_path / f"tmp_{name}")
    os.makedirs(env["TMPDIR"], exist_ok=True)
    return subprocess.Popen(
        [sys.executable, __file__, str(tmp_path / f"{name}.npz"), *flags], env=env,
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen, timeout: float = WORKER_TIMEOUT) -> tuple[str, str]:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"worker still running after {timeout} s:\n{stderr[-3000:]}")
    assert process.returncode == 0, stderr[-3000:]
    return stdout, stderr


def _cluster(tmp_path: Path, model_dir: Path, data: Path, *extra: str, tag: str = "",
             env: dict | None = None, other_model_dir: Path | None = None):
    """Two workers; `other_model_dir`: worker 1's --model_dir when it is not the chief's
    (model_dir on a filesystem the workers do not share)."""
    hosts = ",".join(f"127.0.0.1:{port}" for port in _free_ports(2))
    model_dirs = (model_dir, other_model_dir or model_dir)
    return [_start(tmp_path, f"worker{index}{tag}", f"--data_dir={data}",
                   f"--model_dir={model_dirs[index]}", *FLAGS, *extra,
                   f"--worker_hosts={hosts}", f"--task_index={index}", env=env)
            for index in range(2)]


def _weights(path: Path) -> list[np.ndarray]:
    with np.load(path) as saved:
        return [saved[f"arr_{index}"] for index in range(len(saved.files))]


def _leftovers(tmpdir: Path) -> list[str]:
    # (autograph also writes its generated code to TMPDIR: not ours to check)
    return [path.name for path in tmpdir.iterdir()
            if path.name.startswith(checkpointing.WORKER_DIR_PREFIX)]


def test_two_workers_match_one_process(tmp_path):
    """Two workers x 1 replica == one process x 2 replicas (MirroredStrategy on two logical
    CPUs) over the same global batch of 8: same data split (first half to worker/replica 0),
    same per-replica batch-norm statistics, same summed gradients. Tolerance: rtol 1e-6 on every
    variable (observed: bit-identical). tests/test_distribution.py covers 2 replicas == 1 device.
    Both run with --train_budget_seconds, their timing reported as 100 s a step: the workers
    time collective steps together, agree on the chief's plan (1,100 s fit 14 steps of the
    cap's 20) and go on from the 4 steps the timing took (inside the 6-step warm-up, so kept);
    the real steps take milliseconds, so past step 7 (half the plan), with 3 loops timed after
    the first (LENGTHEN_TIMED_STEPS=3), all agree at step 8 to lengthen the run to the cap, the
    schedule's rest stretched alike. (What is left of 1,100 s fits 10 steps after the 4 kept
    for any start-up under 100 s.)
    """
    data = tiny_dataset(tmp_path / "data")  # 16 training examples, one shard: split by data
    model_dir = tmp_path / "cluster"
    started = time.monotonic()
    budget = ("--train_budget_seconds=1100", "--train_epochs=10", "--warmup_epochs=3")
    workers = _cluster(tmp_path, model_dir, data, *budget,
                       f"--export_dir={tmp_path / 'export'}", env=TIMED)
    single = _start(tmp_path, "single", f"--data_dir={data}",
                    f"--model_dir={tmp_path / 'single'}", *FLAGS, *budget, "--num_gpus=0",
                    "--num_cpu_replicas=2", env=TIMED)
    outputs = [_finish(process) for process in (*workers, single)]
    for stdout, _ in outputs:
        assert "step 20 (new run, stopped by train_epochs)" in stdout
        assert "2 replica(s)" in stdout
        assert "10.00 epochs in the --train_budget_seconds budget" in stdout
    for folder in (model_dir, tmp_path / "single"):
        entry = json.loads((folder / "config.json").read_text())["budget"]
        assert (entry["kept_steps"], entry["planned_steps"], entry["lengthened_at_step"],
                entry["train_steps"]) == (4, 14, 8, 20)

    chief, other, reference = (_weights(tmp_path / f"{name}.npz")
                               for name in ("worker0", "worker1", "single"))
    assert len(chief) == len(reference) > 80  # every variable, batch-norm statistics included
    for a, b, c in zip(chief, other, reference):
        np.testing.assert_array_equal(a, b)  # the workers agree exactly
        np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-7)

    # Only the chief wrote: config, checkpoints and summaries in model_dir; the other worker's
    # private checkpoint folder is gone.
    written = sorted(path.name for path in model_dir.iterdir())
    assert {"config.json", "checkpoint", "ckpt-20.index", "train", "eval"} <= set(written)
    assert not any(name.startswith(checkpointing.WORKER_DIR_PREFIX) for name in written)
    exports = [path.name for path in (tmp_path / "export").iterdir()]
    assert len(exports) == 1 and exports[0].isdigit(), exports  # the chief's, once
    assert "exported" in outputs[0][0] and "exported" not in outputs[1][0]
    assert _leftovers(tmp_path / "tmp_worker1") == _leftovers(tmp_path / "tmp_worker0") == []

    print(f"two workers + one process, 16 steps: {time.monotonic() - started:.0f} s")


def _lengthened_at(model_dir: Path) -> int | None:
    """config.json's step at which the budget lengthened the run, once the chief wrote it."""
    try:
        return json.loads((model_dir / "config.json").read_text())["budget"].get(
            "lengthened_at_step")
    except (OSError, ValueError, KeyError):
        return None


def test_a_dead_worker_stops_the_other_then_the_restarted_cluster_resumes(tmp_path):
    """A worker dies after the budget lengthened the run; the chief stops with a one-line
    error. The cluster restarts with the other worker's --model_dir elsewhere (not shared):
    it takes the chief's state and the chief's stretched schedule (its own folder has no
    config.json), so both workers take the same step."""
    data = tiny_dataset(tmp_path / "data")
    model_dir = tmp_path / "cluster"
    # The timing reports 100 s a step: 900 s plan ~8 steps, and the real (millisecond)
    # steps lengthen the run once 3 loops after the first are timed (step 4, half the plan),
    # to the cap of 2,000 steps (fewer on a machine so loaded that a step takes ~1 s).
    # A checkpoint every step: the test kills a worker a few steps after the lengthening.
    budget = ("--train_budget_seconds=900", "--train_epochs=1000", "--checkpoint_every_steps=1")
    # A 10-s heartbeat instead of the default 30: the chief notices the death sooner (the
    # test waited ~30 s for it otherwise); still far above a heartbeat's interval under load.
    chief, other = _cluster(tmp_path, model_dir, data, *budget,
                            "--heartbeat_timeout_seconds=10", env=TIMED)
    try:
        deadline = time.monotonic() + WORKER_TIMEOUT
        lengthened_at = None
        while not (lengthened_at and tf.train.latest_checkpoint(str(model_dir))
                   and int(tf.train.latest_checkpoint(str(model_dir)).rsplit("-", 1)[1])
                   > lengthened_at + 2):  # both are in the lengthened part of the run
            assert chief.poll() is None and other.poll() is None, chief.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the cluster never lengthened its run"
            time.sleep(0.2)
            lengthened_at = _lengthened_at(model_dir)
        other.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        try:
            _, stderr = chief.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail("the chief still runs 90 s after its peer died")
        waited = time.monotonic() - killed
    finally:
        for process in (chief, other):
            if process.poll() is None:
                process.kill()
            process.communicate()
    assert chief.returncode == 1
    last = error_lines(stderr)[-1]
    assert last.startswith("dicom_main.py: error: multi-worker training stopped: worker 1 of "
                           "the 2 died, is unreachable or is stuck"), last
    assert f"resume from the last checkpoint in {model_dir}" in last
    assert waited < 60, waited
    print(f"the chief exited {waited:.1f} s after its peer was killed")

    # The whole cluster restarts: the chief restores its last checkpoint and hands the state,
    # the run's length and its stretch to the other worker (whose own folder is empty); one
    # more step, then both stop.
    last = int(tf.train.latest_checkpoint(str(model_dir)).rsplit("-", 1)[1])
    entry = json.loads((model_dir / "config.json").read_text())["budget"]
    assert entry["planned_steps"] < entry["train_steps"] <= 2000, entry
    assert entry["lengthened_at_step"] < last < entry["train_steps"], (entry, last)
    elsewhere = tmp_path / "worker1_own_folder"
    workers = _cluster(tmp_path, model_dir, data, *budget, f"--max_train_steps={last + 1}",
                       tag="_restarted", env=TIMED, other_model_dir=elsewhere)
    for stdout, _ in (_finish(process) for process in workers):
        assert f"step {last + 1} (resumed from {last}, stopped by max_train_steps)" in stdout
    # A learning rate of its own (a 2,000-step plan instead of the chief's stretched one)
    # would make this worker's update differ.
    for a, b in zip(_weights(tmp_path / "worker0_restarted.npz"),
                    _weights(tmp_path / "worker1_restarted.npz")):
        np.testing.assert_array_equal(a, b)
    assert (model_dir / f"ckpt-{last + 1}.index").is_file()
    assert not elsewhere.exists() or not any(elsewhere.iterdir())  # only the chief writes
    assert _leftovers(tmp_path / "tmp_worker1_restarted") == []


def test_each_worker_mirrors_over_its_gpus(tmp_path):
    """dicom_main.py --num_gpus=2 on both workers of a cluster, with 2 GPUs faked visible and
    stopped before training (nothing runs on the absent GPUs): each worker's replicas are its own
    GPU:0 and GPU:1, 4 in sync, and one INFO line lists them."""
    hosts = ",".join(f"127.0.0.1:{port}" for port in _free_ports(2))
    processes = [subprocess.Popen(
        [sys.executable, __file__, "devices", str(tmp_path / f"devices{index}.json"), "2",
         "--use_synthetic_data", f"--model_dir={tmp_path / 'model'}", *FAST_FLAGS,
         "--num_gpus=2", f"--worker_hosts={hosts}", f"--task_index={index}"],
        env=trainer_env(), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for index in range(2)]
    for index, process in enumerate(processes):
        _, stderr = _finish(process)
        devices = [f"/job:worker/replica:0/task:{index}/device:GPU:{gpu}" for gpu in range(2)]
        built = json.loads((tmp_path / f"devices{index}.json").read_text())
        assert built == {"multi_worker": True, "worker_devices": devices, "replicas": 4}
        line = ("MultiWorkerMirroredStrategy: 4 replica(s) in sync; this process's: "
                + ", ".join(devices))
        assert [text for text in stderr.splitlines() if text.endswith(line)], stderr[-3000:]


def test_cluster_parsing_and_input_split(monkeypatch):
    from official.core.train_input import shard_policy
    from official.utils.misc import cluster_config as cc

    raw = cc.tf_config_from_hosts(["10.0.0.1:2222", " 10.0.0.2:2222"], 1)
    assert json.loads(raw) == {"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
                               "task": {"type": "worker", "index": 1}}
    task = cc.parse_tf_config(raw)
    assert (task.num_workers, task.is_chief) == (2, False)
    assert cc.parse_tf_config(json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1"]},
                                          "task": {"type": "chief", "index": 0}})).is_chief
    assert cc.parse_tf_config("  ") is None
    bad = {"worker list": (["a:1"], 1, "--task_index=1: must be in 0-0"),
           "no hosts": ([], 0, "--worker_hosts: give a comma-separated list")}
    for hosts, index, message in bad.values():
        with pytest.raises(ValueError, match=message):
            cc.tf_config_from_hosts(hosts, index)
    for config, message in [
            ({"cluster": {"ps": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker"}},
             "cluster job 'ps' is not supported"),
            ({"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker"}},
             "address a:1 is listed twice"),
            ({"cluster": {"worker": ["a:99999"]}, "task": {"type": "worker"}},
             "port in 1-65535"),
            ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}},
             r"task worker:2 is not in its cluster \(worker:0-1\)"),
            ({"task": {"type": "worker"}}, "needs a \"cluster\" and a \"task\"")]:
        with pytest.raises(ValueError, match=message):
            cc.parse_tf_config(json.dumps(config))
    monkeypatch.setenv("TF_CONFIG", raw)
    assert cc.resolve_cluster().task_index == 1
    with pytest.raises(ValueError, match="--worker_hosts and the TF_CONFIG environment"):
        cc.resolve_cluster(["a:1", "b:1"], 0)
    monkeypatch.delenv("TF_CONFIG")
    assert cc.resolve_cluster() is None
    with pytest.raises(ValueError, match="--task_index=1 needs --worker_hosts"):
        cc.resolve_cluster(None, 1)
    with pytest.raises(ValueError, match="--task_index=0 needs --worker_hosts"):
        cc.resolve_cluster(None, 0)  # it was ignored without a word
    with pytest.raises(ValueError, match="^--worker_hosts needs --task_index: this host's"):
        cc.resolve_cluster(["a:1", "b:1"], None)  # it said "--task_index=None: must be in 0-1"
    Policy = tf.data.experimental.AutoShardPolicy
    assert shard_policy(num_files=1, num_workers=1) == Policy.OFF
    assert shard_policy(num_files=4, num_workers=2) == Policy.FILE
    assert shard_policy(num_files=1, num_workers=2) == Policy.DATA


def _worker_main(argv: list[str]) -> None:
    """`python tests/test_multiworker.py WEIGHTS.npz DICOM_MAIN_FLAGS...`: dicom_main.py, then
    this worker's final model variables saved to WEIGHTS.npz. With CALIBRATED_STEP_SECONDS
    in the environment, the budget's timing (its steps really trained) reports that speed;
    LENGTHEN_TIMED_STEPS and CALIBRATION_STEPS replace budget's constants of those names."""
    sys.path.insert(0, str(REPO_ROOT))
    from networks.resnet import dicom_main, train_steps
    from official.core import budget
    from official.utils.flags import core as flags_core

    if os.environ.get("CALIBRATED_STEP_SECONDS"):
        calibrate = budget.calibrate

        def reported(*args):
            measured = calibrate(*args)
            return budget.Calibration(float(os.environ["CALIBRATED_STEP_SECONDS"]), 0.0,
                                      measured.timed_steps, measured.steps_taken)

        budget.calibrate = reported
    if os.environ.get("LENGTHEN_TIMED_STEPS"):
        budget.LENGTHEN_TIMED_STEPS = int(os.environ["LENGTHEN_TIMED_STEPS"])
    if os.environ.get("CALIBRATION_STEPS"):
        budget.CALIBRATION_STEPS = int(os.environ["CALIBRATION_STEPS"])

    states = []
    build = train_steps.ResNetNetwork.build_training_state

    def capture(*args, **kwargs):
        states.append(build(*args, **kwargs))
        return states[-1]

    train_steps.ResNetNetwork.build_training_state = capture
    flags_core.define_flags()
    from official.utils import cli

    cli.flags_parser("dicom_main.py")([argv[0], *argv[2:]])
    dicom_main.main([argv[0]])
    # The last state built is the run's (with --train_budget_seconds the first one is timed).
    np.savez(argv[1], *[np.asarray(variable.numpy()) for variable in states[-1].model.variables])


class _StrategyBuilt(Exception):
    """Raised by the patched trainer once dicom_main.py has built its strategy."""


def _devices_main(argv: list[str]) -> None:
    """`python tests/test_multiworker.py devices OUT.json VISIBLE_GPUS DICOM_MAIN_FLAGS...`:
    dicom_main.py's flag parsing and strategy with VISIBLE_GPUS GPUs faked visible, stopped
    before training; whether the strategy is multi-worker, and its replicas, go to OUT.json."""
    sys.path.insert(0, str(REPO_ROOT))
    from absl import app

    from networks.resnet import dicom_main
    from official.core import train_lib
    from official.utils import cli
    from official.utils.flags import core as flags_core
    from official.utils.misc import distribution_utils

    out, visible = Path(argv[2]), int(argv[3])
    distribution_utils.visible_gpu_count = lambda: visible

    def stop(config, strategy, network):
        out.write_text(json.dumps({
            "multi_worker": isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy),
            "worker_devices": list(strategy.extended.worker_devices),
            "replicas": strategy.num_replicas_in_sync}))
        raise _StrategyBuilt

    train_lib.train = stop
    flags_core.define_flags()
    try:  # app.run, as dicom_main.py's own __main__: absl's INFO lines go to stderr
        app.run(dicom_main.main, argv=[argv[0], *argv[4:]],
                flags_parser=cli.flags_parser("dicom_main.py"))
    except _StrategyBuilt:
        pass


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if sys.argv[1] == "devices":
        _devices_main(sys.argv)
    else:
        _worker_main(sys.argv)
