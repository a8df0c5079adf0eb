"""The converter on Beam's local runner vs the local converter, measured in the same run.

  python benchmarks/beam_bench.py [--dataset_dir=DIR] [--num_workers=0]

Converts the 35,107 images of ../shared/data/MedNIST-dev.tar.gz (extracted into a
temporary folder outside the repository; or --dataset_dir) with a train/validation/test
split three ways: the local converter, and tf_convert_data.py --runner=beam on Beam's
local runner (FnApiRunner) in multi-process and in-process mode. Each run is the CLI in
its own subprocess and is timed from start to exit, so interpreter and Beam start-up
count: that is what a user waits for. It also checks that every run wrote the same
records per split (the manifests' shard checksums cannot be compared: shard boundaries
differ). Prints a table and the Beam/local time ratios. Beam's local runner is expected
to be slower: its value is that the same pipeline runs on Flink, Spark or Dataflow.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from absl import app, flags  # noqa: E402

from dataset import shards  # noqa: E402
from official.utils import cli  # noqa: E402

PROGRAM = "beam_bench.py"
SHARED = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data")
FLAGS = cli.program_flags()
flags.DEFINE_string("dataset_dir", None, "default: MedNIST-dev.tar.gz, extracted to /tmp",
                    flag_values=FLAGS)
flags.DEFINE_integer("num_workers", 0, "0: all cores", flag_values=FLAGS)
parse_flags = cli.flags_parser(PROGRAM, FLAGS, doc=__doc__)
RUNS = {  # name: extra tf_convert_data.py flags ({n}: worker processes)
    "local": ["--runner=local", "--num_workers={n}"],
    "beam_multi_process": ["--runner=beam", "--num_workers={n}"],
    "beam_in_process": ["--runner=beam", "--beam_pipeline_options=runner=FnApiRunner,"
                        "direct_running_mode=in_memory"],
}


def records_digest(output_dir: str) -> str:
    """SHA-256 over every split's records in file order (TFRecord framing read by hand)."""
    with open(os.path.join(output_dir, shards.MANIFEST), encoding="utf-8") as stream:
        manifest = json.load(stream)
    digest = hashlib.sha256()
    for split, info in manifest["splits"].items():
        digest.update(split.encode())
        for entry in info["files"]:
            with open(os.path.join(output_dir, entry["path"]), "rb") as stream:
                data = stream.read()
            offset = 0
            while offset < len(data):
                (length,) = struct.unpack_from("<Q", data, offset)
                digest.update(data[offset + 12:offset + 12 + length])
                offset += 16 + length
    return digest.hexdigest()


def run_benchmark(dataset_dir: str, num_workers: int, work_dir: str) -> list[dict]:
    rows = []
    for name, extra in RUNS.items():
        output_dir = os.path.join(work_dir, name)
        command = [sys.executable, os.path.join(REPO_ROOT, "tf_convert_data.py"),
                   f"--dataset_dir={dataset_dir}", f"--output_dir={output_dir}",
                   "--need_split=tvt_split", *[f.format(n=num_workers) for f in extra]]
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, cwd=work_dir)
        seconds = time.perf_counter() - start
        if result.returncode:
            raise RuntimeError(f"{name} failed:\n{result.stderr[-3000:]}")
        with open(os.path.join(output_dir, shards.MANIFEST), encoding="utf-8") as stream:
            manifest = json.load(stream)
        images = sum(info["num_examples"] for info in manifest["splits"].values())
        rows.append({"run": name, "images": images, "seconds": seconds,
                     "images_per_second": images / seconds,
                     "shards": sum(len(i["files"]) for i in manifest["splits"].values()),
                     "records_sha256": records_digest(output_dir)})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'run':<20} {'images':>7} {'seconds':>8} {'images/s':>9} {'shards':>6}  records"]
    for row in rows:
        lines.append(f"{row['run']:<20} {row['images']:>7} {row['seconds']:>8.1f} "
                     f"{row['images_per_second']:>9.0f} {row['shards']:>6}  "
                     f"{row['records_sha256'][:12]}")
    local = rows[0]
    for row in rows[1:]:
        lines.append(f"{row['run']} / local time: {row['seconds'] / local['seconds']:.1f}x; "
                     "same records: "
                     f"{'yes' if row['records_sha256'] == local['records_sha256'] else 'NO'}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv  # no positional arguments (parse_flags checked)
    with tempfile.TemporaryDirectory(prefix="beam-bench-") as work_dir:
        dataset_dir = FLAGS.dataset_dir
        if dataset_dir is None:
            tarball = os.path.join(SHARED, "MedNIST-dev.tar.gz")
            if not os.path.isfile(tarball):
                cli.exit_with_error(PROGRAM, f"{tarball} not found; pass --dataset_dir")
            with tarfile.open(tarball) as archive:
                archive.extractall(work_dir, filter="data")
            dataset_dir = os.path.join(work_dir, "MedNIST")
        print(f"{dataset_dir}, {os.cpu_count()} cores, --num_workers={FLAGS.num_workers}")
        try:
            rows = run_benchmark(dataset_dir, FLAGS.num_workers, work_dir)
        except RuntimeError as error:  # a conversion failed: its stderr's end follows
            cli.exit_with_error(PROGRAM, error)
        print(format_table(rows))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
