"""benchmarks/kfold_eval.py: folds that cover the archive once, the summary's arithmetic, one
fold run end to end on a tiny class-folder archive (its progress lines on stderr), and a
work_dir that refuses folds of other settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import kfold_eval
from tests.conftest import one_error_line
from tests.trainer_fixtures import FAST_FLAGS, REPO_ROOT, class_image, png_bytes, trainer_env


def _archive(root, per_class: int = 12, classes=("Chest", "Hand")):
    rng = np.random.default_rng(0)
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            (root / name / f"{k:03d}.png").write_bytes(png_bytes(class_image(rng, index, 32)))
    return root


def test_every_file_is_in_exactly_one_validation_fold(tmp_path):
    archive = _archive(tmp_path / "archive", per_class=40)
    items = kfold_eval.list_archive(str(archive))
    assert len(items) == 80
    seen = []
    for fold in range(4):
        layout = tmp_path / f"layout_{fold}"
        kfold_eval.make_fold_layout(str(archive), items, fold, 4, "s", str(layout))
        val = {(c, f) for c in ("Chest", "Hand") for f in os.listdir(layout / "val" / c)}
        train = {(c, f) for c in ("Chest", "Hand") for f in os.listdir(layout / "train" / c)}
        assert not val & train and len(val | train) == 80
        assert os.path.realpath(layout / "val" / next(iter(val))[0] / next(iter(val))[1]) == \
            str((archive / next(iter(val))[0] / next(iter(val))[1]).resolve())
        seen += sorted((c, f"{c}/{f}") for c, f in val)
    assert sorted(seen) == sorted(items)  # each file validated once
    sizes = [sum(kfold_eval.fold_of(f, 4, "s") == k for _, f in items) for k in range(4)]
    assert min(sizes) >= 10  # a hash, roughly even
    # The fold depends on the path and the salt, not on the listing order: the files listed
    # backwards give fold 0 the same files.
    backwards = tmp_path / "backwards"
    kfold_eval.make_fold_layout(str(archive), items[::-1], 0, 4, "s", str(backwards))
    assert {p.relative_to(backwards) for p in backwards.rglob("*.png")} == {
        p.relative_to(tmp_path / "layout_0") for p in (tmp_path / "layout_0").rglob("*.png")}
    # Nor on the process (a later run reuses the folds in its work_dir), as Python's str hash
    # would be: it differs from one process to the next.
    program = ("import sys; from benchmarks import kfold_eval\n"
               "print([kfold_eval.fold_of(f, 4, 's') for f in sys.argv[1:]])")
    other_runs = {subprocess.run([sys.executable, "-c", program, *(f for _, f in items)],
                                 capture_output=True, text=True, check=True, cwd=REPO_ROOT,
                                 env={**os.environ, "PYTHONHASHSEED": seed}).stdout
                  for seed in ("1", "2")}
    assert other_runs == {f"{[kfold_eval.fold_of(f, 4, 's') for _, f in items]}\n"}
    assert [kfold_eval.fold_of(f, 4, "t") for _, f in items] != \
        [kfold_eval.fold_of(f, 4, "s") for _, f in items]


def test_copies_under_other_names_are_in_one_fold(tmp_path):
    archive = _archive(tmp_path / "archive", per_class=12)
    for k in range(12):  # each Chest image again under a Hand name: a copy and a bad label
        (archive / "Hand" / f"again{k:03d}.png").write_bytes(
            (archive / "Chest" / f"{k:03d}.png").read_bytes())
    items = kfold_eval.list_archive(str(archive))
    keys = kfold_eval.fold_keys(str(archive), items)
    assert all(keys[f"Hand/again{k:03d}.png"] == keys[f"Chest/{k:03d}.png"] for k in range(12))
    # By path, 12 pairs in 3 folds would all share a fold with probability 3**-12.
    assert all(kfold_eval.fold_of(keys[f"Hand/again{k:03d}.png"], 3, "s")
               == kfold_eval.fold_of(keys[f"Chest/{k:03d}.png"], 3, "s") for k in range(12))
    settings = kfold_eval.fold_settings(str(archive), items, 3, "s", [], keys)
    assert settings["copies_fold_with"] == ("24 file(s) in a fold key joined with copies of "
                                            "their images")
    assert "copies_fold_with" not in kfold_eval.fold_settings(
        str(archive), items, 3, "s", [], kfold_eval.fold_keys(str(archive), items[:24]))


def test_one_scan_under_two_pseudonyms_is_in_one_fold_and_recorded(tmp_path):
    """The same pixels under two PatientIDs: one fold key, and kfold_settings.json says so
    (counting keys other than a file's own path missed a patient joined into another, and
    a work_dir of folds cut before would have been reused)."""
    from tests.dicom_fixtures import write_dicom

    rng = np.random.default_rng(0)
    for name in ("Chest", "Hand"):
        (tmp_path / "archive" / name).mkdir(parents=True)
        for k in range(6):
            pixels = rng.integers(0, 255, (8, 8), dtype=np.uint8)
            for pseudonym in ("A", "B"):
                write_dicom(tmp_path / "archive" / name / f"{pseudonym}{k}.dcm", pixels,
                            PatientID=f"{pseudonym}-{name}-{k}")
    items = kfold_eval.list_archive(str(tmp_path / "archive"))
    keys = kfold_eval.fold_keys(str(tmp_path / "archive"), items)
    assert len(set(keys.values())) == 12
    assert all(keys[f"{name}/A{k}.dcm"] == keys[f"{name}/B{k}.dcm"]
               for name in ("Chest", "Hand") for k in range(6))
    settings = kfold_eval.fold_settings(str(tmp_path / "archive"), items, 3, "s", [], keys)
    assert settings["copies_fold_with"] == ("24 file(s) in a fold key joined with copies of "
                                            "their images")


def test_a_dicom_patient_is_in_one_fold(tmp_path):
    """Folds were cut by path: a patient's other images trained the model scoring it."""
    from tests.dicom_fixtures import write_dicom

    archive = tmp_path / "archive"
    for patient in range(6):
        for k in range(3):
            for name in ("Chest", "Hand"):
                (archive / name).mkdir(parents=True, exist_ok=True)
                write_dicom(archive / name / f"p{patient}_{k}.dcm",
                            np.full((8, 8), patient * 40, np.uint8), PatientID=f"P{patient}")
    items = kfold_eval.list_archive(str(archive))
    fold_of_patient = {}
    for fold in range(3):
        layout = tmp_path / f"layout_{fold}"
        kfold_eval.make_fold_layout(str(archive), items, fold, 3, "s", str(layout))
        for path in layout.glob("val/*/*.dcm"):
            fold_of_patient.setdefault(path.name.split("_")[0], set()).add(fold)
    assert len(fold_of_patient) == 6
    assert all(len(folds) == 1 for folds in fold_of_patient.values()), fold_of_patient
    # Such folds were cut by path before: a work_dir recorded then is not reused.
    settings = kfold_eval.fold_settings(str(archive), items, 3, "s", [])
    assert settings["dicom_folds_by"] == "patient"
    old = {key: value for key, value in settings.items() if key != "dicom_folds_by"}
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / kfold_eval.SETTINGS_FILE).write_text(json.dumps(old))
    with pytest.raises(ValueError, match="dicom_folds_by: None recorded, 'patient' now"):
        kfold_eval.claim_work_dir(str(tmp_path / "work"), settings)
    # One placeholder PatientID on every file: one group, so one fold would hold them all.
    for path in archive.glob("*/*.dcm"):
        write_dicom(path, np.zeros((8, 8), np.uint8), PatientID="ANONYMOUS")
    with pytest.raises(ValueError, match=r"fold 0 of 3 would hold (none|all) of the 36 files: "
                       r"1 group\(s\)"):
        kfold_eval.make_fold_layout(str(archive), items, 0, 3, "s", str(tmp_path / "l"))
    assert not (tmp_path / "l").exists() and not (tmp_path / "l.partial").exists()
    # Few patients: a later fold empty is found before the first fold trains.
    for path in archive.glob("*/*.dcm"):
        patient = path.name.split("_")[0][1:]
        write_dicom(path, np.zeros((8, 8), np.uint8), PatientID=f"P{int(patient) % 2}")
    keys = kfold_eval.fold_keys(str(archive), items)
    empty = [fold for fold in range(5) if all(kfold_eval.fold_of(key, 5, "s") != fold
                                              for key in keys.values())]
    with pytest.raises(ValueError, match=f"fold {empty[0]} of 5 would hold none of the 36 "):
        kfold_eval.check_folds(str(archive), keys, 5, "s")


def test_archive_errors_name_the_folder(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "Chest").mkdir()
    with pytest.raises(ValueError, match="expected class folders"):
        kfold_eval.list_archive(str(tmp_path / "one"))
    (tmp_path / "one" / "Hand").mkdir()
    (tmp_path / "one" / "Chest" / "a.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="Hand: class folder without files"):
        kfold_eval.list_archive(str(tmp_path / "one"))


def test_poisson_interval_matches_the_exact_chi_square_bounds():
    # Exact 95% bounds (Garwood): 29 -> 19.42-41.65, 0 -> 0-3.689, 5 -> 1.623-11.67.
    for count, low, high in ((29, 19.42, 41.65), (0, 0.0, 3.689), (5, 1.623, 11.67)):
        got = kfold_eval.poisson_interval(count)
        assert got[0] == pytest.approx(low, rel=0.01, abs=1e-9)
        assert got[1] == pytest.approx(high, rel=0.01)


def _report(folder, num_examples, errors):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(
        {"num_examples": num_examples, "accuracy": 1 - len(errors) / num_examples}))
    lines = ["file,true,predicted,probability"]
    lines += [f"f{k}.png,{true},{predicted},0.9" for k, (true, predicted) in enumerate(errors)]
    (folder / "misclassified.csv").write_text("\n".join(lines) + "\n")
    return str(folder)


def test_summary_adds_the_folds_and_scales_to_the_hold_out(tmp_path):
    reports = {0: _report(tmp_path / "a", 1000, [("CXR", "Hand")] * 3),
               1: _report(tmp_path / "b", 1000, [("CXR", "Hand"), ("Hand", "CXR")])}
    text = kfold_eval.summarize(reports, folds=3, holdout_size=4000)
    lines = text.splitlines()
    assert "commonest confusions: CXR->Hand 4, Hand->CXR 1" in lines
    assert "partial: 2 of 3 folds finished" in lines
    assert lines[-2].startswith("expected on a hold-out of 4000 images: 10.0 errors (95% "
                                "interval 3.2-23.")
    assert lines[-1] == "out-of-fold errors 5 of 2000 (rate 0.00250)"


def test_one_fold_end_to_end_and_a_rerun_reuses_it(tmp_path):
    archive = _archive(tmp_path / "archive")
    work = tmp_path / "work"
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "kfold_eval.py"),
               f"--dataset_dir={archive}", f"--work_dir={work}", "--folds=3", "--only_folds=1",
               "--train_flags=" + " ".join((*FAST_FLAGS, "--batch_size=8", "--train_epochs=1",
                                            "--checkpoint_every_steps=0"))]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env=trainer_env(), cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    fold_files = sum(kfold_eval.fold_of(f, 3, "kfold") == 1
                     for _, f in kfold_eval.list_archive(str(archive)))
    assert lines[-1].startswith("out-of-fold errors ") and f" of {fold_files} " in lines[-1]
    assert "partial: 1 of 3 folds finished" in lines
    # Minutes of training are no longer silent: stderr says what a fold does and its errors.
    errors = lines[-1].split()[2]
    done = f"fold 1 (1 of 1): errors {errors} of {fold_files}"
    assert _progress(result) == ["fold 1 (1 of 1): conversion, training, evaluation ...", done]
    stamp = os.path.getmtime(work / "fold_1" / "eval" / "metrics.json")
    again = subprocess.run(command, capture_output=True, text=True, timeout=600,
                           env=trainer_env(), cwd=REPO_ROOT)
    assert again.returncode == 0 and again.stdout == result.stdout
    assert _progress(again) == ["fold 1 (1 of 1): finished in an earlier run", done]
    assert os.path.getmtime(work / "fold_1" / "eval" / "metrics.json") == stamp


def _progress(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("fold ")]


def test_a_failed_step_is_one_line_naming_the_fold(tmp_path):
    archive = _archive(tmp_path / "archive")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "kfold_eval.py"),
         f"--dataset_dir={archive}", f"--work_dir={tmp_path / 'work'}", "--folds=2",
         "--only_folds=0", "--train_flags=--resnet_size=7"],
        capture_output=True, text=True, timeout=600, env=trainer_env(), cwd=REPO_ROOT)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        "kfold_eval.py: error: fold 0: training failed (exit 2)")
    assert not (tmp_path / "work" / "fold_0" / "export").exists()


def _kfold(*flags):
    kfold_eval.main(kfold_eval.parse_flags(["kfold_eval.py", *flags]))


def _kfold_error(capsys, *flags) -> str:
    return one_error_line(capsys, "kfold_eval.py", lambda: _kfold(*flags))


@pytest.fixture
def fake_folds(monkeypatch):
    """kfold_eval.run_fold without training: a fold's report is written once and reused, as
    the real steps are; returns the folds it was asked for."""
    calls = []

    def run_fold(dataset_dir, items, fold, folds, seed, work_dir, train_flags, label,
                 keys=None):
        calls.append(fold)
        report = os.path.join(work_dir, f"fold_{fold}", "eval")
        if not os.path.isdir(report):
            _report(Path(report), 10, [(items[0][0], "Other")])
        return report

    monkeypatch.setattr(kfold_eval, "run_fold", run_fold)
    return calls


def test_a_rerun_with_other_settings_is_refused_naming_them(tmp_path, capsys, fake_folds):
    archive, work = _archive(tmp_path / "archive"), tmp_path / "work"
    base = {"--dataset_dir": str(archive), "--work_dir": str(work), "--folds": "3",
            "--only_folds": "1", "--seed": "kfold", "--train_flags": "--resnet_size=18"}
    _kfold(*(f"{k}={v}" for k, v in base.items()))
    first, progress = capsys.readouterr()
    assert progress == "fold 1 (1 of 1): errors 1 of 10\n"  # the summary stays alone on stdout
    settings = (work / kfold_eval.SETTINGS_FILE).read_text()
    # Same settings, spelled differently: the finished fold is reused (the point of a rerun).
    _kfold(*(f"{k}={v}" for k, v in base.items()), "--train_flags= --resnet_size=18 ")
    assert capsys.readouterr().out == first and fake_folds == [1, 1]
    other = _archive(tmp_path / "other", classes=("CXR", "Head"))
    for flag, value, named in (("--train_flags", "--resnet_size=34", "train_flags: "),
                               ("--seed", "s2", "seed: 'kfold' recorded, 's2' now"),
                               ("--folds", "4", "folds: 3 recorded, 4 now"),
                               ("--dataset_dir", str(other), "dataset_dir: ")):
        line = _kfold_error(capsys, *(f"{k}={v}" for k, v in {**base, flag: value}.items()))
        assert line.startswith(f"kfold_eval.py: error: {work}: its folds were made with other "
                               "settings (") and line.endswith("; use a new --work_dir")
        assert named in line, line
    (archive / "Hand" / "new.png").write_bytes((archive / "Hand" / "000.png").read_bytes())
    assert "archive: '24 files" in _kfold_error(capsys, *(f"{k}={v}" for k, v in base.items()))
    assert fake_folds == [1, 1]  # no refused run touched a fold
    assert (work / kfold_eval.SETTINGS_FILE).read_text() == settings


def test_work_dir_and_layout_problems_are_refused_before_any_fold(tmp_path, capsys,
                                                                  fake_folds):
    archive = _archive(tmp_path / "archive")
    inside = archive / "runs" / "kfold"
    line = _kfold_error(capsys, f"--dataset_dir={archive}", f"--work_dir={inside}")
    assert f"--work_dir={inside} is inside --dataset_dir={archive}" in line
    assert not (archive / "runs").exists()
    (tmp_path / "old" / "fold_0").mkdir(parents=True)  # folds from before the settings record
    line = _kfold_error(capsys, f"--dataset_dir={archive}", f"--work_dir={tmp_path / 'old'}")
    assert f"{tmp_path / 'old'}: has folds but no kfold_settings.json" in line
    pairs = tmp_path / "pairs"
    for folder, name in (("images", "a.png"), ("labels", "a.txt")):
        (pairs / folder).mkdir(parents=True)
        (pairs / folder / name).write_bytes(b"Chest\n")
    line = _kfold_error(capsys, f"--dataset_dir={pairs}", f"--work_dir={tmp_path / 'w'}")
    assert line == (f"kfold_eval.py: error: {pairs}: the images/ + labels/ layout; kfold_eval "
                    "needs class folders (DIR/<Class>/<image>)")
    assert fake_folds == [] and not (tmp_path / "w").exists()
