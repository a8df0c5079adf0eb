"""tf_convert_data.py --runner=beam (dataset.beam_convert) against the local converter.

The same conversion through Beam's local runner must give, per split, the same
serialized examples in the same order (shard boundaries may differ), the same
manifest counts and the same skipped/failed files, and still never import TensorFlow.
The shared-data comparison uses 600 of mednist-3000's images (100 per class) to keep
the Beam tests under a minute on two cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf

from benchmarks import beam_bench
from dataset import beam_convert, beam_pipeline, converted
from dataset.convert import ConvertConfig
from dataset.conversion_plan import ConversionError
from dataset.dicom_options import DicomOptions
from dataset.tasks import FileTask, encode_file
from tests.conftest import REPO_ROOT
from tests.test_convert import _bad, convert

if beam_pipeline.beam is None:  # dataset.beam_pipeline itself imports without Beam
    pytest.skip("needs apache-beam (pip install -r requirements-beam.txt)",
                allow_module_level=True)

MULTI_PROCESS = "--direct_running_mode=multi_processing"
IN_PROCESS = "--direct_running_mode=in_memory"  # starts in a second: for the small cases


def convert_beam(dataset_dir, output_dir, mode: str = IN_PROCESS, **overrides) -> dict:
    options = dict(dataset_name="test", dataset_dir=str(dataset_dir), output_dir=str(output_dir),
                   num_workers=2, show_progress=False)
    options.update(overrides)
    args = ["--runner=FnApiRunner", mode, "--direct_num_workers=2",
            "--default_sdk_harness_log_level=WARNING"]
    return beam_convert.convert_dataset_beam(ConvertConfig(**options), args)


def records_by_split(output_dir) -> dict[str, list[bytes]]:
    """Every serialized example per split, in file order; the reader checks the manifest's
    shard sizes and TensorFlow the record CRCs."""
    manifest = converted.read_manifest(str(output_dir))
    return {split: [r.numpy() for r in tf.data.TFRecordDataset(
                [str(Path(output_dir) / f["path"]) for f in info["files"]])]
            for split, info in manifest["splits"].items()}


def assert_same_conversion(local: dict, beam: dict, local_dir, beam_dir) -> None:
    for key in ("classes", "class_variants", "label_tag_agreement", "skipped", "warnings"):
        assert beam[key] == local[key], key
    assert list(beam["splits"]) == list(local["splits"])
    for split, info in local["splits"].items():
        assert beam["splits"][split]["num_examples"] == info["num_examples"]
        assert beam["splits"][split]["class_counts"] == info["class_counts"]
    local_records, beam_records = records_by_split(local_dir), records_by_split(beam_dir)
    for split, records in local_records.items():
        assert beam_records[split] == records, split  # same examples, same order
    assert (Path(beam_dir) / "labels.txt").read_text() == (Path(local_dir) / "labels.txt").read_text()


def test_mednist_subset_matches_local_multi_process(tmp_path, shared_data):
    source = shared_data / "mednist-3000"
    subset = tmp_path / "mednist-600"
    per_class = {}
    for label_file in sorted((source / "labels").iterdir()):
        label = label_file.read_text().strip()
        if per_class.setdefault(label, 0) == 100:
            continue
        per_class[label] += 1
        for folder, path in (("labels", label_file),
                             ("images", source / "images" / f"{label_file.stem}.jpeg")):
            (subset / folder).mkdir(parents=True, exist_ok=True)
            os.symlink(path, subset / folder / path.name)
    # ~0.15 MiB shards: several per split, so the shard assignment is exercised.
    options = dict(need_split="tvt_split", shard_size_mb=0.15)
    local = convert(subset, tmp_path / "local", **options)
    beam = convert_beam(subset, tmp_path / "beam", MULTI_PROCESS, **options)
    assert sum(i["num_examples"] for i in beam["splits"].values()) == 600
    assert len(beam["splits"]["train"]["files"]) > 1
    assert_same_conversion(local, beam, tmp_path / "local", tmp_path / "beam")
    # The staging folder, spill files and all, is gone: only what the manifest names is left.
    listed = {f["path"] for info in beam["splits"].values() for f in info["files"]}
    assert set(os.listdir(tmp_path / "beam")) == listed | {"labels.txt", "manifest.json"}


def test_records_go_to_spill_files_and_the_shard_writer_reads_them_back_in_order(
        tmp_path, make_images_labels_dataset):
    """The records never travel between stages as elements (Beam's local runner kept every
    one in the driver's memory, twice, and a worker held a shard's records at once: 1.45 GB
    for 54 MB of records): EncodeFile spills them per bundle and passes on where they are;
    WriteShard copies them into the shard in order key order."""
    root = make_images_labels_dataset({"Chest": 2, "Hand": 2}, size=16)
    tasks = [FileTask(str(root / "images" / f"{index:06d}.png"), f"images/{index:06d}.png",
                      "image", index // 2, ("Chest", "Hand")[index // 2], "train",
                      bytes([order]) * 16)
             for index, order in enumerate((200, 10, 150, 90))]
    staging = tmp_path / "staging"
    staging.mkdir()
    encode = beam_pipeline._EncodeFile(DicomOptions(), str(staging))
    encode.start_bundle()
    elements = [element for task in tasks for element in encode.process(task)]
    encode.finish_bundle()
    records = {task.order: encode_file(task, DicomOptions())[0] for task in tasks}
    assert [len(r) for r in records.values()] == [1, 1, 1, 1]
    (spill,) = os.listdir(staging)
    data = (staging / spill).read_bytes()
    for split, order, frame, text, name, offset, length in elements:
        assert (split, name) == ("train", spill)
        assert data[offset:offset + length] == records[order][frame]
    assert len(data) == sum(len(r[0]) for r in records.values())
    shard_bytes = len(data) + 1  # one shard
    keyed = [beam_pipeline._shard_of(e, shard_bytes, {"train": len(data)}) for e in elements]
    assert {key for key, _ in keyed} == {("train", 0)}
    row = beam_pipeline._write_shard((("train", 0), [value for _, value in keyed]),
                                     str(staging))
    expected = b"".join(records[order][0] for order in sorted(records))
    assert Path(row["path"]).read_bytes() == expected
    assert (row["num_records"], row["num_bytes"]) == (4, len(expected))
    # A spill file cut short is an error, never a short shard.
    (staging / spill).write_bytes(data[:-1])
    with pytest.raises(OSError, match=f"{spill}: "):
        beam_pipeline._write_shard((("train", 0), [value for _, value in keyed]),
                                   str(staging))


def test_dicom_samples_match_local(tmp_path, shared_data):
    source = shared_data / "dicom-samples"
    options = dict(on_error="skip", layout="images_labels", output_name="all")
    local = convert(source, tmp_path / "local", num_workers=2, **options)
    beam = convert_beam(source, tmp_path / "beam", **options)
    assert local["splits"]["all"]["num_examples"] > 20
    assert_same_conversion(local, beam, tmp_path / "local", tmp_path / "beam")


def test_on_error_fail_and_skip_behave_as_local(tmp_path, make_images_labels_dataset):
    root = make_images_labels_dataset({"Chest": 5, "Hand": 5}, size=16)
    for case in ("image without label", "label without image", "truncated image"):
        _bad(root, case)
    with pytest.raises(ConversionError) as local_error:
        convert(root, tmp_path / "local")
    with pytest.raises(ConversionError) as beam_error:
        convert_beam(root, tmp_path / "beam")
    assert beam_error.value.problems == local_error.value.problems
    assert any("undecodable PNG" in p for p in beam_error.value.problems)  # found by the DoFn
    assert not (tmp_path / "beam").exists()
    local = convert(root, tmp_path / "local", on_error="skip", output_name="all")
    beam = convert_beam(root, tmp_path / "beam", on_error="skip", output_name="all")
    assert len(beam["skipped"]) == 3
    assert_same_conversion(local, beam, tmp_path / "local", tmp_path / "beam")


def test_decode_error_alone_fails_and_writes_nothing(tmp_path, make_images_labels_dataset):
    root = make_images_labels_dataset({"Chest": 3, "Hand": 3}, size=16)
    _bad(root, "zero-byte image")
    with pytest.raises(ConversionError) as error:
        convert_beam(root, tmp_path / "beam")
    assert error.value.problems == ["images/000002.png: zero-byte file"]
    assert not (tmp_path / "beam").exists()


def test_skipped_decode_errors_are_listed_by_path_as_the_local_run_lists_them(
        tmp_path, make_images_labels_dataset):
    """The encode pass runs in record order (a hash of each path): the manifest's and the
    summary's skipped list came out in that order, not the local run's path order."""
    root = make_images_labels_dataset({"Chest": 6, "Hand": 6}, size=16)
    broken = [f"images/{index:06d}.png" for index in range(0, 12, 2)]
    for relpath in broken:  # undecodable: found by the encode pass, not the planning
        data = (root / relpath).read_bytes()
        (root / relpath).write_bytes(data[:len(data) // 2])
    options = dict(on_error="skip", output_name="all")
    local = convert(root, tmp_path / "local", **options)
    beam = convert_beam(root, tmp_path / "beam", **options)
    assert [s["path"] for s in local["skipped"]] == broken
    assert beam["skipped"] == local["skipped"]


def test_a_runner_that_cannot_start_is_one_line_and_writes_nothing(
        tmp_path, make_images_labels_dataset, monkeypatch):
    """E.g. --beam_pipeline_options=runner=FlinkRunner offline: Beam raised a RuntimeError
    with pages of its own frames."""
    root = make_images_labels_dataset({"Chest": 3, "Hand": 3}, size=16)

    def cannot_start(*args):
        raise RuntimeError("Unable to fetch remote job server jar at https://repo/flink.jar: "
                           "<urlopen error [Errno -3]>\nmore of Beam's words")

    monkeypatch.setattr(beam_pipeline, "build_and_run", cannot_start)
    with pytest.raises(ValueError) as error:
        convert_beam(root, tmp_path / "beam")
    assert str(error.value) == ("--runner=beam: the pipeline failed: Unable to fetch remote job "
                                "server jar at https://repo/flink.jar: <urlopen error [Errno -3]>")
    assert not (tmp_path / "beam").exists()


def _blocker(tmp_path, modules: tuple[str, ...]) -> str:
    folder = tmp_path / ("block-" + "-".join(modules))
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import sys\nclass _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {modules!r}:\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, _Block())\n")
    return f"{folder}{os.pathsep}{REPO_ROOT}"


def _cli(tmp_path, dataset_dir, output_dir, blocked: tuple[str, ...], *extra):
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "tf_convert_data.py"), f"--dataset_dir={dataset_dir}",
         f"--output_dir={output_dir}", "--need_split=None", "--output_name=all",
         "--runner=beam", "--num_workers=2", *extra],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env=dict(os.environ, PYTHONPATH=_blocker(tmp_path, blocked)))


def test_cli_beam_never_imports_tensorflow(tmp_path, make_images_labels_dataset):
    """The whole Beam conversion runs with TensorFlow blocked, started from a folder
    other than the repository. In-process runner: Beam's multi-process start-up alone
    takes ~15 s here, and its workers run the same modules."""
    root = make_images_labels_dataset({"Chest": 2, "Hand": 2}, size=20)
    result = _cli(tmp_path, root, tmp_path / "out", ("tensorflow", "keras"),
                  "--beam_pipeline_options=runner=FnApiRunner,direct_running_mode=in_memory")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wrote 4 examples" in result.stdout
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())[
        "splits"]["all"]["num_examples"] == 4


def test_cli_beam_local_workers_print_nothing(tmp_path, make_images_labels_dataset):
    """Beam's local worker processes printed their start-up and shutdown (40 INFO and
    WARNING lines for two workers) above the summary: Beam's own import warning had given
    them a stderr handler at INFO, and --default_sdk_harness_log_level never reaches them."""
    root = make_images_labels_dataset({"Chest": 2, "Hand": 2}, size=20)
    result = _cli(tmp_path, root, tmp_path / "out", ())  # the default: multi-process
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wrote 4 examples" in result.stdout
    assert result.stderr == ""


def test_cli_without_beam_is_one_clear_error(tmp_path, make_images_labels_dataset):
    root = make_images_labels_dataset({"Chest": 2, "Hand": 2}, size=20)
    result = _cli(tmp_path, root, tmp_path / "out", ("apache_beam",))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: --runner=beam needs the apache-beam package: "
        "pip install -r requirements-beam.txt"]
    assert not (tmp_path / "out").exists()
    # The local runner does not need Beam at all.
    local = _cli(tmp_path, root, tmp_path / "out", ("apache_beam",), "--runner=local")
    assert local.returncode == 0, local.stderr[-3000:]


def test_beam_pipeline_options_parse_like_tensorflow_datasets():
    args = beam_convert.pipeline_args("runner=FlinkRunner, flink_master=host:8081,"
                                      "--environment_type=LOOPBACK", 3)
    assert args == ["--runner=FlinkRunner", "--flink_master=host:8081",
                    "--environment_type=LOOPBACK"]
    local = beam_convert.pipeline_args("", 3)
    assert "--runner=FnApiRunner" in local and "--direct_num_workers=3" in local


@pytest.mark.parametrize("options, message", [
    ("bogus", "Beam has no option --bogus"),
    ("direct_num_workrs=2", "Beam has no option --direct_num_workrs (did you mean "
                            "--direct_num_workers?)"),
    ("direct_num_workers=two", "argument --direct_num_workers: invalid int value: 'two'"),
    ("runner=FnApi,direct_running_mode=in_memry", "argument --direct_running_mode: invalid "
     "choice: 'in_memry' (choose from 'in_memory', 'multi_threading', 'multi_processing')"),
])
def test_bad_beam_options_are_one_line_before_anything_runs(options, message):
    with pytest.raises(ValueError) as error:
        beam_pipeline.check_pipeline_args(beam_convert.pipeline_args(options, 1))
    assert str(error.value) == f"--beam_pipeline_options: {message}"


def test_options_beam_forwards_to_a_cluster_runner_are_left_to_it():
    # Beam sends options its Python SDK does not define to the runner's job service (e.g.
    # Flink's checkpointing_interval): only the runner can judge them.
    beam_pipeline.check_pipeline_args(beam_convert.pipeline_args(
        "runner=FlinkRunner,flink_master=host:8081,checkpointing_interval=1000", 1))
    beam_pipeline.check_pipeline_args(beam_convert.pipeline_args("", 1))


def test_cli_refuses_an_unknown_beam_option(tmp_path, make_images_labels_dataset):
    root = make_images_labels_dataset({"Chest": 2, "Hand": 2}, size=20)
    result = _cli(tmp_path, root, tmp_path / "out", (), "--beam_pipeline_options=bogus")
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: --beam_pipeline_options: Beam has no option "
                                          "--bogus"]
    assert not (tmp_path / "out").exists()


def test_beam_bench_times_three_runs_that_wrote_the_same_records(tmp_path,
                                                                 make_images_labels_dataset):
    dataset = make_images_labels_dataset({"Chest": 6, "Hand": 6, "Head": 6}, size=16)
    rows = beam_bench.run_benchmark(str(dataset), 1, str(tmp_path))
    assert [row["run"] for row in rows] == list(beam_bench.RUNS)
    assert all(row["images"] == 18 and row["seconds"] > 0 for row in rows)
    assert len({row["records_sha256"] for row in rows}) == 1
    # The digest is of the records themselves: the reader sees the same 18 examples.
    local = records_by_split(tmp_path / "local")
    assert sum(len(records) for records in local.values()) == 18
    table = beam_bench.format_table(rows)
    assert table.count("same records: yes") == 2 and "NO" not in table


def test_beam_bench_reports_a_failed_conversion_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        beam_bench.main(beam_bench.parse_flags(
            ["beam_bench.py", f"--dataset_dir={tmp_path / 'missing'}"]))
    assert exit_info.value.code == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error[0].startswith("beam_bench.py: error: local failed:")
