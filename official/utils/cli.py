"""What every command-line program here does at its edges: one-line errors, exit codes, imports.

Flag errors exit 2 and bad input or a failed run exits 1, each with one line
`<program>: error: <message>` and no traceback (absl's default adds a help hint line).

Imports: two rules, and no other import sits inside a function.

* The converter never imports TensorFlow (tf_convert_data.py and the dataset/ modules it
  uses: it starts at once and its worker processes stay small). dataset/features.py, shared
  with the TensorFlow reader, therefore imports TensorFlow inside its two parsing functions;
  likewise pydicom (a second to import) is imported only once a DICOM file is met
  (dataset/images.py load_image, dataset/sources.py read_dicom_header).
* No TensorFlow before the flags are parsed: a command-line program (tf_convert_data.py,
  networks/resnet/dicom_*.py, networks/slim/*_image_classifier.py) imports TensorFlow-heavy
  modules inside `main()` only, after absl parsed its flags, so `--help` and a bad flag answer
  at once. Everything else imports at the top of the module.

tests/test_registry.py checks both and lists the few other exceptions with their reasons (an
optional dependency, benchmark peers timed in their own processes).
"""

from __future__ import annotations

import sys
from typing import Callable, NoReturn

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


def exit_with_error(program: str, error: Exception | str) -> NoReturn:
    """`<program>: error: <error>` on stderr, exit 1."""
    print(f"{program}: error: {error}", file=sys.stderr, flush=True)
    sys.exit(1)


def print_summary_or_exit(program: str, run: Callable[[], str]) -> None:
    """Prints `run()`'s summary line; an expected error becomes one line and exit 1."""
    try:
        print(run(), flush=True)
    except EXPECTED_ERRORS as error:
        exit_with_error(program, error)
