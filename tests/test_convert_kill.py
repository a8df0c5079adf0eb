"""SIGKILL of tf_convert_data.py at random moments never leaves complete-looking partial output."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import weakref

import pytest

from dataset import converted
from tests.conftest import REPO_ROOT
from tests.test_convert import convert, make_class_folders, output_bytes

TRIALS = 10


def _check_invariant(output_dir, reference: dict[str, bytes]) -> str:
    """Either a complete output identical to the reference, or one the reader refuses."""
    manifest_path = output_dir / "manifest.json"
    if not manifest_path.exists():
        with pytest.raises(FileNotFoundError):
            converted.read_manifest(str(output_dir))
        return "no manifest"
    manifest = converted.read_manifest(str(output_dir))
    for info in manifest["splits"].values():
        for entry in info["files"]:
            data = (output_dir / entry["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["path"]
            assert data == reference[entry["path"]]
    assert manifest_path.read_bytes() == reference["manifest.json"]
    return "complete"


def _wait_until(condition, process, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None and not condition():
        time.sleep(0.001)


def _writing(output_dir) -> bool:
    return any(any(staging.glob("*.part*")) for staging in output_dir.glob(".convert-staging-*"))


def test_sigkill_at_random_points_then_clean_rerun(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"A": 120, "B": 120}, size=24)
    output_dir = tmp_path / "out"
    flags = dict(need_split="tvt_split", shard_size_mb=0.01, num_workers=2)
    convert(root, output_dir, **flags)  # the reference: what every rerun must reproduce
    reference = output_bytes(output_dir)
    assert sum(name.endswith(".tfrecord") for name in reference) > 12  # a long commit phase
    command = [sys.executable, "tf_convert_data.py", "--dataset_name=test", f"--dataset_dir={root}",
               f"--output_dir={output_dir}", "--need_split=tvt_split",
               "--shard_size_mb=0.01", "--num_workers=2"]
    rng = random.Random(1234)
    outcomes = []
    for trial in range(TRIALS):
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        if trial % 3 == 0:  # anywhere, start-up and validation included
            time.sleep(rng.uniform(0.0, 3.0))
        elif trial % 3 == 1:  # while shards are written
            _wait_until(lambda: _writing(output_dir), process)
            time.sleep(rng.uniform(0.0, 0.3))
        else:  # during the commit: old manifest gone, shards being renamed
            _wait_until(lambda: _writing(output_dir)
                        and not (output_dir / "manifest.json").exists(), process)
            time.sleep(rng.uniform(0.0, 0.02))
        finished = process.poll() is not None
        if not finished:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        outcomes.append(("finished " if finished else "killed ")
                        + _check_invariant(output_dir, reference))
        if trial % 4 == 3:  # a clean rerun after some of the kills (in-process: fast)
            convert(root, output_dir, **flags)
            assert output_bytes(output_dir) == reference
    convert(root, output_dir, **flags)
    assert output_bytes(output_dir) == reference
    assert not list(output_dir.glob(".convert-staging-*"))
    assert any(o.startswith("killed") for o in outcomes), outcomes
    print(json.dumps(outcomes))


@pytest.fixture(autouse=True)
def _stacks_of_a_hang(monkeypatch):
    """Every process started here dumps its threads' stacks on SIGABRT (faulthandler), so a
    hang says where it hangs (one group Ctrl-C in the whole suite's runs hung, 2026-12-06)."""
    monkeypatch.setenv("PYTHONFAULTHANDLER", "1")


def _communicate_or_fail(process: subprocess.Popen, timeout: float, after: str):
    """(stdout, stderr) of a process in its own session; one still running `timeout` s
    after the signal is dumped (its and its workers' stacks), killed with its workers, and
    the test fails with the dump."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGABRT)
        try:
            _, stderr = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            stderr = None
        with contextlib.suppress(ProcessLookupError):  # (every process ended by the abort)
            os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"still running {timeout} s after {after}; the stacks (SIGABRT):\n"
                    f"{(stderr or '(none on a pipe)')[-8000:]}")


def test_pool_workers_leave_ctrl_c_to_the_parent():
    from dataset.workers import WorkerPool

    pool = WorkerPool(2, int, ())
    try:
        dispositions = list(pool.imap(signal.getsignal, [signal.SIGINT, signal.SIGTERM] * 2,
                                      chunksize=1))
    finally:
        pool.close()
    # SIGTERM keeps its default: the pool's terminate() stops the workers with it.
    assert dispositions == [signal.SIG_IGN, signal.SIG_DFL] * 2


def test_a_ctrl_c_while_the_pool_waits_for_a_result_is_raised_outside_its_locks():
    """A Ctrl-C raised inside the wait for a result can leave multiprocessing's result lock
    held (a Condition's __enter__ that took its lock and was then interrupted: CPython does
    not run the __exit__), and close() then waited for ever for the task handler blocked on
    it (once in the suite, under load). It is raised after the wait, in the pool's code, as
    promptly (the wait is 0.25 s at most)."""
    program = ("import os, signal, threading, time, traceback\n"
               "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
               "from dataset.workers import WorkerPool\n"
               "pool = WorkerPool(2, int, ())\n"
               "threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()\n"
               "start = time.monotonic()\n"
               "try:\n"
               "    list(pool.imap(time.sleep, [30], chunksize=1))\n"
               "except KeyboardInterrupt as stop:\n"
               "    print(traceback.extract_tb(stop.__traceback__)[-1].filename)\n"
               "    print(time.monotonic() - start)\n"
               "finally:\n"
               "    pool.close()\n")
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    raised_in, seconds = result.stdout.split()
    assert raised_in == str(REPO_ROOT / "dataset" / "workers.py"), raised_in
    assert 0.5 <= float(seconds) < 2.0


def test_workers_stopped_while_they_start_say_nothing():
    """A forked worker inherits the converter's SIGTERM handler until it resets it; the pool's
    terminate() in that window (a conversion failing at once) raised it in the worker's
    start-up: a traceback per worker (seen once in a full suite; 2-8 pools in 150 here), and
    in 400 pools a terminate() that never finished (this test's timeout). A fresh process:
    with TensorFlow imported (as in this one) the pool spawns instead."""
    program = ("from official.utils import cli\n"
               "from dataset.workers import WorkerPool\n"
               "cli.stop_on_sigterm()\n"
               "for _ in range(400):\n"
               "    WorkerPool(2, int, ()).close()\n")
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]


def test_a_ctrl_c_while_pools_start_and_stop_says_nothing_and_exits():
    """Ctrl-C reaches the workers too. Sent while a pool's workers were starting or stopping,
    it raised in a worker before it ignored SIGINT (a traceback per worker), or inside the
    pool's own set-up or terminate(), and the process then hung at exit: 14 of 30 tries
    here (the interrupt 0.3-0.6 s into a loop that makes and stops pools)."""
    program = ("import signal\n"
               "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
               "from dataset.workers import WorkerPool\n"
               "print('ready', flush=True)\n"
               "try:\n"
               "    while True:\n"
               "        WorkerPool(2, int, ()).close()\n"
               "except KeyboardInterrupt:\n"
               "    print('interrupted')\n")
    for attempt in range(12):
        process = subprocess.Popen([sys.executable, "-c", program], cwd=REPO_ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        assert process.stdout.readline() == "ready\n"
        time.sleep(0.1 + attempt % 6 * 0.05)
        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = _communicate_or_fail(process, 30, f"a Ctrl-C (try {attempt + 1})")
        assert (process.returncode, stdout, stderr) == (0, "interrupted\n", ""), stderr[-2000:]


def test_a_closed_pool_is_collected_before_close_returns():
    """The pool's finalizers and its pipes' __del__ run when it is collected; a Ctrl-C landing
    in one of them is printed as "Exception ignored in ..." and lost, and the program goes
    on (a loop of pools then ran on after its Ctrl-C, from pytest about once in 100). So
    close() collects it while the signals are held."""
    from dataset.workers import WorkerPool

    pool = WorkerPool(2, int, ())
    collected = weakref.ref(pool._pool)
    pool.close()
    assert collected() is None
    pool.close()  # twice is harmless (an error path closes, then its caller)


def test_the_converter_starts_no_thread_beside_its_pool(tmp_path):
    """A signal reaches any thread that does not block it: a second thread (tqdm's monitor,
    started by the progress bar) let a Ctrl-C through the pool's signal hold, and 13 of 40
    Ctrl-Cs into a loop of pools beside such a thread hung."""
    root = make_class_folders(tmp_path / "ds", {"A": 4, "B": 4}, size=16)
    program = ("import threading\n"
               "from dataset.convert import ConvertConfig, convert_dataset\n"
               f"convert_dataset(ConvertConfig(dataset_name='t', dataset_dir={str(root)!r}, "
               f"output_dir={str(tmp_path / 'out')!r}, output_name='all', num_workers=2))\n"
               "print([thread.name for thread in threading.enumerate()])\n"
               "import tqdm; print(tqdm.tqdm.monitor_interval)\n")
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    # tqdm's own setting is left to the program's other progress bars.
    assert result.stdout.split() == ["['MainThread']", "10"]


@pytest.mark.parametrize("stop, status, what", [
    # Ctrl-C signals the whole process group, workers included.
    ("group SIGINT", 130, "interrupted"),
    # A scheduler's or `kill`'s stop: the converter alone; its default ended it at once,
    # leaving the staging folder and saying nothing.
    ("SIGTERM", 143, "terminated (SIGTERM)"),
])
def test_a_stop_while_shards_are_written_is_one_line(tmp_path, stop, status, what):
    """Ctrl-C once hung the converter (a worker interrupted mid-send left half a message for
    the pool's terminate() to wait on) and printed a traceback per process; now only the
    parent takes it."""
    root = make_class_folders(tmp_path / "ds", {"A": 400, "B": 400}, size=24)
    output_dir = tmp_path / "out"
    command = [sys.executable, "tf_convert_data.py", "--dataset_name=test", f"--dataset_dir={root}",
               f"--output_dir={output_dir}", "--need_split=tvt_split",
               "--shard_size_mb=0.01", "--num_workers=2"]
    interrupted = 0
    for _ in range(4):
        # A terminal's Ctrl-C reaches a process whose SIGINT is not ignored; a test runner's
        # worker may ignore it, and children inherit that.
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        # Once the staging folder exists the workers are encoding and sending results: the
        # moment that hung.
        _wait_until(lambda: any(output_dir.glob(".convert-staging-*")), process)
        if process.poll() is None:
            if stop == "SIGTERM":
                process.terminate()
            else:
                os.killpg(process.pid, signal.SIGINT)
        _, stderr = _communicate_or_fail(process, 60, stop)
        if process.returncode == 0:  # finished before the signal: nothing to check
            continue
        interrupted += 1
        assert process.returncode == status, stderr[-2000:]
        assert stderr.splitlines() == [
            f"error: {what}; the conversion into {output_dir} did not finish (rerun it; a "
            "folder without its manifest.json is never read as a dataset)"]
        assert not list(output_dir.glob(".convert-staging-*"))
        assert not (output_dir / "manifest.json").exists()
        if output_dir.exists():
            shutil.rmtree(output_dir)
    assert interrupted, f"every run finished before its {stop}"


def test_a_worker_killed_mid_task_is_reported_not_waited_for():
    """multiprocessing.Pool replaces a worker that dies but loses its task: the map then
    waited for that result forever (a worker SIGKILLed mid-task, as the out-of-memory killer
    does, hung the converter)."""
    from dataset.workers import WorkerLost, WorkerPool

    pool = WorkerPool(2, int, ())
    try:
        started = time.monotonic()
        with pytest.raises(WorkerLost, match="out-of-memory killer"):
            list(pool.imap(signal.raise_signal, [signal.SIGKILL], chunksize=1))
        assert time.monotonic() - started < 20
    finally:
        pool.close()


def _lost_then_closed(program: str, what: str) -> None:
    """Runs ``program`` (a pool whose worker dies, then closed), which must print "lost" and
    "closed" and exit 0 within 60 s."""
    process = subprocess.Popen([sys.executable, "-c", program], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    stdout, stderr = _communicate_or_fail(process, 60, what)
    assert (process.returncode, stdout) == (0, "lost\nclosed\n"), stderr[-2000:]


def test_a_worker_killed_while_idle_does_not_hang_the_pools_close():
    """An idle worker waits for its next task holding the task queue's read lock; killed
    then, it never releases it, and Pool.terminate(), which takes that lock first, waited
    forever (a converter whose worker was SIGKILLed between files hung, deaf to Ctrl-C and
    SIGTERM). Every worker is killed while idle, so one of them held the lock."""
    program = ("import os, signal, sys, time\n"
               "from dataset.workers import WorkerLost, WorkerPool\n"
               "pool = WorkerPool(2, int, ())\n"
               "time.sleep(1)\n"  # both workers started and waiting for a task
               "for worker in pool._pool._pool:\n"
               "    os.kill(worker.pid, signal.SIGKILL)\n"
               "try:\n"
               "    list(pool.imap(abs, [1, 2, 3], chunksize=1))\n"
               "except WorkerLost:\n"
               "    print('lost', flush=True)\n"
               "pool.close()\n"
               "print('closed', flush=True)\n")
    _lost_then_closed(program, "its workers were killed while idle")


def test_a_death_while_the_others_send_results_does_not_hang_the_pools_close():
    """After a death, close() kills the live workers before terminate(): one killed half-way
    through sending a big result left the result queue's write lock taken and half a message
    in its pipe, and terminate() waited for ever (a review's reproduction: 10 hangs in 10
    with these sizes). Three workers, one killing itself at task 6, the others returning
    5 MB each; the liveness check every 0.05 s closes the pool while they send."""
    program = ("import os, signal, time\n"
               "from dataset import workers\n"
               "workers._LIVENESS_SECONDS = 0.05\n"
               "def work(index):\n"
               "    if index == 6:\n"
               "        os.kill(os.getpid(), signal.SIGKILL)\n"
               "    time.sleep(0.002)\n"
               "    return b'r' * 5_000_000\n"
               "pool = workers.WorkerPool(3, int, ())\n"
               "try:\n"
               "    for _ in pool.imap(work, list(range(400)), chunksize=1):\n"
               "        pass\n"
               "except workers.WorkerLost:\n"
               "    print('lost', flush=True)\n"
               "pool.close()\n"
               "print('closed', flush=True)\n")
    _lost_then_closed(program, "a worker died while others sent")


def test_the_converter_says_a_worker_died_and_writes_nothing(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"A": 40, "B": 40}, size=16)
    output_dir = tmp_path / "out"
    # Forked workers (no TensorFlow in this program) run the patched task: it kills its
    # worker at one file, after other chunks were written.
    program = ("import os, signal, sys\n"
               "from absl import app\n"
               "import dataset.convert, tf_convert_data\n"
               "from official.utils import cli\n"
               "real = dataset.convert.encode_chunk\n"
               "def dying(chunk):\n"
               "    if any(task.relpath.endswith('b0030.png') for task in chunk):\n"
               "        os.kill(os.getpid(), signal.SIGKILL)\n"
               "    return real(chunk)\n"
               "dataset.convert.encode_chunk = dying\n"
               "app.run(tf_convert_data.main,"
               " flags_parser=cli.flags_parser(tf_convert_data.PROGRAM))\n")
    process = subprocess.Popen(
        [sys.executable, "-c", program, "--dataset_name=test", f"--dataset_dir={root}",
         f"--output_dir={output_dir}", "--need_split=tt_split", "--num_workers=2"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    _, stderr = _communicate_or_fail(process, 60, "a worker's death")
    assert process.returncode == 1, stderr[-2000:]
    assert stderr.splitlines() == [(
        "error: a worker process ended before finishing its task (killed, e.g. by the "
        "out-of-memory killer; if memory ran out, try fewer --num_workers); the conversion "
        f"into {output_dir} did not finish (a folder without its manifest.json is never read "
        "as a dataset)")], stderr[-2000:]
    assert not output_dir.exists()  # made by this run, removed with its staging folder
