"""tf_convert_data.py --runner=beam into a disk that fills up while Beam's workers write the
records: one line naming the output folder and the reason, as the local run says it, and
nothing left behind (the folder, its staging folder and spill files)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dataset import beam_pipeline
from tests.conftest import REPO_ROOT

if beam_pipeline.beam is None:  # dataset.beam_pipeline itself imports without Beam
    pytest.skip("needs apache-beam (pip install -r requirements-beam.txt)",
                allow_module_level=True)


@pytest.fixture
def full_disk(tmp_path):
    """A 128 KiB file system: room for the driver's task list, not for the records."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"a full disk is a small tmpfs, which only root can mount: "
                    f"{result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def _convert(dataset_dir, output_dir, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "tf_convert_data.py"), f"--dataset_dir={dataset_dir}",
         f"--output_dir={output_dir}", "--need_split=None", "--output_name=all",
         "--num_workers=2", *extra], capture_output=True, text=True, timeout=300)


def test_a_disk_full_under_beams_workers_is_one_line_as_the_local_run_says_it(
        full_disk, make_images_labels_dataset):
    """The worker's OSError reached the driver as a RuntimeError holding its traceback, of
    which the user saw the first line: "error: --runner=beam: the pipeline failed: Traceback
    (most recent call last): (the local workers' log: /tmp/beam-workers-....log)"."""
    root = make_images_labels_dataset({"Chest": 30, "Hand": 30}, size=64)  # ~190 KiB
    output = full_disk / "out"
    local = _convert(root, output, "--runner=local")
    beam = _convert(root, output, "--runner=beam")  # Beam's local runner, two processes
    expected = [f"error: {output}: No space left on device; the conversion into {output} did "
                "not finish (a folder without its manifest.json is never read as a dataset)"]
    assert (local.returncode, local.stderr.splitlines()) == (1, expected)
    assert (beam.returncode, beam.stderr.splitlines()) == (1, expected)
    assert list(full_disk.iterdir()) == []


@pytest.mark.parametrize("runner", ["local", "beam"])
def test_a_file_over_the_size_limit_is_one_line_on_either_runner(
        tmp_path, make_images_labels_dataset, runner):
    """A write over the file system's or the process's file size limit (FAT32's 4 GiB,
    `ulimit -f`: EFBIG) ended the local run with a traceback, and Beam's with its worker's
    OSError; it is the user's to mend (a smaller --shard_size_mb, another disk), as a full
    disk is, and said as one."""
    root = make_images_labels_dataset({"Chest": 30, "Hand": 30}, size=64)  # ~190 KiB
    output = tmp_path / "out"
    # Files of 64 KiB at most (bash counts KiB); Python ignores SIGXFSZ: a write gets EFBIG.
    result = subprocess.run(
        ["bash", "-c", 'ulimit -f 64 && exec "$@"', "bash", sys.executable,
         str(REPO_ROOT / "tf_convert_data.py"), f"--dataset_dir={root}",
         f"--output_dir={output}", "--need_split=None", "--output_name=all",
         "--num_workers=2", f"--runner={runner}"], capture_output=True, text=True, timeout=300)
    assert (result.returncode, result.stderr.splitlines()) == (1, [
        f"error: {output}: File too large; the conversion into {output} did not finish (a "
        "folder without its manifest.json is never read as a dataset)"]), result.stderr[-3000:]
    assert not output.exists()


def test_another_failure_of_beams_workers_says_the_workers_error_not_traceback(
        tmp_path, make_images_labels_dataset):
    """A worker's exception that is no storage error (here a bug, planted by a sitecustomize
    that only Beam's workers run) was said as the first line of its traceback, "the pipeline
    failed: Traceback (most recent call last):"; now as the worker's own last line."""
    root = make_images_labels_dataset({"Chest": 30, "Hand": 30}, size=64)
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "sitecustomize.py").write_text(
        "import os\n"
        "if 'CONTROL_API_SERVICE_DESCRIPTOR' in os.environ:  # a Beam worker\n"
        "    import dataset.tasks\n"
        "    def encode_file(*args):\n"
        "        raise ZeroDivisionError('a bug in a worker')\n"
        "    dataset.tasks.encode_file = encode_file\n")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tf_convert_data.py"), f"--dataset_dir={root}",
         f"--output_dir={tmp_path / 'out'}", "--need_split=None", "--output_name=all",
         "--num_workers=2", "--runner=beam"], capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=f"{planted}{os.pathsep}{REPO_ROOT}"))
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: --runner=beam: the pipeline failed: ZeroDivisionError: a bug "
                           "in a worker [while running 'EncodeFile/ParDo(_EncodeFile)'] "
                           "(the local workers' log: "), line
    log = line.rsplit(": ", 1)[1].rstrip(")")
    os.remove(log)  # kept for the user: the workers' tracebacks
    assert not (tmp_path / "out").exists()
