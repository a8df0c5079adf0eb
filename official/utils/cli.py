"""What every command-line program here does at its edges: one-line errors, exit codes, imports.

Flag errors exit 2 and bad input or a failed run exits 1, each with one line
`<program>: error: <message>` and no traceback (absl's default adds a help hint line).

Flags: the trainers, evaluators and the converter define theirs in absl's global FLAGS, only
when run as a program. The programs whose modules tests import side by side (dataset/download.py,
scripts/collect_results.py, the benchmarks) each keep theirs in a FlagValues of their own
(`program_flags`), so that equal flag names never clash; `flags_parser(program, flag_values,
doc=__doc__)` parses into it, with --help/-h; each such module names that parser
`parse_flags`, and a test runs the program as `main(parse_flags([program, *flags]))`.

Imports: two rules, and no other import sits inside a function.

* The converter never imports TensorFlow (tf_convert_data.py and the dataset/ modules it
  uses: it starts at once and its worker processes stay small). dataset/features.py, shared
  with the TensorFlow reader, therefore imports TensorFlow inside its two parsing functions;
  likewise pydicom (a second to import) is imported only once a DICOM file is met
  (dataset/images.py load_image, dataset/sources.py read_dicom_header).
* No TensorFlow before the flags are parsed: a command-line program (tf_convert_data.py,
  networks/resnet/dicom_*.py, networks/slim/*_image_classifier.py, benchmarks/train_bench.py,
  pipeline_bench.py and stress_eval.py, whose TensorFlow code lives in their *_lib.py) imports
  TensorFlow-heavy modules inside `main()` only, after absl parsed its flags and after the
  checks that need no TensorFlow (missing inputs, unusable output paths, models that cannot
  form one ensemble, a malformed cluster: official/core/model_paths.py, dataset/converted.py),
  so `--help`, a bad flag and such bad input answer at once (importing TensorFlow takes ~4 s).
  The error tests run these programs with TensorFlow made unimportable
  (tests/trainer_fixtures.py `without_tensorflow`). Everything else imports at the top of the
  module.

tests/test_registry.py checks both and lists the few other exceptions with their reasons (an
optional dependency, benchmark peers timed in their own processes).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Callable, NoReturn

from absl import app, flags

from official.utils import files

# What a run raises for bad input (ValueError, FileNotFoundError; an output path that is a
# file, a file where a folder must be, no permission: the OSError names the path), a diverged
# loss (FloatingPointError) or a failed cluster (ConnectionError), and (see `expected`) a file
# system that cannot take the output; anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
                   IsADirectoryError, PermissionError, FloatingPointError, ConnectionError)


def expected(error: BaseException) -> bool:
    """Whether ``error`` is one a program reports in one line (exit 1), not with a traceback."""
    return isinstance(error, EXPECTED_ERRORS) or (
        isinstance(error, OSError) and error.errno in files.STORAGE_ERRNOS)


def program_flags() -> flags.FlagValues:
    """An empty set of flags for one program, apart from absl's global FLAGS, with --help (-h)."""
    flag_values = flags.FlagValues()
    flags.DEFINE_boolean("help", False, "Show this help and exit.", short_name="h",
                         flag_values=flag_values)
    return flag_values


def flags_parser(program: str, flag_values: flags.FlagValues | None = None, *,
                 doc: str = "", arguments: tuple[str, ...] = ()
                 ) -> Callable[[list[str]], list[str]]:
    """An `app.run(..., flags_parser=...)` that reports a bad flag in one line, exit 2.

    Args:
      flag_values: a `program_flags()` (default: absl's global FLAGS). Its flags are reset to
        their defaults before each parse (a test may run the program twice in one process);
        --help prints the usage, `doc` and the flags on stdout, exit 0.
      arguments: the names of the positional arguments. Own flags: all required; a wrong
        count prints the usage and the error on stderr, exit 2. absl's global FLAGS: none
        named makes any argument an error (exit 2); named, the program checks them.
    """
    usage = " ".join(["usage:", program, "[flags]", *arguments])

    def parse(argv: list[str]) -> list[str]:
        if flag_values is None:
            _answer_help_and_exit(argv)
        values = flags.FLAGS if flag_values is None else flag_values
        if flag_values is not None:
            values.unparse_flags()
        try:
            remaining = values(argv)
        except flags.Error as error:
            # --help answers even when a required flag is missing (parsed, then validated).
            if flag_values is None or not values["help"].value:
                # absl puts each missing required flag on a line of its own.
                exit_with_error(program, " ".join(str(error).splitlines()), status=2)
            remaining = []
        if flag_values is None:
            # With no arguments named, one is a value meant for a flag ('--need_split tvt_split
            # 0.3'); a program that takes files checks its own.
            if len(remaining) > 1 and not arguments:
                exit_with_error(program, f"unexpected argument(s): {' '.join(remaining[1:])}",
                                status=2)
            return remaining
        if values["help"].value:
            flag_help = values.get_help(include_special_flags=False)
            _print_help_and_exit(lambda: print(f"{usage}\n\n{doc.strip()}\n\nflags:\n"
                                               f"{flag_help}", flush=True))
        if len(remaining) - 1 != len(arguments):
            print(usage, file=sys.stderr)
            exit_with_error(program, f"expected {' '.join(arguments) or 'no arguments'}, got "
                            f"{' '.join(remaining[1:]) or 'none'}", status=2)
        flags.FLAGS.mark_as_parsed()  # app.run asks; absl's own flags keep their defaults
        return remaining

    return parse


# absl's own help flags print the help, then exit 1 (as if --help had failed), and know no -h.
_HELP = {"-h": True, "--help": True, "-?": True, "--helpshort": True, "--helpfull": False}


def _answer_help_and_exit(argv: list[str]) -> None:
    """Global-FLAGS programs: -h/--help (and absl's --helpshort/--helpfull) print the help on
    stdout and exit 0, wherever they stand before a `--`."""
    for argument in argv[1:]:
        if argument == "--":
            return
        if argument in _HELP:
            def show(short=_HELP[argument]):
                app.usage(shorthelp=short, writeto_stdout=True)
                if short:
                    print("\nTry --helpfull to get a list of all flags.", flush=True)
            _print_help_and_exit(show)


def _print_help_and_exit(show: Callable[[], None]) -> NoReturn:
    """`show()` the help on stdout, exit 0; `--help | head` closing the pipe early is no error
    (the reader has what it wanted)."""
    try:
        show()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)


def exit_with_error(program: str, error: Exception | str, status: int = 1) -> NoReturn:
    """`<program>: error: <error>` on stderr, exit `status` (1: bad input or a failed run;
    2: bad flags)."""
    print(f"{program}: error: {error}", file=sys.stderr, flush=True)
    sys.exit(status)


def count(number: int, noun: str) -> str:
    """count(1, "file") == "1 file", count(2, "file") == "2 files"."""
    return f"{number} {noun}" + ("" if number == 1 else "s")


def check_output_folder(flag: str, path: str | None, what: str) -> None:
    """A folder the program will write, checked before any work: where the path or one of
    its parents is a file, the mkdir at the end would fail with a bare errno after the work.

    Raises:
      ValueError: naming the flag and the file in the way.
    """
    if path and (blocker := files.file_in_the_way(path)):
        raise ValueError(f"{flag}={path}: {blocker} is a file; {what} is written as a folder")


class Terminated(KeyboardInterrupt):
    """SIGTERM, as a job scheduler or `kill` stops a program: raised where Ctrl-C's
    KeyboardInterrupt would be, so the same clean-ups run (its default action ends the
    process at once: half-written folders stay, and nothing is said). Like Ctrl-C, it is
    raised when the main thread is back in Python: a program inside one long TensorFlow call
    (a training loop's --steps_per_loop steps) stops when that call returns; a scheduler's
    SIGKILL after its grace period still ends it."""


def _raise_terminated(signum, frame):
    raise Terminated


def stop_on_sigterm() -> None:
    """From now on SIGTERM raises Terminated in the main thread (call it from there)."""
    signal.signal(signal.SIGTERM, _raise_terminated)


def interruption(error: KeyboardInterrupt) -> tuple[str, int]:
    """(what to say, exit status) for Ctrl-C or SIGTERM: 128 + the signal, as a shell reports
    a process the signal ended."""
    if isinstance(error, Terminated):
        return "terminated (SIGTERM)", 128 + signal.SIGTERM
    return "interrupted", 128 + signal.SIGINT


def checkpoints_left(folder: str) -> str:
    """What an interrupted training leaves in ``folder``, for run_program's ``interrupted``:
    the checkpoints (their index file, ``checkpoint``, is written with the first), or none."""
    if os.path.isfile(os.path.join(folder, "checkpoint")):
        return (f"{folder} keeps the checkpoints saved so far; the same command resumes from "
                "the last one")
    return f"no checkpoint was saved in {folder}; the same command starts afresh"


def report_left(output_dir: str | None) -> str:
    """What an interrupted evaluation left (report.left_by_interrupt), for run_program's
    `interrupted`; report.py (matplotlib) is imported only then."""
    from official.utils import report

    return report.left_by_interrupt(output_dir)


def run_program(program: str, main: Callable[[list[str]], object],
                flags_parser: Callable[[list[str]], list[str]],
                interrupted: Callable[[], str] = lambda: "", *,
                skip_teardown: bool = False) -> None:
    """absl's `app.run(main, flags_parser=...)`, where Ctrl-C (or SIGTERM) is one line, exit
    130 (143) instead of a traceback from deep inside TensorFlow (or a silent death).

    Args:
      interrupted: what the interruption left behind, from the parsed flags (e.g. "MODEL_DIR
        keeps its checkpoints"); called only after a Ctrl-C or SIGTERM.
      skip_teardown: once `main` has begun, end the process without the interpreter's
        teardown (`exit_skipping_teardown`) whether it returned, said an error in one line,
        or was interrupted: each way out has closed what it wrote (files through `with`, the
        training's summaries flushed, a checkpoint saved on an interrupt). A traceback (a
        bug) keeps the teardown. For the TensorFlow programs, run as programs only: never
        from a test's own process.
    """
    began = []

    def main_then_note(argv):
        began.append(True)
        return main(argv)

    previous = signal.getsignal(signal.SIGTERM)
    stop_on_sigterm()
    try:
        app.run(main_then_note, flags_parser=flags_parser)
    except SystemExit as done:
        if skip_teardown and began:
            exit_skipping_teardown(done.code)
        raise
    except KeyboardInterrupt as error:
        try:
            left = interrupted()
        except Exception:  # noqa: BLE001 (e.g. Ctrl-C before the flags were parsed)
            left = ""
        what, status = interruption(error)
        message = what + (f"; {left}" if left else "")
        if skip_teardown and began:
            # The teardown would delete the run's tf.data iterators, which can wait a minute
            # for their autotuner (exit_skipping_teardown): silence after the line that
            # said the run stopped.
            print(f"{program}: error: {message}", file=sys.stderr, flush=True)
            exit_skipping_teardown(status)
        exit_with_error(program, message, status=status)
    finally:
        signal.signal(signal.SIGTERM, previous)  # a caller in the same process (a test)


def exit_skipping_teardown(code: object) -> NoReturn:
    """Flushes the output and ends the process now, as `sys.exit(code)` would without the
    interpreter's teardown.

    TensorFlow 2.21 can take up to a minute to delete a tf.data iterator: the destructor
    waits for the autotuning thread of the pipeline, which sleeps for its optimisation
    period (up to 60 s once a pipeline has run a few minutes) and is sometimes not woken.
    Seen as 41-55 s of nothing after a training run's last line, in about one run in four;
    reproduced with a bare `Dataset.range().map().prefetch()` iterator (benchmarks/RESULTS.md
    section 29). A program's iterators are deleted at its exit, so its caller (a script's
    next step) waited, and so did a user after a Ctrl-C or a scheduler after its SIGTERM
    (section 37). Everything the program writes is closed by then (files through `with`; the
    training's summary points flushed as each is written, by tf.summary's `as_default`
    block); only the wait is skipped.

    The one exit function skipped that leaves something behind is AutoGraph's: it removes
    the source file it wrote into the temporary folder for each function it converted (8 for
    a short training run, which a server's scripts repeat); that is done here instead.
    """
    _remove_autograph_files()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader gone (`| head`), or a closed stream
            pass
    logging.shutdown()  # flushes the handlers, absl's among them
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr, flush=True)  # as sys.exit prints a message
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


# TensorFlow's AutoGraph (tensorflow/python/autograph/pyct/loader.py) writes each converted
# function's source to a temporary file of this prefix, loads it as a module of the file's
# name into sys.modules, and removes the file with an atexit function.
_AUTOGRAPH_PREFIX = "__autograph_generated_file"


def _remove_autograph_files() -> None:
    """Removes the temporary files of AutoGraph's modules, as its exit functions would."""
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name.startswith(_AUTOGRAPH_PREFIX) and path and os.path.basename(path).startswith(
                _AUTOGRAPH_PREFIX):
            try:
                os.remove(path)
            except OSError:  # removed already, or a read-only temporary folder: as atexit's
                pass


def print_summary_or_exit(program: str, run: Callable[[], str]) -> None:
    """Prints `run()`'s summary line; an expected error becomes one line and exit 1."""
    try:
        print(run(), flush=True)
    except Exception as error:
        if not expected(error):
            raise
        exit_with_error(program, error)
