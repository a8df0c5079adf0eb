"""Ctrl-C, SIGTERM and the end of a program: one line saying what the interruption left, the
exit status a shell expects (130, 143), and no wait for TensorFlow's teardown after the work
is written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from absl import flags

from official.utils import cli
from tests.trainer_fixtures import REPO_ROOT, trainer_env


# The programs a user runs for minutes to hours, where a Ctrl-C is an everyday event.
LONG_PROGRAMS = ("networks/resnet/dicom_main.py", "networks/resnet/dicom_eval.py",
                 "networks/resnet/dicom_predict.py", "networks/resnet/dicom_export.py",
                 "networks/slim/train_image_classifier.py",
                 "networks/slim/eval_image_classifier.py", "dataset/download.py")


def test_ctrl_c_is_one_line_with_what_was_left_exit_130(monkeypatch, capsys):
    values = cli.program_flags()
    flags.DEFINE_string("model_dir", None, "", flag_values=values)

    def interrupted_main(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(sys, "argv", ["prog.py", "--model_dir=runs/a"])
    with pytest.raises(SystemExit) as exit_:
        cli.run_program("prog.py", interrupted_main, cli.flags_parser("prog.py", values),
                        interrupted=lambda: f"{values.model_dir} keeps its checkpoints")
    assert exit_.value.code == 130
    assert capsys.readouterr().err == ("prog.py: error: interrupted; runs/a keeps its "
                                       "checkpoints\n")
    # A note that cannot be made (e.g. an unparsed flag) still leaves the one line.
    with pytest.raises(SystemExit) as exit_:
        cli.run_program("prog.py", interrupted_main, cli.flags_parser("prog.py", values),
                        interrupted=lambda: 1 / 0)
    assert exit_.value.code == 130
    assert capsys.readouterr().err == "prog.py: error: interrupted\n"


def test_sigterm_is_one_line_exit_143_and_the_handler_is_restored(monkeypatch, capsys):
    """A job scheduler stops a job with SIGTERM; its default action ends the process at once
    (no clean-up, nothing said). It is handled as Ctrl-C, and said as itself."""
    values = cli.program_flags()
    before = signal.getsignal(signal.SIGTERM)

    def terminated_main(argv):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler raises in the main thread long before this ends
        raise AssertionError("SIGTERM was not handled")

    monkeypatch.setattr(sys, "argv", ["prog.py"])
    with pytest.raises(SystemExit) as exit_:
        cli.run_program("prog.py", terminated_main, cli.flags_parser("prog.py", values),
                        interrupted=lambda: "nothing half-written")
    assert exit_.value.code == 143
    assert capsys.readouterr().err == ("prog.py: error: terminated (SIGTERM); nothing "
                                       "half-written\n")
    assert signal.getsignal(signal.SIGTERM) is before


# A program whose teardown says it ran (an atexit function stands in for TensorFlow's slow
# deletion of tf.data iterators at exit, cli.exit_skipping_teardown).
_TEARDOWN_PROGRAM = """
import atexit, os, signal, sys
from official.utils import cli
values = cli.program_flags()
def main(argv):
    atexit.register(lambda: print("teardown ran", file=sys.stderr))
    print("summary line")  # into a pipe: block-buffered, so only a flush delivers it
    {ending}
cli.run_program("prog.py", main, cli.flags_parser("prog.py", values), skip_teardown={skip})
"""


@pytest.mark.parametrize("ending, skip, status, stderr", [
    ("return None", True, 0, ""),  # main returned: its output flushed, the teardown skipped
    ("return 3", True, 3, ""),
    ("return 'a message'", True, 1, "a message\n"),  # as sys.exit('a message')
    # An error said in one line, a Ctrl-C or a SIGTERM: the same, after the one line.
    ("cli.exit_with_error('prog.py', 'bad input')", True, 1, "prog.py: error: bad input\n"),
    ("raise KeyboardInterrupt", True, 130, "prog.py: error: interrupted\n"),
    ("os.kill(os.getpid(), signal.SIGTERM)", True, 143,
     "prog.py: error: terminated (SIGTERM)\n"),
    # A bug's traceback keeps the teardown.
    ("raise RuntimeError('a bug')", True, 1, "RuntimeError: a bug\nteardown ran\n"),
    ("return None", False, 0, "teardown ran\n"),
    ("raise KeyboardInterrupt", False, 130, "prog.py: error: interrupted\nteardown ran\n"),
])
def test_a_program_that_began_skips_the_teardown_only_when_asked(ending, skip, status, stderr):
    program = _TEARDOWN_PROGRAM.format(ending=ending, skip=skip)
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO_ROOT, env=trainer_env(),
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (status, "summary line\n")
    assert result.stderr.endswith(stderr), result.stderr
    assert "Traceback" in result.stderr if "a bug" in ending else result.stderr == stderr


# A program that lets AutoGraph convert a function (a Python `if` on a tensor), as every
# training, evaluation and export does, then ends as a finished TensorFlow program does.
_AUTOGRAPH_PROGRAM = """
import os, sys, tempfile
import tensorflow as tf
from official.utils import cli
values = cli.program_flags()
@tf.function
def clip(x):
    if x > 0:
        return x
    return -x
def main(argv):
    clip(tf.constant(1.0))
    print(sum(name.startswith("__autograph_generated_file")
              for name in os.listdir(tempfile.gettempdir())))
cli.run_program("prog.py", main, cli.flags_parser("prog.py", values), skip_teardown=True)
"""


def test_a_finished_program_leaves_no_autograph_file_in_the_temporary_folder(tmp_path):
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    program = tmp_path / "prog.py"  # AutoGraph reads the function's source from its file
    program.write_text(_AUTOGRAPH_PROGRAM)
    result = subprocess.run([sys.executable, str(program)], cwd=REPO_ROOT,
                            env={**trainer_env(), "TMPDIR": str(temporary)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 0  # AutoGraph wrote its files there while the program ran
    assert [path.name for path in temporary.iterdir()] == []


@pytest.mark.parametrize("program", ["networks/resnet/dicom_main.py",
                                     "networks/resnet/dicom_eval.py",
                                     "networks/resnet/dicom_predict.py",
                                     "networks/resnet/dicom_export.py",
                                     "networks/slim/train_image_classifier.py",
                                     "networks/slim/eval_image_classifier.py"])
def test_tensorflow_programs_skip_the_teardown(program):
    assert "skip_teardown=True" in (REPO_ROOT / program).read_text()


def test_counts_are_said_in_the_singular_for_one():
    assert [cli.count(n, "file") for n in (0, 1, 2)] == ["0 files", "1 file", "2 files"]


@pytest.mark.parametrize("program", LONG_PROGRAMS)
def test_long_programs_answer_ctrl_c_in_one_line(program):
    source = (REPO_ROOT / program).read_text()
    assert "cli.run_program(" in source and "app.run(" not in source


def test_an_interrupted_training_says_whether_it_left_a_checkpoint(tmp_path):
    from official.utils import cli as cli_lib

    assert cli_lib.checkpoints_left(str(tmp_path)) == (
        f"no checkpoint was saved in {tmp_path}; the same command starts afresh")
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "ckpt-4"\n')
    assert cli_lib.checkpoints_left(str(tmp_path)) == (
        f"{tmp_path} keeps the checkpoints saved so far; the same command resumes from the "
        "last one")


def test_a_storage_error_is_one_line_and_a_bug_keeps_its_traceback():
    import errno as errno_lib

    from official.utils import cli as cli_lib

    assert cli_lib.expected(OSError(errno_lib.ENOSPC, "No space left on device"))
    assert cli_lib.expected(OSError(errno_lib.EROFS, "Read-only file system", "/out"))
    assert cli_lib.expected(FileNotFoundError(errno_lib.ENOENT, "No such file", "/x"))
    assert not cli_lib.expected(OSError(errno_lib.EBADF, "Bad file descriptor"))
    assert not cli_lib.expected(OSError(errno_lib.EMFILE, "Too many open files"))
    assert not cli_lib.expected(KeyError("bug"))
