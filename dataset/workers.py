"""An ordered parallel map over worker processes with bounded memory (the converter's pool).

Results come back in task order with at most a window of tasks in flight, so memory stays
flat however many images there are; ``close`` stops the workers even mid-stream.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading


def _start_worker(initializer, initargs: tuple) -> None:
    # Ctrl-C signals the whole process group. A worker interrupted while it sends a result
    # leaves half a message in the result pipe, and the pool's terminate() then waits forever
    # for the rest (seen: 2 of 13 interrupts hung until a second Ctrl-C). Only the parent
    # takes the interrupt; it stops the workers through close().
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM keeps its default in a worker (the parent's handler is inherited on fork): the
    # pool's terminate() stops workers with it. It arrives blocked (see WorkerPool): a
    # terminate() while the worker was starting is delivered here, to the default.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    initializer(*initargs)


class WorkerPool:
    """Ordered parallel map with bounded memory: at most ``window`` tasks in flight."""

    def __init__(self, num_workers: int, initializer, initargs: tuple):
        """``initializer(*initargs)`` runs in every worker, and here for the in-process
        path (``num_workers`` <= 1)."""
        self.num_workers = num_workers
        initializer(*initargs)
        self._pool = None
        self._stopping, self._unblock = threading.Event(), []
        if num_workers > 1:
            # fork starts fastest (the converter itself never imports TensorFlow), but
            # TensorFlow imported by a caller (the tests, a notebook) is not fork-safe;
            # then spawn, whose workers import no TF.
            method = "spawn" if "tensorflow" in sys.modules or os.name != "posix" else "fork"
            context = multiprocessing.get_context(method)
            # A forked worker inherits the parent's SIGTERM handler (cli.stop_on_sigterm) until
            # _start_worker resets it: a terminate() in that window (a run failing at once)
            # raised it inside the worker's start-up, a traceback per worker. Blocked while the
            # workers are made, the signal waits for the default (the mask is inherited by
            # forked and spawned workers alike, and by the pool's threads, which never take it).
            blocking = hasattr(signal, "pthread_sigmask")
            if blocking:
                mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            try:
                self._pool = context.Pool(num_workers, _start_worker, (initializer, initargs))
            finally:
                if blocking:
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def imap(self, function, tasks: list, chunksize: int):
        if self._pool is None:
            yield from map(function, tasks)
            return
        window = max(chunksize * self.num_workers * 4, 8)  # tasks in flight: flat memory
        slots = threading.Semaphore(window)
        self._unblock.append((slots, window))

        def feed():  # runs in the pool's task-handler thread; blocks when the window is full
            for task in tasks:
                slots.acquire()
                if self._stopping.is_set():
                    return
                yield task

        for result in self._pool.imap(function, feed(), chunksize):
            slots.release()
            yield result

    def close(self) -> None:
        if self._pool is not None:
            # A feeder blocked on a full window would keep terminate() waiting
            # (after an exception mid-stream): wake it up, it then stops.
            self._stopping.set()
            for slots, window in self._unblock:
                for _ in range(window):
                    slots.release()
            self._pool.terminate()
            self._pool.join()
