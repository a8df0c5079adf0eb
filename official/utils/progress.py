"""Progress of a long loop (conversion, evaluation, prediction): a bar on a terminal, a line a
minute in a log file.

A bar in a log file (nohup, a Slurm job's output, `2> log`) is hundreds of carriage-return
updates on one line, so tqdm is given only a terminal; a run whose stderr is a file gets a plain
line every `interval` seconds instead, which is what someone tailing a GPU server's log needs to
see that a 35,000-file prediction is moving and when it will end.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class _Bar(tqdm):
    """tqdm without its monitor thread: a Ctrl-C reaches any thread that does not block it, so
    a thread beside the main one let it through the converter pool's signal hold
    (dataset/workers.py) and could hang the pool's stop."""
    monitor_interval = 0


class _Lines:
    """The log-file form: "<desc>: 3,200 of 35,107 files (9%) in 1 min 0 s, about 10 min to
    go" every `interval` seconds; nothing for a loop that ends sooner (its summary says it)."""

    def __init__(self, total: int, unit: str, desc: str, interval: float, stream, clock):
        self._total, self._unit, self._desc = total, unit, desc
        self._interval, self._stream, self._clock = interval, stream, clock
        self._done = 0
        self._start = clock()
        self._next = self._start + interval

    def update(self, count: int) -> None:
        self._done += count
        now = self._clock()
        if now < self._next or not self._total:
            return
        self._next = now + self._interval
        elapsed = now - self._start
        line = (f"{self._desc}: {self._done:,} of {self._total:,} {self._unit} "
                f"({100 * self._done // self._total}%) in {_duration(elapsed)}")
        if 0 < self._done < self._total:
            line += f", about {_estimate(elapsed * (self._total / self._done - 1))} to go"
        print(line, file=self._stream, flush=True)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def _estimate(seconds: float) -> str:
    # A rate's extrapolation is not worth seconds once it runs to minutes.
    return f"{round(seconds / 60)} min" if seconds >= 120 else f"{max(1, round(seconds))} s"


def progress(total: int, *, unit: str, desc: str, enabled: bool = True,
             interval: float = 60.0, stream=None, clock=time.monotonic):
    """A progress reporter with update(count), close() and `with`.

    Args:
      total: how many `unit`s the loop will do.
      unit: what is counted, plural ("files", "images").
      desc: what the loop does ("predicting").
      enabled: False for none at all (a caller's --quiet, a test).
      interval: seconds between lines when `stream` is not a terminal.
      stream: where it goes (default: sys.stderr, looked up at the call).
    """
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return _Bar(total=total, disable=True)
    if stream.isatty():
        return _Bar(total=total, unit=unit, desc=desc, file=stream, mininterval=0.5)
    return _Lines(total, unit, desc, interval, stream, clock)
