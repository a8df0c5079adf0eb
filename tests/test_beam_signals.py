"""tf_convert_data.py --runner=beam stopped by a signal (dataset.beam_convert, dataset.beam_workers):
a Ctrl-C or SIGTERM at any moment of the run ends it in one line with nothing written and no
Beam worker left running. tests/test_beam.py compares the runs themselves with the local
converter's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dataset import beam_convert, beam_pipeline
from tests.conftest import REPO_ROOT
from tests.test_convert_kill import _communicate_or_fail

if beam_pipeline.beam is None:  # dataset.beam_pipeline itself imports without Beam
    pytest.skip("needs apache-beam (pip install -r requirements-beam.txt)",
                allow_module_level=True)


def test_local_workers_write_into_the_log_and_an_interrupt_quiets_beam(tmp_path, capfd):
    """What Beam's local workers print goes to the log, as does, after a Ctrl-C (which a
    terminal sends them too), the traceback each printed and the runner's threads' reports
    of their ends (100 lines above the one that says what happened)."""
    log = tmp_path / "workers.log"
    beam_logger = logging.getLogger("apache_beam")
    level = beam_logger.level
    try:
        with pytest.raises(KeyboardInterrupt):
            with beam_convert._stderr_to(str(log)):
                subprocess.run([sys.executable, "-c",
                                "import sys; sys.stderr.write('a worker line\\n')"], check=True)
                raise KeyboardInterrupt
        assert beam_logger.getEffectiveLevel() > logging.CRITICAL
    finally:
        beam_logger.setLevel(level)
    assert log.read_text() == "a worker line\n"
    sys.stderr.write("after\n")  # file descriptor 2 is this process's again
    assert capfd.readouterr().err == "after\n"


def _a_thread_that_takes_ctrl_c(pid: int) -> int:
    """A thread of process ``pid`` other than its main one that does not block SIGINT."""
    for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
        status = dict(line.split(":", 1) for line in (task / "status").read_text().splitlines())
        if int(task.name) != pid and not int(status["SigBlk"], 16) & 1 << signal.SIGINT - 1:
            return int(task.name)
    raise AssertionError(f"no thread of {pid} takes SIGINT")


def _as_in_a_terminal() -> None:
    """Ctrl-C's default action and no signal blocked, as a program started from a terminal
    has: a test runner started in the background ignores SIGINT, and its children inherit
    that (the converter would then ignore the Ctrl-C this test sends)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _beam_converter(tmp_path, root, sitecustomize_dir) -> subprocess.Popen:
    """tf_convert_data.py --runner=beam from ``root`` into tmp_path/out, started as a terminal
    starts a program, with ``sitecustomize_dir`` first on the path: Beam's worker processes
    run its sitecustomize.py."""
    return subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "tf_convert_data.py"), f"--dataset_dir={root}",
         f"--output_dir={tmp_path / 'out'}", "--need_split=None", "--output_name=all",
         "--runner=beam", "--num_workers=2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=f"{sitecustomize_dir}{os.pathsep}{REPO_ROOT}",
                 PYTHONFAULTHANDLER="1"),  # a hang's stacks, on SIGABRT
        start_new_session=True, preexec_fn=_as_in_a_terminal)


def _wait_for_markers(folder, process, never: str) -> None:
    """Until two marker files are in ``folder`` (written by the sitecustomize of Beam's two
    workers), the converter still running; ``never``: the failure after 120 s."""
    deadline = time.monotonic() + 120
    while len(list(folder.iterdir())) < 2 and process.poll() is None:
        assert time.monotonic() < deadline, never
        time.sleep(0.02)
    assert process.poll() is None, process.communicate()[1][-3000:]


def _running(folder) -> tuple[list[int], list[int]]:
    """(the pids named by the files in ``folder``, those of them still running): a zombie
    has ended, waiting to be reaped."""
    pids = [int(path.name) for path in folder.iterdir()]
    return pids, [pid for pid in pids if Path(f"/proc/{pid}").exists() and Path(
        f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]


def _stopped_run_ends_cleanly(process, tmp_path, markers, started, never: str, stop,
                              status: int, what: str) -> None:
    """Once ``markers`` holds two marker files, ``stop(process)``; then the converter ends
    within 20 s with ``status`` and one line (``what``), no output folder, and every Beam
    worker named in ``started`` ended, not orphaned (a zombie until reaped)."""
    try:
        _wait_for_markers(markers, process, never)
        stop(process)
        _, stderr = _communicate_or_fail(process, 20, what)
        # Checked before the clean-up below kills whatever is left of the process group.
        workers, left = _running(started)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == status, stderr[-3000:]
    assert stderr.splitlines() == [f"error: {what}; the conversion into {tmp_path / 'out'} "
                                   "did not finish (rerun it; a folder without its "
                                   "manifest.json is never read as a dataset)"]
    assert not (tmp_path / "out").exists()
    assert workers and not left, (workers, left)


def _slow_to_start(tmp_path) -> tuple[Path, Path]:
    """(a folder whose sitecustomize.py makes each of Beam's workers write a marker file
    named by its pid, then take a minute to start, ignoring Ctrl-C meanwhile; the folder
    of those markers). Only Beam's workers run it: the converter is left as it is."""
    started = tmp_path / "started"
    started.mkdir()
    slow = tmp_path / "slow-workers"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(
        "import os, signal, time\n"
        "if 'CONTROL_API_SERVICE_DESCRIPTOR' in os.environ:  # a Beam worker\n"
        "    signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        f"    open(os.path.join({str(started)!r}, str(os.getpid())), 'w').close()\n"
        "    time.sleep(60)\n"
        "    signal.signal(signal.SIGINT, signal.default_int_handler)\n")
    return slow, started


@pytest.mark.parametrize("sent_to", ["group", "thread"])
def test_one_ctrl_c_while_beam_workers_start_ends_the_run(tmp_path, make_images_labels_dataset,
                                                          sent_to):
    """1 in ~35 group Ctrl-Cs hung until a second one, two ways (dataset.beam_workers): a
    Beam worker survived the Ctrl-C mid-start-up and connected after Beam's shutdown had
    closed its connection ("group"), or the signal reached a thread other than the main one,
    which waited for results without a timeout and never ran the handler ("thread", sent
    here to one such thread only). Here Beam's workers take a minute to start and ignore
    Ctrl-C meanwhile (sitecustomize, in Beam's workers only): without the fix both hang."""
    root = make_images_labels_dataset({"Chest": 2, "Hand": 2}, size=20)
    slow, started = _slow_to_start(tmp_path)
    process = _beam_converter(tmp_path, root, slow)

    def ctrl_c(process):
        if sent_to == "group":
            os.killpg(process.pid, signal.SIGINT)
        else:  # kill() prefers the thread named, if it takes the signal
            os.kill(_a_thread_that_takes_ctrl_c(process.pid), signal.SIGINT)

    _stopped_run_ends_cleanly(process, tmp_path, started, started,
                              "Beam's workers never started", ctrl_c, 130, "interrupted")


def test_a_sigterm_to_the_converter_alone_while_beam_workers_start_ends_the_run(
        tmp_path, make_images_labels_dataset):
    """A batch scheduler's stop (SIGTERM to the main process only) in the run's start-up,
    while Beam's runner waits for its first worker. Unlike a terminal's Ctrl-C, nothing
    reaches the workers: Beam's shutdown closes the connections they have not made yet and
    waits for them, which, once started, wait on those connections for ever; only
    dataset.beam_workers' kills end them. Here Beam's workers take a minute to start
    (sitecustomize, in Beam's workers only) and the SIGTERM is sent once both have written
    their marker file, so it always lands in that wait: no race, no sleep."""
    root = make_images_labels_dataset({"Chest": 2, "Hand": 2}, size=20)
    slow, started = _slow_to_start(tmp_path)
    process = _beam_converter(tmp_path, root, slow)
    # The main process alone, as Slurm or Kubernetes stops a job; prompt: well before the
    # workers' minute of start-up is over.
    _stopped_run_ends_cleanly(process, tmp_path, started, started,
                              "Beam's workers never started", subprocess.Popen.terminate, 143,
                              "terminated (SIGTERM)")


def test_a_sigterm_to_the_converter_alone_as_beam_stops_its_workers_ends_the_run(
        tmp_path, make_images_labels_dataset):
    """A batch scheduler's stop (SIGTERM to the main process only) as the run ended, while
    Beam waited for its last worker to exit. The signal interrupted that wait, and CPython
    3.11 then marks the worker's run_worker thread ended while it runs (an interrupted
    join), so nothing waited for it: once its killed worker was gone it printed a traceback
    below the one line (8 of 14 SIGTERMs sent as the run ended), or, when the kills missed
    the worker, left it running. Here Beam's first worker exits at once and its last takes a
    minute (sitecustomize, in Beam's workers only), so the SIGTERM lands in that wait; and
    the converter lingers a second at exit (as its teardown can on a loaded machine), so a
    late report has the time to come out. On the code before the fix this fails in 41 of 42
    runs (the old test, the first worker slow and no lingering: 11 of 12 here, about 1 in 3
    on a quiet machine); a miss is a report that came before standard error was given back.
    """
    root = make_images_labels_dataset({"Chest": 2, "Hand": 2}, size=20)
    started, ending = tmp_path / "started", tmp_path / "ending"
    started.mkdir()
    ending.mkdir()
    slow = tmp_path / "slow-exit"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(
        "import atexit, os, time\n"
        "if 'CONTROL_API_SERVICE_DESCRIPTOR' in os.environ:  # a Beam worker\n"
        f"    open(os.path.join({str(started)!r}, str(os.getpid())), 'w').close()\n"
        "    def last_is_slow():  # Beam stops its workers one at a time\n"
        "        try:\n"
        f"            os.close(os.open({str(ending / 'first')!r}, os.O_CREAT | os.O_EXCL))\n"
        "        except FileExistsError:\n"
        f"            open(os.path.join({str(ending)!r}, str(os.getpid())), 'w').close()\n"
        "            time.sleep(60)\n"
        "    atexit.register(last_is_slow)\n"
        f"elif os.getppid() == {os.getpid()}:  # the converter itself\n"
        "    atexit.register(time.sleep, 1)\n")
    process = _beam_converter(tmp_path, root, slow)
    # The main process alone, as Slurm or Kubernetes stops a job.
    _stopped_run_ends_cleanly(process, tmp_path, ending, started,
                              "Beam's last worker never began to exit",
                              subprocess.Popen.terminate, 143, "terminated (SIGTERM)")
