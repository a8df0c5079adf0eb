"""What reaches stderr when TensorFlow's decoder refuses an image: the program's own lines, not
libjpeg's and TensorFlow's about it (official/utils/decoder_noise.py), and never less than
that: a genuine message, even of a process that dies mid-call, still gets through."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import textwrap

import numpy as np

from official.utils.decoder_noise import without_noise
from tests.conftest import write_image
from tests.test_predict_errors import PREDICT, _jpeg_only_tensorflow_refuses
from tests.trainer_fixtures import REPO_ROOT, class_image, trainer_env

# What a refused JPEG printed, once for its batch and once alone (TensorFlow 2.21).
LIBJPEG = b"Corrupt JPEG data: premature end of data segment\nInput file read error\n"
TF_ABORT = (b"W0000 00:00:1796599067.052835   28229 local_rendezvous.cc:412] Local rendezvous is "
            b"aborting with status: INVALID_ARGUMENT: jpeg::Uncompress failed. Invalid JPEG "
            b"data or crop window.\n\t [[{{function_node __inference_map_while_body_8625_144}}"
            b"{{node map/while/decode_image/DecodeImage}}]]\n")
NOISE_MARKS = ("Corrupt JPEG data", "Input file read error", "Local rendezvous", "[[{{",
               "jpeg::Uncompress")


def test_only_the_decoders_lines_about_a_refused_image_are_noise():
    genuine = (b"W0000 00:00:1.5   7 local_rendezvous.cc:412] Local rendezvous is aborting with "
               b"status: RESOURCE_EXHAUSTED: OOM when allocating tensor\n"
               b"\t [[{{node conv2d/Conv2D}}]]\n"  # the context of a line that stays, stays
               b"Insufficient memory (case 4)\n"  # libjpeg, but no damaged image
               b"Traceback (most recent call last):\n"
               b"Corrupt JPEG data: premature end of data segment, said a user\n"
               b"progress 10%\r")
    assert without_noise(LIBJPEG + TF_ABORT + genuine + TF_ABORT) == genuine
    assert without_noise(b"Corrupt JPEG data: 3 extraneous bytes before marker 0xd9\n"
                         b"Premature end of JPEG file\nNot a JPEG file: starts with 0x89 0x50\n"
                         b"Unsupported marker type 0xe0\nBogus marker length\n") == b""


def _run(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          cwd=REPO_ROOT, timeout=60, env=trainer_env())


def test_a_refused_calls_noise_is_dropped_and_everything_else_kept_in_order():
    result = _run(f"""
        import os, sys
        from official.utils.decoder_noise import DecoderNoise

        with DecoderNoise() as noise:
            print("before", file=sys.stderr)
            try:
                with noise.dropped_if(ValueError):
                    os.write(2, {LIBJPEG!r})
                    print("a Python warning during the call", file=sys.stderr)
                    os.write(2, {TF_ABORT!r})
                    raise ValueError
            except ValueError:
                print("between", file=sys.stderr)
            with noise.dropped_if(ValueError):  # decoded after all: its warning stays
                os.write(2, b"Corrupt JPEG data: bad Huffman code\\n")
            try:
                with noise.dropped_if(ValueError):  # another failure: everything stays
                    os.write(2, {TF_ABORT!r})
                    raise KeyError("a bug")
            except KeyError:
                pass
        print("after", file=sys.stderr)
        """)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == (b"before\na Python warning during the call\nbetween\n"
                             b"Corrupt JPEG data: bad Huffman code\n" + TF_ABORT + b"after\n")


def test_what_a_process_that_dies_inside_a_call_printed_still_reaches_stderr():
    # An abort (a failed CHECK in TensorFlow) ends the process before the call's end; the
    # relay, a process of its own, then writes out what it held, noise and all.
    result = _run(f"""
        import os
        from official.utils.decoder_noise import DecoderNoise

        with DecoderNoise() as noise:
            with noise.dropped_if(ValueError):
                os.write(2, {LIBJPEG!r} + b"F0000 check failed: the real reason\\n")
                os.abort()
        """)
    assert result.returncode < 0  # SIGABRT
    assert result.stderr == LIBJPEG + b"F0000 check failed: the real reason\n"


def test_a_killed_relay_ends_the_filtering_not_the_program():
    result = _run("""
        import os
        from official.utils.decoder_noise import DecoderNoise

        with DecoderNoise() as noise:
            noise._relay.kill()
            noise._relay.wait()
            try:
                with noise.dropped_if(ValueError):
                    os.write(2, b"Input file read error\\n")
                    raise ValueError
            except ValueError:  # not a BrokenPipeError
                os.write(2, b"the program goes on\\n")
        """)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b"Input file read error\nthe program goes on\n"


def test_prediction_of_a_folder_with_an_image_tensorflow_refuses_says_only_its_own_lines(
        trained, tmp_path):
    """libjpeg's and TensorFlow's lines about the image (8 of them: its batch, then it alone)
    came above the summary and read like a crash; the row already says why."""
    folder = tmp_path / "in"
    rng = np.random.default_rng(0)
    write_image(folder / "a.jpeg", class_image(rng, 0, 32))
    write_image(folder / "b.png", class_image(rng, 1, 32))
    bad = folder / "bad.jpeg"
    bad.write_bytes(_jpeg_only_tensorflow_refuses((folder / "a.jpeg").read_bytes()))
    out = tmp_path / "p.csv"
    env = trainer_env()
    del env["TF_CPP_MIN_LOG_LEVEL"]  # as a user runs it: TensorFlow's warnings shown
    result = subprocess.run([sys.executable, str(PREDICT), f"--model={trained['export']}",
                             f"--output_csv={out}", str(folder)], capture_output=True,
                            text=True, cwd=REPO_ROOT, timeout=180, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [mark for mark in NOISE_MARKS if mark in result.stderr] == [], result.stderr
    assert f"dicom_predict.py: warning: 1 of 3 files failed; their rows in the CSV {out} say why" \
        in result.stderr.splitlines()
    assert result.stdout.splitlines()[0] == (f"3 files: 2 ok, 0 uncertain, 1 error; "
                                             f"predictions in {out}")
    rows = {row["file"]: row for row in csv.DictReader(out.open())}
    assert rows[str(bad)]["status"] == "error"
    assert rows[str(bad)]["error"] == (f"{bad}: TensorFlow cannot decode it (jpeg::Uncompress "
                                       "failed. Invalid JPEG data or crop window.)")


def test_evaluation_of_a_record_tensorflow_refuses_is_one_line_without_the_decoders(
        trained, tmp_path):
    """The same 8 lines came above evaluation's one error line naming the record."""
    import hashlib
    import io
    import json

    import tensorflow as tf
    from PIL import Image

    from dataset.features import serialize_example
    from tests.trainer_fixtures import TRAINED_CLASSES, write_converted_dataset

    data = write_converted_dataset(tmp_path / "data", {"validation": {"Chest": 3, "Hand": 3}},
                                   classes=TRAINED_CLASSES)
    good = io.BytesIO()
    Image.fromarray(class_image(np.random.default_rng(1), 0, 32)).save(good, format="JPEG")
    bad = serialize_example(encoded=_jpeg_only_tensorflow_refuses(good.getvalue()),
                            image_format="jpeg", label=0, text="Chest", height=32, width=32,
                            channels=1, filename="images/bad.jpeg")
    manifest = json.loads((data / "manifest.json").read_text())
    entry = manifest["splits"]["validation"]["files"][0]
    shard = data / entry["path"]
    records = [record.numpy() for record in tf.data.TFRecordDataset(str(shard))]
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for record in records[:2] + [bad] + records[2:]:
            writer.write(record)
    entry.update(num_records=len(records) + 1, num_bytes=shard.stat().st_size,
                 sha256=hashlib.sha256(shard.read_bytes()).hexdigest())
    manifest["splits"]["validation"]["num_examples"] += 1
    manifest["splits"]["validation"]["class_counts"]["Chest"] += 1
    (data / "manifest.json").write_text(json.dumps(manifest))
    env = trainer_env()
    del env["TF_CPP_MIN_LOG_LEVEL"]
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "networks/resnet/dicom_eval.py"),
         f"--model={trained['export']}", f"--data_dir={data}", "--split=validation",
         f"--output_dir={tmp_path / 'report'}"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=180, env=env)
    assert result.returncode == 1, result.stderr[-3000:]
    *before, error = result.stderr.splitlines()  # the error quotes TensorFlow's reason
    assert [mark for mark in NOISE_MARKS if mark in "\n".join(before)] == [], result.stderr
    assert error == (
        f"dicom_eval.py: error: {data}: split validation's record of images/bad.jpeg: "
        "TensorFlow cannot decode it (jpeg::Uncompress failed. Invalid JPEG data or crop "
        "window.); convert the data again without that file")
    assert not (tmp_path / "report").exists()


def test_a_ctrl_c_as_the_relay_starts_neither_kills_it_nor_prints_its_traceback():
    """The terminal sends a Ctrl-C to the whole process group. In the relay's first ~30 ms
    (its Python starting, before it ignores the signal) one killed it: the filtering was off
    for the rest of the run (a Ctrl-C within ~5 ms), or its startup's KeyboardInterrupt
    traceback, ten lines, came below the program's one line (within ~10-35 ms)."""
    for delay in (0.0, 0.005, 0.01, 0.02, 0.03):
        result = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            import os, signal, sys, time
            from official.utils.decoder_noise import DecoderNoise

            with DecoderNoise() as noise:
                try:
                    time.sleep({delay})
                    os.killpg(0, signal.SIGINT)  # the group: the program and its relay
                    time.sleep(1)
                except KeyboardInterrupt:
                    print("interrupted", file=sys.stderr)
                try:
                    with noise.dropped_if(ValueError):  # still filtered: the relay is alive
                        os.write(2, {LIBJPEG!r})
                        raise ValueError
                except ValueError:
                    pass
            """)], capture_output=True, cwd=REPO_ROOT, timeout=60, env=trainer_env(),
            start_new_session=True,  # its own group: the test's stays out of it
            # Ctrl-C's default, as a terminal's program has: a test runner started in the
            # background ignores SIGINT, and its children inherit that.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        assert (result.returncode, result.stderr) == (0, b"interrupted\n"), delay


def test_a_call_printing_tens_of_megabytes_is_relayed_whole_in_linear_time(tmp_path):
    """The relay searched the whole of a call's output for its end mark at every 64 KiB read:
    32 MiB took 9 s, 64 MiB over the 30 s the call's end waits (its lines then came after
    the program's next ones). Now 0.2 s for 64 MiB; the bound leaves a loaded machine room."""
    line = b"I0000 vlog " + b"x" * 1000 + b"\n"
    err = tmp_path / "err"
    with err.open("wb") as stderr:
        result = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            import os, sys, time
            from official.utils.decoder_noise import DecoderNoise

            with DecoderNoise() as noise:
                start = time.monotonic()
                with noise.dropped_if(ValueError):
                    for _ in range(64 * 1024):
                        os.write(2, {line!r})
                print(time.monotonic() - start)
                os.write(2, b"after\\n")
            """)], stdout=subprocess.PIPE, stderr=stderr, cwd=REPO_ROOT, timeout=120,
            env=trainer_env())
    assert result.returncode == 0, err.read_bytes()[-2000:]
    assert float(result.stdout) < 8.0
    assert err.read_bytes() == line * (64 * 1024) + b"after\n"
