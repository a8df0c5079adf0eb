"""What every command-line program here does at its edges: one-line errors, exit codes.

Flag errors exit 2 and bad input or a failed run exits 1, each with one line
`<program>: error: <message>` and no traceback (absl's default adds a help hint line).
"""

from __future__ import annotations

import sys
from typing import Callable

from absl import flags

# What a run raises for bad input (ValueError, FileNotFoundError), a diverged loss
# (FloatingPointError) or a failed cluster (ConnectionError); anything else is a bug and
# keeps its traceback.
EXPECTED_ERRORS = (ValueError, FileNotFoundError, FloatingPointError, ConnectionError)


def flags_parser(program: str) -> Callable[[list[str]], list[str]]:
    """An `app.run(..., flags_parser=...)` that reports a bad flag in one line, exit 2."""

    def parse(argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(argv)
        except flags.Error as error:
            print(f"{program}: error: {error}", file=sys.stderr, flush=True)
            sys.exit(2)

    return parse


def print_summary_or_exit(program: str, run: Callable[[], str]) -> None:
    """Prints `run()`'s summary line; an expected error becomes one line and exit 1."""
    try:
        print(run(), flush=True)
    except EXPECTED_ERRORS as error:
        print(f"{program}: error: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
