"""Converter throughput and memory vs a naive single-process loop, measured in the same run.

  python benchmarks/convert_bench.py [--num_workers=0]

Converts ../shared/data/mednist-3000 (images/ + labels/) and the 35,107 images of
../shared/data/MedNIST-dev.tar.gz (extracted into a temporary folder outside the
repository) with dataset.convert, and with the naive loop of the 2018 converter
(read file -> tf.train.Example -> one TFRecordWriter): ``naive`` decodes each
image once for its height/width/channels like TF-Slim's converter, so it writes
the same features as ours; ``naive_bytes`` skips that (fewer features, no check
that the image decodes), a lower bound on the work. ``ours`` runs with
--num_workers (default: all cores), ``ours_1worker`` with one process, so the
gain from the extra cores is printed next to the gain over the naive loop. Each
conversion runs in its own subprocess; peak memory is the largest resident set
of that subprocess and its workers (wait4 ru_maxrss). Images/s count the
conversion itself, after interpreter start-up; the naive loops' ``import
tensorflow`` (~2 s) is done before their clock starts, a head start in their
favour: ours never imports TensorFlow (TF-free framing), so it has nothing to
exclude. Prints a table, the speed ratio and the 35k/3k memory ratio.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from absl import app, flags  # noqa: E402

from official.utils import cli  # noqa: E402  (absl only: ours runs without TensorFlow)

PROGRAM = "convert_bench.py"
METHODS = ("naive", "naive_bytes", "ours_1worker", "ours")
SHARED = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data")
FLAGS = cli.program_flags()
flags.DEFINE_integer("num_workers", 0, "0: all cores", flag_values=FLAGS)
flags.DEFINE_string("small", os.path.join(SHARED, "mednist-3000"), "The small dataset folder "
                    "(images/ + labels/).", flag_values=FLAGS)
flags.DEFINE_string("tarball", os.path.join(SHARED, "MedNIST-dev.tar.gz"), "The large "
                    "dataset, extracted into a temporary folder.", flag_values=FLAGS)
# What measure() passes to the subprocess that runs one peer.
flags.DEFINE_enum("child", None, METHODS, "internal: run one peer", flag_values=FLAGS)
flags.DEFINE_string("dataset_dir", None, "internal: the child's input", flag_values=FLAGS)
flags.DEFINE_string("output_dir", None, "internal: the child's output", flag_values=FLAGS)
parse_flags = cli.flags_parser(PROGRAM, FLAGS, doc=__doc__)


def _inputs(dataset_dir: str) -> list[tuple[str, str, str]]:
    """(absolute path, relative path, label) for both MedNIST layouts."""
    items = []
    images = os.path.join(dataset_dir, "images")
    if os.path.isdir(images):
        for name in sorted(os.listdir(images)):
            stem = os.path.splitext(name)[0]
            with open(os.path.join(dataset_dir, "labels", stem + ".txt"), encoding="utf-8") as f:
                items.append((os.path.join(images, name), "images/" + name, f.read().strip()))
        return items
    for label in sorted(os.listdir(dataset_dir)):
        for name in sorted(os.listdir(os.path.join(dataset_dir, label))):
            items.append((os.path.join(dataset_dir, label, name), f"{label}/{name}", label))
    return items


def naive(dataset_dir: str, output_dir: str, decode: bool) -> int:
    """The 2018 loop. With ``decode``, each image is decoded once (as TF-Slim's
    ImageReader did) to fill image/height, width and channels, so it writes the
    same features as ours and rejects undecodable files; without, bytes only."""
    import tensorflow as tf

    items = _inputs(dataset_dir)
    classes = sorted({label for _, _, label in items})
    os.makedirs(output_dir, exist_ok=True)

    def _bytes(value: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _int64(value: int):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    with tf.io.TFRecordWriter(os.path.join(output_dir, "naive.tfrecord")) as writer:
        for path, relpath, label in items:
            with open(path, "rb") as handle:
                data = handle.read()
            feature = {
                "image/encoded": _bytes(data), "image/format": _bytes(b"jpeg"),
                "image/class/label": _int64(classes.index(label)),
                "image/class/text": _bytes(label.encode()),
                "image/filename": _bytes(relpath.encode())}
            if decode:
                height, width, channels = tf.io.decode_image(data).shape
                feature.update({"image/height": _int64(height), "image/width": _int64(width),
                                "image/channels": _int64(channels)})
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())
    return len(items)


def ours(dataset_dir: str, output_dir: str, num_workers: int) -> int:
    from dataset.convert import ConvertConfig, convert_dataset

    manifest = convert_dataset(ConvertConfig(
        dataset_name="bench", dataset_dir=dataset_dir, output_dir=output_dir,
        need_split="tvt_split", num_workers=num_workers, show_progress=False))
    return sum(info["num_examples"] for info in manifest["splits"].values())


def child(method: str, dataset_dir: str, output_dir: str, num_workers: int) -> None:
    if not method.startswith("ours"):
        import tensorflow  # noqa: F401  the peers' start-up, paid before their clock

    start = time.perf_counter()
    if method == "ours":
        count = ours(dataset_dir, output_dir, num_workers)
    elif method == "ours_1worker":
        count = ours(dataset_dir, output_dir, 1)
    else:
        count = naive(dataset_dir, output_dir, decode=method == "naive")
    print(json.dumps({"images": count, "seconds": time.perf_counter() - start}))


def measure(method: str, dataset_dir: str, num_workers: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="convert-bench-out-") as output_dir:
        process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), f"--child={method}",
             f"--dataset_dir={dataset_dir}", f"--output_dir={output_dir}",
             f"--num_workers={num_workers}"],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        stdout = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode:
            raise RuntimeError(f"{method} on {dataset_dir} failed with exit code "
                               f"{process.returncode}")
        result = json.loads(stdout.decode().strip().splitlines()[-1])
    result["peak_mb"] = usage.ru_maxrss / 1024  # Linux reports KiB
    return result


def run_benchmark(datasets: dict[str, str], num_workers: int,
                  methods: tuple[str, ...] = METHODS) -> dict:
    """Converts each named dataset folder with each method, one subprocess at a time;
    returns {(dataset name, method): {"images", "seconds", "peak_mb"}}."""
    return {(name, method): measure(method, dataset_dir, num_workers)
            for name, dataset_dir in datasets.items() for method in methods}


def format_table(rows: dict, num_workers: int) -> str:
    workers = num_workers or os.cpu_count()
    lines = [f"cores: {os.cpu_count()}, workers: {workers} (ours_1worker: 1); load average "
             "(1/5/15 min) " + " ".join(f"{v:.2f}" for v in os.getloadavg()),
             f"{'dataset':8} {'method':13} {'images':>7} {'seconds':>8} {'images/s':>9} "
             f"{'peak MB':>8}"]
    for (name, method), row in rows.items():
        lines.append(f"{name:8} {method:13} {row['images']:7d} {row['seconds']:8.2f} "
                     f"{row['images'] / row['seconds']:9.0f} {row['peak_mb']:8.0f}")
    names = list(dict.fromkeys(name for name, _ in rows))
    for name in names:
        speed = {method: row["images"] / row["seconds"]
                 for (row_name, method), row in rows.items() if row_name == name}
        if "ours" not in speed:
            continue
        parts = []
        if "naive" in speed:
            parts.append(f"ours / naive speed = {speed['ours'] / speed['naive']:.2f}x (same "
                         "features, each image decoded once)")
        if "naive_bytes" in speed:
            parts.append(f"ours / naive_bytes = {speed['ours'] / speed['naive_bytes']:.2f}x "
                         "(no decode, no dims)")
        if "ours_1worker" in speed:
            gain = speed["ours"] / speed["ours_1worker"]
            parts.append(f"ours / ours_1worker = {gain:.2f}x on {workers} workers "
                         f"({gain / workers:.0%} of linear scaling)")
        lines.append(f"{name}: " + "; ".join(parts))
    if len(names) == 2 and all((name, "ours") in rows for name in names):
        small, large = names
        lines.append(f"peak memory ours {large} / {small} = "
                     f"{rows[large, 'ours']['peak_mb'] / rows[small, 'ours']['peak_mb']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv  # no positional arguments (parse_flags checked)
    if FLAGS.child:
        child(FLAGS.child, FLAGS.dataset_dir, FLAGS.output_dir, FLAGS.num_workers)
        return
    if FLAGS.num_workers < 0:
        cli.exit_with_error(PROGRAM, f"--num_workers={FLAGS.num_workers}: must be >= 0 (0: all "
                            "cores)", status=2)
    for flag, path, isdir in (("--small", FLAGS.small, True),
                              ("--tarball", FLAGS.tarball, False)):
        if not (os.path.isdir(path) if isdir else os.path.isfile(path)):
            cli.exit_with_error(PROGRAM, f"{flag}={path}: not found", status=2)
    with tempfile.TemporaryDirectory(prefix="convert-bench-mednist-") as extracted:
        with tarfile.open(FLAGS.tarball) as archive:
            archive.extractall(extracted, filter="data")
        try:
            rows = run_benchmark({"3k": FLAGS.small,
                                  "35k": os.path.join(extracted, "MedNIST")},
                                 FLAGS.num_workers)
        except RuntimeError as error:  # a peer's subprocess failed
            cli.exit_with_error(PROGRAM, error)
    print(format_table(rows, FLAGS.num_workers), flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
