"""A cluster's edges, as a user meets them: a SIGTERM, a peer that never starts, a port in
use, a killed worker's leftovers, a malformed cluster. Each ends in one line and leaves
nothing behind. The cluster's training itself is in tests/test_multiworker.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import tensorflow as tf

from official.core import checkpointing
from tests.test_multiworker import FLAGS, WORKER_TIMEOUT, _free_ports, _leftovers
from tests.trainer_fixtures import (DICOM_MAIN, FAST_FLAGS, REPO_ROOT, error_lines,
                                    tiny_dataset, trainer_env)


def test_sigterm_stops_a_worker_as_it_stops_one_machine(tmp_path):
    """SIGTERM (a scheduler, `kill`) ends a worker with its one line and exit 143, and the
    chief with the cluster error. TensorFlow's coordination service installs a SIGTERM
    handler of its own that ignores the signal: the worker trained on to the end, exit 0."""
    data = tiny_dataset(tmp_path / "data")
    model_dir = tmp_path / "cluster"
    hosts = ",".join(f"127.0.0.1:{port}" for port in _free_ports(2))
    env = trainer_env()
    env.pop("TF_CONFIG", None)
    env["TMPDIR"] = str(tmp_path)
    chief, other = [subprocess.Popen(
        [sys.executable, str(DICOM_MAIN), f"--data_dir={data}", f"--model_dir={model_dir}",
         *FLAGS, "--train_epochs=1000", "--checkpoint_every_steps=1",
         "--heartbeat_timeout_seconds=10", f"--worker_hosts={hosts}", f"--task_index={index}"],
        env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for index in range(2)]
    try:
        deadline = time.monotonic() + WORKER_TIMEOUT
        while not tf.train.latest_checkpoint(str(model_dir)):  # both are training
            assert chief.poll() is None and other.poll() is None, chief.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the cluster never saved a checkpoint"
            time.sleep(0.2)
        other.send_signal(signal.SIGTERM)
        try:
            _, other_stderr = other.communicate(timeout=60)
            _, chief_stderr = chief.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail("a worker still runs long after SIGTERM")
    finally:
        for process in (chief, other):
            if process.poll() is None:
                process.kill()
            process.communicate()
    assert other.returncode == 143, other_stderr[-3000:]
    assert error_lines(other_stderr)[-1].startswith("dicom_main.py: error: terminated (SIGTERM)")
    assert chief.returncode == 1, chief_stderr[-3000:]
    assert "worker 1 of the 2 died" in error_lines(chief_stderr)[-1]
    assert _leftovers(tmp_path) == []  # the stopped worker removed its private folder


def _worker_0_strategy(hosts: list[str]) -> subprocess.CompletedProcess:
    """Worker 0 of `hosts` makes its strategy (a 5-s startup timeout) in a fresh process,
    alone; its ConnectionError is one `error:` line, with absl's INFO lines on stderr."""
    script = ("import sys; sys.path.insert(0, sys.argv[1])\n"
              "from absl import logging\n"
              "logging.use_absl_handler(); logging.set_verbosity('info')\n"
              "from official.utils.misc import cluster_config as cc\n"
              "from official.utils.misc import distribution_utils as du\n"
              "task = cc.parse_tf_config(cc.tf_config_from_hosts(sys.argv[2].split(','), 0))\n"
              "try:\n"
              "    du.multi_worker_strategy(task, 0, startup_timeout_seconds=5)\n"
              "except ConnectionError as error:\n"
              "    sys.exit(f'error: {error}')\n")
    env = trainer_env()
    env.pop("TF_CONFIG", None)
    return subprocess.run([sys.executable, "-c", script, str(REPO_ROOT), ",".join(hosts)],
                          capture_output=True, text=True, env=env, timeout=60)


def test_a_worker_whose_peer_never_starts_stops_at_the_startup_timeout(tmp_path):
    """Only the chief of two is started: it says it waits, and stops with one line at the
    startup timeout (5 s here). It waited in silence for ever (TensorFlow's wait for every
    task ignored cluster_register_timeout), deaf to Ctrl-C and SIGTERM: only SIGKILL ended it."""
    from official.utils.misc import distribution_utils as du

    hosts = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    started = time.monotonic()
    try:
        result = _worker_0_strategy(hosts)
    except subprocess.TimeoutExpired:
        pytest.fail("a lone worker still waits 60 s after a 5-s startup timeout")
    assert result.returncode == 1, result.stderr[-3000:]
    assert time.monotonic() - started < 50
    assert error_lines(result.stderr)[-1] == (
        f"error: multi-worker training could not start: worker 1 of the 2 ({hosts[1]}) did "
        "not join within 5 s; start every worker with the same cluster and flags"), \
        result.stderr[-3000:]
    waiting = [line for line in result.stderr.splitlines()
               if line.endswith(f"waiting up to 5 s for the 2 workers to join: {', '.join(hosts)}")]
    assert waiting, result.stderr[-3000:]
    assert du.DEFAULT_STARTUP_TIMEOUT_SECONDS == 600


def test_ctrl_c_ends_a_workers_wait_for_its_peers_at_once():
    """Ctrl-C while a worker waits for a peer that never starts: it ends at once (exit by
    SIGINT, 130 in a shell). TensorFlow waits holding the interpreter's lock, so the Ctrl-C
    was handled only at the end of the startup timeout (600 s by default)."""
    hosts = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    script = ("import signal, sys; sys.path.insert(0, sys.argv[1])\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal\n"
              "from absl import logging\n"
              "logging.use_absl_handler(); logging.set_verbosity('info')\n"
              "from official.utils.misc import cluster_config as cc\n"
              "from official.utils.misc import distribution_utils as du\n"
              "task = cc.parse_tf_config(cc.tf_config_from_hosts(sys.argv[2].split(','), 0))\n"
              "du.multi_worker_strategy(task, 0, startup_timeout_seconds=120)\n")
    env = trainer_env()
    env.pop("TF_CONFIG", None)
    worker = subprocess.Popen([sys.executable, "-c", script, str(REPO_ROOT), ",".join(hosts)],
                              stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in worker.stderr:  # up to the line logged just before TensorFlow waits
            if "waiting up to 120 s for the 2 workers to join" in line:
                break
        time.sleep(3)  # inside TensorFlow's wait
        assert worker.poll() is None
        worker.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("a worker waiting for its peers still runs 20 s after Ctrl-C")
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.communicate()
    assert worker.returncode == -signal.SIGINT
    assert time.monotonic() - interrupted < 20


def test_the_startup_wait_puts_ctrl_c_back_as_it_was():
    """As in a terminal, Ctrl-C's handler is Python's; a background job's Ctrl-C is ignored,
    and stays so (the suite itself may run as one)."""
    from official.utils.misc import distribution_utils as du

    outside = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with du._signals_for_the_wait():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(RuntimeError):
            with du._signals_for_the_wait():
                raise RuntimeError("the wait failed")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with du._signals_for_the_wait():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, outside)


def test_a_worker_whose_address_is_taken_says_so_in_one_line(tmp_path):
    """Worker 0's port already in use: one line naming its address (TensorFlow's "Could not
    start gRPC server" was a traceback)."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        hosts = [f"127.0.0.1:{busy.getsockname()[1]}", f"127.0.0.1:{_free_ports(1)[0]}"]
        result = _worker_0_strategy(hosts)
    finally:
        busy.close()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert error_lines(result.stderr)[-1] == (
        f"error: multi-worker training could not start: worker 0's address {hosts[0]} is in "
        "use or cannot be bound; free its port or give another")


def test_a_killed_workers_private_folder_is_removed_by_the_next_worker(tmp_path, monkeypatch):
    """A non-chief worker killed by SIGKILL (or the out-of-memory killer) cannot remove its
    private folder, a full checkpoint (86 MB for a ResNet-18): the next worker on the machine
    removes it; a live worker's, another host's and one of the older unnamed kind stay."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    dead = tmp_path / f"{checkpointing.WORKER_DIR_PREFIX}{gone.pid}@{host}_abc"
    alive = tmp_path / f"{checkpointing.WORKER_DIR_PREFIX}{os.getppid()}@{host}_def"
    # The same pid on another machine (a temporary folder shared between hosts): its process
    # cannot be seen from here.
    elsewhere = tmp_path / f"{checkpointing.WORKER_DIR_PREFIX}{gone.pid}@{host}x_ghi"
    unnamed = tmp_path / f"{checkpointing.WORKER_DIR_PREFIX}x1y2z3"
    for folder in (dead, alive, elsewhere, unnamed):
        folder.mkdir()
        (folder / "ckpt-1.index").write_bytes(b"x")
    made = Path(checkpointing.worker_folder())
    assert not dead.exists() and alive.is_dir() and elsewhere.is_dir() and unnamed.is_dir()
    assert made.parent == tmp_path and made.name.startswith(
        f"{checkpointing.WORKER_DIR_PREFIX}{os.getpid()}@{host}_")


@pytest.mark.parametrize("tf_config, flags, message", [
    ("{not json", (), "TF_CONFIG is malformed: not JSON"),
    (None, ("--worker_hosts=127.0.0.1:1,127.0.0.1:http", "--task_index=0"),
     "--worker_hosts cluster.worker: address '127.0.0.1:http' is not 'host:port'"),
])
def test_bad_cluster_is_one_line_error(tmp_path, tf_config, flags, message):
    env = trainer_env(without_tensorflow=True)  # said before TensorFlow's import
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = tf_config
    result = subprocess.run(
        [sys.executable, str(DICOM_MAIN), "--use_synthetic_data", f"--model_dir={tmp_path}",
         *FAST_FLAGS, *flags], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
        timeout=WORKER_TIMEOUT)
    assert result.returncode == 1
    assert error_lines(result.stderr) == [f"dicom_main.py: error: {message}"] or \
        error_lines(result.stderr)[-1].startswith(f"dicom_main.py: error: {message}"), \
        result.stderr[-2000:]
    assert "Traceback" not in result.stderr
