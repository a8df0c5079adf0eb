"""scripts/recipe_organamnist.sh (members exported as one ensemble) and
scripts/holdout_organamnist.sh (the recipe scored on held-out slice groups), on tiny archives
in OrganAMNIST's layout: the wiring, not accuracy."""

from __future__ import annotations

import csv
import json
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from dataset import reader
from tests.conftest import write_image
from tests.trainer_fixtures import REPO_ROOT, class_image, trainer_env

FLAGS = ("--max_train_steps=1", "--image_size=32", "--batch_size=8", "--hooks=",
         "--num_parallel_calls=2")


def _bash(script: str, *args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO_ROOT / "scripts" / script), *args],
                          capture_output=True, text=True, env={**trainer_env(), **env},
                          timeout=600, cwd=cwd)


def _archive(tmp_path: Path, counts: dict[str, int], series: int = 1) -> Path:
    """OrganAMNIST/<split>/<class>/<split><n>_<label>.png for two kidney classes, as a tarball.

    With series > 1 each class's images are that many runs of near-identical 'slices' (a
    random picture per run, plus a little noise), as neighbouring slices of different scans
    are."""
    rng = np.random.default_rng(0)
    for split, count in counts.items():
        for index, name in enumerate(("kidney-left", "kidney-right")):
            scans = [rng.uniform(0, 255, (28, 28)) for _ in range(series)]
            for number in range(count):
                image = scans[number % series] + rng.normal(0, 2, (28, 28)) if series > 1 \
                    else class_image(rng, index, 28)
                folder = tmp_path / "OrganAMNIST" / split / name
                write_image(folder / f"{split}{number}_{index}.png",
                            np.clip(image, 0, 255).astype(np.uint8))
    with tarfile.open(tmp_path / "organ.tar.gz", "w:gz") as archive:
        archive.add(tmp_path / "OrganAMNIST", arcname="OrganAMNIST")
    return tmp_path / "organ.tar.gz"


def test_organamnist_recipe_trains_its_members_and_exports_one_ensemble(tmp_path):
    """A tiny archive in OrganAMNIST's layout, one step per member: the wiring, not accuracy."""
    tarball = _archive(tmp_path, {"train": 8, "val": 2})
    work = tmp_path / "work"
    flags = FLAGS
    env = {"ORGANAMNIST_TAR": str(tarball)}  # two members unless ORGANAMNIST_MEMBERS says
    result = _bash("recipe_organamnist.sh", str(work), *flags, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (version,) = list((work / "export").iterdir())
    config = json.loads((version / "assets.extra" / "config.json").read_text())
    assert [member["source"] for member in config["ensemble"]] == [
        str(work / "model_1"), str(work / "model_2")]
    seeds = [json.loads((work / f"model_{k}" / "config.json").read_text())["seed"] for k in (1, 2)]
    assert seeds == [1, 2]  # two different members, not one model twice
    budget = json.loads((work / "model_1" / "config.json").read_text())["budget"]
    assert budget["seconds"] == 800 and budget["max_train_epochs"] == 8  # the recipe's cap
    assert "training (incl. start-up and validation): " in result.stdout
    metrics = json.loads((work / "eval_validation" / "metrics.json").read_text())
    assert metrics["num_examples"] == 4
    swaps = metrics["left_right_swaps"]["kidney-left/kidney-right"]
    assert (f"left/right swaps kidney-left/kidney-right: {swaps['left_to_right']} left->right, "
            f"{swaps['right_to_left']} right->left") in result.stdout


def test_holdout_trains_the_recipe_on_some_slice_groups_and_scores_the_others(tmp_path):
    tarball = _archive(tmp_path, {"train": 12, "val": 2}, series=3)
    work = tmp_path / "work"
    # One member: the recipe's test above covers several; the split is what is tested here.
    env = {"ORGANAMNIST_TAR": str(tarball), "HOLDOUT_SIZE": "0.5", "ORGANAMNIST_MEMBERS": "1"}
    result = _bash("holdout_organamnist.sh", str(work), *FLAGS, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(work / "holdout_groups.csv", newline="") as handle:
        groups = {row["file"]: row["group"] for row in csv.DictReader(handle)}
    assert len(groups) == 24 and len(set(groups.values())) == 6  # 3 runs per class found
    assert all(file.startswith("kidney-") for file in groups)
    manifest = json.loads((work / "holdout_data" / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"train", "test"}  # the official val split is not used
    # No slice group on both sides: the held-out images' groups are absent from training.
    data = str(work / "holdout_data")
    held_out = {groups[name] for name in reader.split_filenames(data, "test")}
    trained = {groups[name] for name in reader.split_filenames(data, "train")}
    assert held_out and trained and not held_out & trained
    config = json.loads((work / "holdout_model_1" / "config.json").read_text())
    assert config["budget"]["seconds"] == 800 and config["seed"] == 1  # the recipe's flags
    assert not (work / "holdout_model_2").exists()
    metrics = json.loads((work / "holdout_eval" / "metrics.json").read_text())
    assert metrics["split"] == "test"
    assert metrics["num_examples"] == manifest["splits"]["test"]["num_examples"]
    assert f"recall per class on {metrics['num_examples']} test images:" in result.stdout
    assert "commonest confusions (true->predicted): " in result.stdout
    # A rerun converts nothing again (a bad extra flag then stops it at the trainer, cheaply).
    stamps = [(work / name).stat().st_mtime_ns
              for name in ("holdout_groups.csv", "holdout_data/manifest.json")]
    again = _bash("holdout_organamnist.sh", str(work), *FLAGS, "--resnet_size=7", env=env,
                  cwd=tmp_path)
    assert again.returncode == 2 and "--resnet_size" in again.stderr.splitlines()[-1]
    assert "slice_groups" not in again.stdout and "wrote" not in again.stdout
    assert [(work / name).stat().st_mtime_ns
            for name in ("holdout_groups.csv", "holdout_data/manifest.json")] == stamps


@pytest.mark.parametrize("script", ["recipe_organamnist.sh", "holdout_organamnist.sh"])
def test_a_bad_or_missing_archive_is_one_line_and_leaves_no_half_extraction(script, tmp_path):
    (tmp_path / "bad.tar.gz").write_text("not an archive")
    work = tmp_path / "work"
    bad, missing = tmp_path / "bad.tar.gz", tmp_path / "missing.tar.gz"
    for tarball, line in ((bad, f"{bad}: not a tarball holding OrganAMNIST/"),
                          (missing, f"{missing} not found (set ORGANAMNIST_TAR)")):
        result = _bash(script, str(work), env={"ORGANAMNIST_TAR": str(tarball)}, cwd=tmp_path)
        assert result.returncode == 1
        assert result.stderr.splitlines() == [f"{script}: error: {line}"]
        assert not (work / "raw" / "OrganAMNIST").exists()
        assert not list((work / "raw").glob(".extracting*"))  # the staging folder is gone


@pytest.mark.parametrize("script", ["recipe_organamnist.sh", "holdout_organamnist.sh"])
def test_a_bad_member_count_is_one_line_before_any_work(script, tmp_path):
    work = tmp_path / "work"
    for members in ("two", "0", "-1"):
        result = _bash(script, str(work), env={"ORGANAMNIST_MEMBERS": members}, cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr.splitlines() == [
            f"{script}: error: ORGANAMNIST_MEMBERS={members}: not a positive number"]
        assert not work.exists()
