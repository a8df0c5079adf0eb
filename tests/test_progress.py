"""official/utils/progress.py: a bar on a terminal, a line a minute in a log file."""

from __future__ import annotations

import io

from official.utils.progress import progress


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_log_file_gets_a_line_a_minute_with_the_time_to_go():
    """A bar in a log file (nohup, Slurm) was hundreds of carriage returns on one line, so
    none was shown there, and a 35,000-file prediction said nothing for minutes."""
    stream, clock = io.StringIO(), _Clock()
    with progress(35_107, unit="files", desc="predicting", stream=stream,
                  clock=clock) as reporter:
        for _ in range(10):  # 640 files in 30 s: no line yet
            clock.now += 3
            reporter.update(64)
        assert stream.getvalue() == ""
        clock.now += 31  # past the minute
        reporter.update(64)
        clock.now += 59
        reporter.update(10_000)  # within the next minute: no line
        clock.now += 61
        reporter.update(24_399)  # all done
    assert stream.getvalue().splitlines() == [
        "predicting: 704 of 35,107 files (2%) in 1 min 1 s, about 50 min to go",
        "predicting: 35,103 of 35,107 files (99%) in 3 min 1 s, about 1 s to go"]
    assert "\r" not in stream.getvalue()


def test_a_terminal_gets_a_bar_and_disabled_gets_nothing():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    with progress(10, unit="images", desc="evaluating test", stream=terminal) as reporter:
        reporter.update(10)
    assert "evaluating test: 100%" in terminal.getvalue() and "\r" in terminal.getvalue()
    quiet = Terminal()
    with progress(10, unit="images", desc="x", stream=quiet, enabled=False) as reporter:
        reporter.update(10)
    assert quiet.getvalue() == ""
