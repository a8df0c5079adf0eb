"""A Ctrl-C or SIGTERM that ends a run on Beam's local runner (``dataset.beam_convert``).

Two ways one group Ctrl-C hung such a run until a second one (about 1 in 35 tries,
benchmarks/RESULTS.md section 35; 3 of 80 in a loop of group Ctrl-Cs sent mostly during the
workers' start-up, and 0 of 160 with this module):

- Beam's local runner (FnApiRunner, multi_processing) starts each worker as ``/bin/sh -c
  "python -m apache_beam.runners.worker.sdk_worker_main"``, and after an interrupt shuts
  down in the ``finally`` of its stage loop: it closes each worker's control connection,
  then waits for the worker process to exit. A worker not yet connected then is never told
  to end (its connection, closed before it started, sends nothing): once started, it waits
  on that connection for ever, and the runner for it. Such a worker had survived the Ctrl-C
  mid-start-up (a KeyboardInterrupt raised in an import lock's weakref callback is printed
  and dropped) or been started just after it. Starting the workers with Ctrl-C ignored, as
  the local pool does, made it worse (15 of 20 group Ctrl-Cs sent during start-up hung):
  every worker still starting survived. So this process ends them itself.
- The signal reached one of this process's other threads (gRPC's, Beam's) while the main
  thread waited, with no timeout, for a result from workers the same Ctrl-C had ended
  (2 of 80 once the workers were ended). Python runs signal handlers in the main thread
  only, once it is woken: it never was. So a watcher thread, told of the signal by
  whichever thread took it, wakes the main one.
- A SIGTERM to this process alone (a batch scheduler's stop) while the runner shut its
  workers down at the end of the run: the runner tells each worker to end, then waits for
  it, one at a time; interrupted in that wait, it never tells the others. The block then
  ended at once, at times before the watcher had killed a worker, and the process waited at
  exit for a worker that waits for its runner (1 hang in 34 SIGTERMs sent then). So after
  a signal the workers are killed until none is left, not only until the block ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time

from dataset.workers import replay_signal

_WORKER_MODULE = "apache_beam.runners.worker.sdk_worker_main"
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_POLL_SECONDS = 0.05
# After the block, how long a signal's kills go on while workers are left (they end within
# milliseconds of a SIGKILL; a bound in case one is stuck in the kernel).
_LEFT_SECONDS = 10.0
# The main thread's handler may run for the signal and again for the copy sent to wake it:
# a second call this soon after the first is that copy, not a second Ctrl-C.
_COPY_SECONDS = 0.5


@contextlib.contextmanager
def ended_on_interrupt():
    """For the block (Beam's pipeline run): a Ctrl-C or SIGTERM to this process raises in the
    main thread whichever thread it reached, as it did before the block (KeyboardInterrupt,
    cli.Terminated), and kills this process's Beam workers, again every 50 ms until the block
    ends (one may start after the signal) and no worker is left (at most 10 s more). Signals
    this process ignores stay ignored. Off the main thread (signal handlers are its alone)
    or without /proc: no change."""
    main = threading.main_thread()
    if threading.current_thread() is not main or not os.path.isdir("/proc/self"):
        yield
        return
    previous = {signum: handler for signum in _SIGNALS
                if callable(handler := signal.getsignal(signum)) or handler == signal.SIG_DFL}
    first, noted = [], []  # when the main thread handled the first signal; signals held back

    def on_signal(signum, frame):
        if noted:  # the block is being undone: replayed after it
            noted.append(signum)
        elif not first or time.monotonic() - first[0] > _COPY_SECONDS:
            first.append(time.monotonic())
            if not callable(previous[signum]):
                signal.signal(signum, previous[signum])  # SIG_DFL: ends the process
            replay_signal(signum, previous[signum])

    # Whichever thread a signal reaches writes its number here (Python's C-level handler).
    received, wakeup = socket.socketpair()
    wakeup.setblocking(False)
    done = threading.Event()

    def watch():
        while not (signums := [s for s in received.recv(64) if s in previous]):
            if done.is_set():
                return
        deadline = None
        while True:
            if not first and not done.is_set():  # the handler has not run yet: wake it up
                signal.pthread_kill(main.ident, signums[0])
            workers, shells = _worker_processes()
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            # At least one pass after the signal, then until every worker has ended: its
            # shell is gone once it has (the runner's thread waits for the shell).
            if done.is_set():
                deadline = deadline or time.monotonic() + _LEFT_SECONDS
                if not (workers or shells) or time.monotonic() > deadline:
                    return
                time.sleep(_POLL_SECONDS)
            else:
                done.wait(_POLL_SECONDS)

    watcher = threading.Thread(target=watch, name="beam_interrupt_watch", daemon=True)
    watcher.start()
    old_wakeup = signal.set_wakeup_fd(wakeup.fileno(), warn_on_full_buffer=False)
    for signum in previous:
        signal.signal(signum, on_signal)
    try:
        yield
    finally:
        noted.append(None)  # a signal from here on is noted, then replayed
        done.set()
        with contextlib.suppress(OSError):
            wakeup.send(b"\0")  # ends the watcher's wait for a signal
        watcher.join()
        signal.set_wakeup_fd(old_wakeup)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        received.close()
        wakeup.close()
        # After an interrupt handled in the block, only the copies sent to wake the main
        # thread (or a second Ctrl-C while the first one's exception is on its way) come here.
        if len(noted) > 1 and not first:
            replay_signal(noted[1], previous[noted[1]])


def _worker_processes() -> tuple[list[int], list[int]]:
    """This process's descendants that run Beam's SDK worker: (the Python workers, the shells
    Beam starts them with).

    Only the Python worker is to be killed, not its shell: a shell killed first would leave
    its worker running, orphaned. The shell, once its worker is killed, exits (Beam waits
    for the shell). A worker not yet exec'd (still the shell's copy) is found next time.
    """
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stream:
                    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                    parent = int(stream.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # ended meanwhile
                continue
            children.setdefault(parent, []).append(int(entry))
    workers, shells, stack = [], [], list(children.get(os.getpid(), []))
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as stream:
                arguments = stream.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if _WORKER_MODULE in arguments:
            workers.append(pid)
        elif any(_WORKER_MODULE in argument for argument in arguments):  # sh -c "... -m it"
            shells.append(pid)
    return workers, shells
