"""An ordered parallel map over worker processes with bounded memory (the converter's pool).

Results come back in task order with at most a window of tasks in flight, so memory stays
flat however many images there are; ``close`` stops the workers even mid-stream.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import multiprocessing
import multiprocessing.pool
import os
import signal
import sys
import threading


class WorkerLost(RuntimeError):
    """A worker process ended while the pool was working (killed, e.g. by the out-of-memory
    killer); its task's result will never come."""


def _start_worker(started, initializer, initargs: tuple) -> None:
    # Counted first, so that a worker whose initializer fails (and is then replaced, again
    # and again) counts too.
    with started.get_lock():
        started.value += 1
    # Ctrl-C signals the whole process group. A worker interrupted while it sends a result
    # leaves half a message in the result pipe, and the pool's terminate() then waits forever
    # for the rest (seen: 2 of 13 interrupts hung until a second Ctrl-C). Only the parent
    # takes the interrupt; it stops the workers through close().
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM keeps its default in a worker (the parent's handler is inherited on fork): the
    # pool's terminate() stops workers with it.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Both arrive blocked (see _signals_held): one sent while this worker was starting is
    # delivered now, to the dispositions just set.
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)
    initializer(*initargs)


_HELD = {signal.SIGINT, signal.SIGTERM}
# How long imap waits for a result before it checks that no worker has died; a Ctrl-C or
# SIGTERM held back during the wait is raised then, at the latest.
_LIVENESS_SECONDS = 0.25


@contextlib.contextmanager
def _signals_held():
    """Holds Ctrl-C and SIGTERM back from this process's Python code (and from processes and
    threads started meanwhile) until the block ends; one sent meanwhile is delivered then.

    While a pool's workers are made, a forked worker runs the parent's handlers until
    _start_worker replaces them: a Ctrl-C or terminate() in that window raised inside its
    start-up (a traceback per worker), and an interrupt inside the pool's own set-up or
    terminate() left it half made or half stopped, and the process hung at exit (9 of 30
    group Ctrl-Cs sent 0.3-0.6 s into a loop of pools). Two holds, as a signal reaches any
    thread that does not block it: this thread's mask (inherited by forked and spawned
    workers, and by the pool's threads), and, for a thread started before (tqdm's monitor),
    handlers that only note the signal, replayed at the end.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    noted = []
    handlers = {}
    if threading.current_thread() is threading.main_thread():  # signal.signal's rule
        handlers = {signum: signal.signal(signum, lambda signum, _: noted.append(signum))
                    for signum in _HELD}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a signal still pending: delivered
        if noted:
            replay_signal(noted[0], handlers[noted[0]])


def replay_signal(signum: int, handler) -> None:
    """What ``handler``, the signal's handler before a temporary one (a hold's, or
    beam_workers'), does with ``signum``; for SIG_DFL the caller has put it back first."""
    if callable(handler):
        handler(signum, None)  # e.g. KeyboardInterrupt, cli.Terminated
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)  # the default: end the process
    # SIG_IGN: ignored, as it would have been


def _run_chunk(function, chunk: list) -> list:
    return [function(task) for task in chunk]


class WorkerPool:
    """Ordered parallel map with bounded memory: at most ``window`` tasks in flight."""

    def __init__(self, num_workers: int, initializer, initargs: tuple):
        """``initializer(*initargs)`` runs in every worker, and here for the in-process
        path (``num_workers`` <= 1)."""
        self.num_workers = num_workers
        initializer(*initargs)
        self._pool = None
        self._stopping, self._unblock = threading.Event(), []
        # Workers started, replacements included: multiprocessing.Pool replaces a worker that
        # dies but loses its task, so imap would wait for that result forever (a worker
        # SIGKILLed mid-task hung the converter). One start beyond num_workers means a death.
        self._started = None
        if num_workers > 1:
            # fork starts fastest (the converter itself never imports TensorFlow), but
            # TensorFlow imported by a caller (the tests, a notebook) is not fork-safe;
            # then spawn, whose workers import no TF.
            method = "spawn" if "tensorflow" in sys.modules or os.name != "posix" else "fork"
            context = self._context = multiprocessing.get_context(method)
            self._started = context.Value("i", 0)
            try:
                with _signals_held():
                    self._pool = context.Pool(num_workers, _start_worker,
                                              (self._started, initializer, initargs))
            except BaseException:  # a signal held back is raised on leaving the block
                self.close()
                raise

    def imap(self, function, tasks: list, chunksize: int):
        if self._pool is None:
            yield from map(function, tasks)
            return
        # Chunked here rather than by Pool.imap, whose chunked iterator cannot wait with a
        # timeout (the liveness check below needs one).
        chunks = [tasks[start:start + chunksize] for start in range(0, len(tasks), chunksize)]
        window = self.num_workers * 4  # chunks in flight: flat memory
        slots = threading.Semaphore(window)
        self._unblock.append((slots, window))

        def feed():  # runs in the pool's task-handler thread; blocks when the window is full
            for chunk in chunks:
                slots.acquire()
                if self._stopping.is_set():
                    return
                yield chunk

        results = self._pool.imap(functools.partial(_run_chunk, function), feed())
        while True:
            # A Ctrl-C raised inside the wait's locks (a Condition's __enter__ that had taken
            # its lock: CPython then never runs the __exit__) left the result's lock held, and
            # close() waited for ever for the task handler, blocked on it (a group Ctrl-C
            # mid-conversion, once in the suite under load). It is raised after the wait.
            with _signals_held():
                try:
                    chunk_results = results.next(timeout=_LIVENESS_SECONDS)
                except StopIteration:
                    return
                except multiprocessing.TimeoutError:
                    self._check_workers()  # raises from within the except: without the timeout
                    continue
                slots.release()
            yield from chunk_results

    def _check_workers(self) -> None:
        # Without the count's lock: a worker killed while it counted itself holds it for ever.
        if self._started.get_obj().value > self.num_workers:
            raise WorkerLost(
                "a worker process ended before finishing its task (killed, e.g. by the "
                "out-of-memory killer; if memory ran out, try fewer --num_workers)") from None

    def _end_workers(self, read_wait: float) -> None:
        """Ends every worker in a way that readies the pool's terminate(), which cannot be
        trusted to do it: it kills workers at any point, and then waits for its task handler,
        which sends the result handler a sentinel through the result queue. A worker killed
        while it sent a result left that queue's write lock taken, and the close waited for
        ever (a group Ctrl-C or SIGTERM mid-conversion: 1 in ~20 conversions of
        tests/test_convert_kill.py under load; a review's reproduction with big results: 3
        hangs in 8 closes). And a worker killed while it waited for a task died holding the
        task queue's read lock, which terminate() takes first (to drain the queue): it waited
        forever, deaf to Ctrl-C and SIGTERM under close()'s hold.
        So the workers are killed with both queues' locks held where they can be taken
        (`read_wait` s for the read lock: an idle worker holds it while it waits, and is
        killed safely so), so that none dies half-way through a message, and the queues get
        fresh locks; this side then drains with a lock of its own (one worker left reading
        beside it interleaved their reads: "invalid load key" there, EOFError here)."""
        pool = self._pool
        # No more replacements (the pool's worker handler starts one for each death).
        pool._worker_handler._state = multiprocessing.pool.TERMINATE
        pool._change_notifier.put(None)
        pool._worker_handler.join()
        # Not taken in time: held by the dead worker (for ever), or by a live one waiting for
        # a task or a turn to send, which is stopped between messages all the same.
        reading, sending = pool._inqueue._rlock, pool._outqueue._wlock
        held = [lock for lock, seconds in ((reading, read_wait), (sending, 5.0))
                if lock.acquire(timeout=seconds)]
        for worker in pool._pool:
            worker.kill()
        for worker in pool._pool:
            worker.join()
        pool._inqueue._rlock = self._context.Lock()
        pool._outqueue._wlock = self._context.Lock()
        for lock in held:
            lock.release()  # the task handler may be waiting on the old one for its sentinel

    def close(self) -> None:
        if self._pool is not None:
            # A feeder blocked on a full window would keep terminate() waiting
            # (after an exception mid-stream): wake it up, it then stops.
            self._stopping.set()
            for slots, window in self._unblock:
                for _ in range(window):
                    slots.release()
            with _signals_held():  # a pool stopped half way hangs the process at exit
                # (The count read without its lock: a worker being started when the pool is
                # stopped may hold it, and is then stopped holding it.) After a death, the
                # dead one may have been reading a task: more time for a live one's read.
                died = self._started.get_obj().value > self.num_workers
                self._end_workers(read_wait=1.0 if died else 0.05)
                self._pool.terminate()
                self._pool.join()
                # Collected here, under the hold: the pool's finalizers and its pipes' __del__
                # run when it is, and a Ctrl-C landing in one of those is printed as
                # "Exception ignored in ..." and lost (the program then went on: 3 of 144
                # Ctrl-Cs into a loop of pools, started from pytest). The start count too: it
                # lives in multiprocessing's shared heap, whose finalizer, run when the next
                # pool replaced this one, took a Ctrl-C and left that pool's start hanging
                # (1 in 10 runs of the loop-of-pools test).
                self._pool = self._started = None
                gc.collect()
