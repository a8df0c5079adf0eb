"""No patient identifier of any input DICOM appears in any output byte of a conversion.

The corpus is pydicom's and pydicom-data's bundled files with pixel data (those under 1 MB,
to keep the test fast; the DICOM unit tests cover the large ones), copied under neutral
names so that a file name cannot carry a UID, plus ../shared/data/dicom-samples when present.
The converter runs as a program, so its logs and summary are scanned too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.dicom_identifiers import identifiers, pixel_files
from tests.trainer_fixtures import REPO_ROOT, trainer_env

MAX_BYTES = 1 << 20


def _convert(dataset_dir, output_dir, *extra):
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "tf_convert_data.py"), f"--dataset_dir={dataset_dir}",
         f"--output_dir={output_dir}", "--on_error=skip", "--layout=images_labels",
         "--num_workers=2", *extra],
        capture_output=True, text=True, env=trainer_env(), timeout=600)


def _assert_no_identifier(secrets: dict[str, str], output_dir, result) -> int:
    blobs = {path.name: path.read_bytes() for path in output_dir.iterdir() if path.is_file()}
    blobs["stdout"] = result.stdout.encode()
    blobs["stderr"] = result.stderr.encode()
    for secret, source in secrets.items():
        needle = secret.encode()
        leaks = [name for name, data in blobs.items() if needle in data]
        assert not leaks, f"identifier of {source} found in {leaks}"
    return len(blobs)


@pytest.mark.parametrize("label_source", ["labels", "tag"])
def test_bundled_corpus_leaves_no_identifier(tmp_path, label_source):
    root = tmp_path / "corpus"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    secrets = {}
    sources = [path for path in pixel_files() if path.stat().st_size <= MAX_BYTES]
    for index, path in enumerate(sources):
        stem = f"f{index:03d}"
        shutil.copy(path, root / "images" / f"{stem}.dcm")
        (root / "labels" / f"{stem}.txt").write_text(("Head", "Chest")[index % 2])
        secrets.update(dict.fromkeys(identifiers(path), path.name))
    assert len(sources) > 50 and len(secrets) > 100
    result = _convert(root, tmp_path / "out", f"--label_source={label_source}")
    assert result.returncode == 0, result.stderr[-2000:]
    print(f"{len(sources)} files, {len(secrets)} identifiers, "
          f"{_assert_no_identifier(secrets, tmp_path / 'out', result)} outputs scanned")


@pytest.mark.parametrize("label_source", ["labels", "tag"])
def test_shared_dicom_samples_both_label_sources(shared_data, tmp_path, label_source):
    source = shared_data / "dicom-samples"
    secrets = {}
    for path in sorted((source / "images").iterdir()):
        secrets.update(dict.fromkeys(identifiers(path), path.name))
    result = _convert(source, tmp_path / "out", f"--label_source={label_source}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "label file x BodyPartExamined tag:" in result.stdout
    print(result.stdout[result.stdout.index("label file x"):])
    _assert_no_identifier(secrets, tmp_path / "out", result)
