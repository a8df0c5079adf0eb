"""scripts/quickstart.sh end to end on the shared MedNIST tarball through file://, its
rerun after a bad archive (tiny made-up ones), and a rerun's output (stand-in tools)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile

import pytest

from tests.trainer_fixtures import REPO_ROOT, trainer_env

# Tiny settings: the recipe's flags stay, these later ones win.
TINY_TRAIN_FLAGS = "--max_train_steps=3 --image_size=32 --nosmall_input --batch_size=32"


def _run_quickstart(tmp_path, tarball, md5, *, md5_argument=False):
    """md5 through MEDNIST_MD5, or as the --md5 argument download.py's error names."""
    env = trainer_env()
    env.pop("MEDNIST_MD5", None)
    env.update(TRAIN_FLAGS=TINY_TRAIN_FLAGS, PREDICT_COUNT="4")
    arguments = [f"--url={tarball.as_uri()}", f"--work_dir={tmp_path / 'qs'}"]
    if md5_argument:
        arguments += ["--md5", md5]
    else:
        env["MEDNIST_MD5"] = md5
    return subprocess.run(["bash", str(REPO_ROOT / "scripts" / "quickstart.sh"), *arguments],
                          capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)


def test_quickstart_end_to_end(shared_data, tmp_path):
    tarball = shared_data / "MedNIST-dev.tar.gz"
    md5 = hashlib.md5(tarball.read_bytes()).hexdigest()
    result = _run_quickstart(tmp_path, tarball, md5, md5_argument=True)
    assert result.returncode == 0, result.stderr[-3000:]
    work = tmp_path / "qs"
    manifest = json.loads((work / "data" / "manifest.json").read_text())
    assert sum(s["num_examples"] for s in manifest["splits"].values()) == 35107
    assert set(manifest["splits"]) == {"train", "validation", "test"}
    metrics = json.loads((work / "report" / "metrics.json").read_text())
    assert metrics["num_examples"] == manifest["splits"]["test"]["num_examples"]
    # What misclassified.csv's names are relative to (the records' folder is not it).
    assert metrics["source_dir"] == manifest["flags"]["dataset_dir"]
    with (work / "report" / "misclassified.csv").open() as report:
        wrong = list(csv.DictReader(report))
    assert all(os.path.isfile(os.path.join(metrics["source_dir"], row["file"]))
               for row in wrong)
    assert (work / "report" / "confusion_matrix.png").stat().st_size > 0
    rows = list(csv.DictReader((work / "predictions.csv").open()))
    assert len(rows) == 4 and all(row["status"] == "ok" for row in rows)
    assert "test accuracy" in result.stdout and str(work / "report") in result.stdout


def test_quickstart_wrong_md5_is_a_clear_error(shared_data, tmp_path):
    result = _run_quickstart(tmp_path, shared_data / "MedNIST-dev.tar.gz", "0" * 32)
    assert result.returncode != 0
    assert "md5 mismatch" in result.stderr and "MedNIST-dev.tar.gz" in result.stderr
    assert "--md5=none skips the check" in result.stderr  # and quickstart.sh takes --md5
    assert not (tmp_path / "qs" / "raw").exists()
    assert not os.path.exists(tmp_path / "qs" / "data")


def _tiny_tarball(path, top):
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(f"{top}/Hand/0.jpeg")
        info.size = 40_000
        tar.addfile(info, io.BytesIO(b"x" * info.size))
    return path


@pytest.mark.parametrize("bad, problem", [
    ("truncated", "cannot extract (Compressed file ended before the end-of-stream marker"),
    ("other layout", "no MedNIST/ folder at its top (found Other)")])
def test_a_bad_archive_leaves_nothing_so_a_rerun_with_a_good_url_works(tmp_path, bad, problem):
    good = _tiny_tarball(tmp_path / "good.tar.gz", "MedNIST")
    if bad == "truncated":
        tarball = tmp_path / "bad.tar.gz"
        tarball.write_bytes(good.read_bytes()[:100])
    else:
        tarball = _tiny_tarball(tmp_path / "bad.tar.gz", "Other")
    result = _run_quickstart(tmp_path, tarball, "none")
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"download.py: error: {tarball.as_uri()}: {problem}")
    assert line.endswith(f"; deleted its copy {tmp_path / 'qs' / 'raw'}.tar.gz")
    assert list((tmp_path / "qs").iterdir()) == []  # no raw/, raw.extracting/ or raw.tar.gz
    # The good archive is fetched and extracted; its one fake image then stops the conversion.
    again = _run_quickstart(tmp_path, good, "none")
    assert "== 2/5 converting" in again.stdout and "download.py" not in again.stderr
    assert (tmp_path / "qs" / "raw" / "MedNIST" / "Hand" / "0.jpeg").is_file()


# python's stand-in for a rerun whose data is converted: the trainer and the predictor do
# nothing, dicom_eval.py writes a report with an unrounded accuracy; the rest is real Python.
FAKE_TOOLS = """#!/usr/bin/env bash
case "${1:-}" in
  */dicom_main.py|*/dicom_predict.py) exit 0 ;;
  */dicom_eval.py)
    for arg; do [[ "$arg" == --output_dir=* ]] && report="${arg#*=}"; done
    mkdir -p "$report"
    echo '{"accuracy": 0.2906806894536956, "num_examples": 3}' > "$report/metrics.json"
    echo "test: accuracy 0.2907 on 3 images"; exit 0 ;;
esac
exec "%s" "$@"
"""


def test_a_rerun_says_what_it_skips_and_rounds_the_accuracy(tmp_path):
    bin_dir, work = tmp_path / "bin", tmp_path / "qs"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(FAKE_TOOLS % sys.executable)
    (bin_dir / "python").chmod(0o755)
    (work / "raw" / "MedNIST").mkdir(parents=True)
    (work / "data").mkdir()
    (work / "data" / "manifest.json").write_text('{"splits": {}}')
    env = {**trainer_env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "quickstart.sh"),
                             f"--work_dir={work}"], capture_output=True, text=True, env=env,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    stages = [line for line in result.stdout.splitlines() if line.startswith("== ")]
    # Stage 2 used to print nothing on a rerun: the output jumped from 1/5 to 3/5.
    assert [line[:6] for line in stages] == ["== 1/5", "== 2/5", "== 3/5", "== 4/5", "== 5/5"]
    assert stages[1] == f"== 2/5 already converted in {work / 'data'}; not converted again"
    # The summary's accuracy as dicom_eval.py printed it, not 0.2906806894536956.
    assert re.search(r"^Quickstart finished in \d+ s; test accuracy 0\.2907\.$",
                     result.stdout, re.MULTILINE), result.stdout
