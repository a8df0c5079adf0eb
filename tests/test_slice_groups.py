"""benchmarks/slice_groups.py: runs of neighbouring slices found again, kept on one side."""

from __future__ import annotations

import csv
import json

import numpy as np

from benchmarks import slice_groups
from dataset.convert import ConvertConfig, convert_dataset
from tests.conftest import one_error_line, write_image

SIZE = 16
SERIES = {"liver": (8, 6), "spleen": (7, 9)}  # slices per series


def _series(rng: np.random.Generator, slices: int) -> np.ndarray:
    """One 'scan': a random blob pattern that changes a little from slice to slice, as an
    organ's cross-section does; two series share nothing but their statistics."""
    base = rng.uniform(0, 1, (SIZE, SIZE))
    drift = rng.normal(0, 1, (SIZE, SIZE))
    steps = np.linspace(0, 0.25, slices)[:, None, None]
    return np.clip(base + steps * drift + rng.normal(0, 0.01, (slices, SIZE, SIZE)), 0, 1)


def test_nearest_matches_a_brute_force_search_and_never_picks_the_image_itself(monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (37, 20)).astype(np.float32)
    monkeypatch.setattr(slice_groups, "BLOCK", 8)  # several blocks, the last one short
    indices, distances = slice_groups.nearest(images, 4)
    exact = np.sqrt(((images[:, None] - images[None]) ** 2).mean(axis=2))
    np.fill_diagonal(exact, np.inf)
    np.testing.assert_array_equal(indices, np.argsort(exact, axis=1)[:, :4])
    np.testing.assert_allclose(distances, np.sort(exact, axis=1)[:, :4], rtol=1e-4)
    # More neighbours asked than there are other images: all the others, nearest first.
    indices, _ = slice_groups.nearest(images[:3], 5)
    assert indices.shape == (3, 2) and all(row not in indices[row] for row in range(3))


def test_groups_are_the_series_shuffled_together():
    rng = np.random.default_rng(1)
    series = [_series(rng, count) for count in (12, 9, 15)]
    images = np.concatenate(series)
    truth = np.repeat(np.arange(3), [12, 9, 15])
    order = rng.permutation(len(images))  # exports are shuffled: the order tells nothing
    groups = slice_groups.slice_groups(images[order], neighbours=3, max_distance=0.15)
    pairs = set(zip(truth[order], groups))
    assert len(pairs) == 3 and len({group for _, group in pairs}) == 3  # one group per series
    # Too strict a distance leaves only each image's nearest link: more, smaller groups,
    # still never a group spanning two series.
    strict = slice_groups.slice_groups(images[order], neighbours=3, max_distance=0.0)
    assert len(set(strict)) > 3
    assert all(len(set(truth[order][strict == group])) == 1 for group in set(strict))


def _dataset(root, rng):
    """Two series per class, files named `<class>/s<series>_<slice>.png`."""
    for name, counts in SERIES.items():
        for number, count in enumerate(counts):
            for index, image in enumerate(_series(rng, count)):
                write_image(root / name / f"s{number}_{index}.png", (image * 255).astype(np.uint8))


def _run(*flags):
    slice_groups.main(slice_groups.parse_flags(["slice_groups.py", *flags]))


def test_cli_writes_a_groups_csv_that_keeps_each_series_on_one_side_of_a_split(tmp_path,
                                                                              capsys):
    _dataset(tmp_path / "ds", np.random.default_rng(2))
    _run(f"--dataset_dir={tmp_path / 'ds'}", f"--output_csv={tmp_path / 'groups.csv'}",
         "--neighbours=3")
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"wrote 30 rows (4 groups) to {tmp_path / 'groups.csv'}"
    with open(tmp_path / "groups.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 30 and rows[0]["file"].startswith("liver/")
    by_group = {}
    for row in rows:  # the series is the file name up to "_"
        by_group.setdefault(row["group"], set()).add(row["file"].split("_")[0])
    assert sorted(map(sorted, by_group.values())) == [
        ["liver/s0"], ["liver/s1"], ["spleen/s0"], ["spleen/s1"]]
    # The converter takes it: every group lands whole in one split.
    convert_dataset(ConvertConfig(dataset_name="organs", dataset_dir=str(tmp_path / "ds"),
                                  output_dir=str(tmp_path / "data"), need_split="tt_split",
                                  test_size=0.5, groups_csv=str(tmp_path / "groups.csv"),
                                  num_workers=1, show_progress=False))
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"train", "test"}
    sizes = [count for counts in SERIES.values() for count in counts]
    whole_series = {sum(size for size, chosen in zip(sizes, f"{mask:04b}") if chosen == "1")
                    for mask in range(16)}
    for split in ("train", "test"):
        assert sum(manifest["splits"][split]["class_counts"].values()) in whole_series


def test_bad_inputs_are_one_line_and_write_nothing(tmp_path, capsys):
    _dataset(tmp_path / "ds", np.random.default_rng(3))
    line = one_error_line(capsys, "slice_groups.py", lambda: _run(
        f"--dataset_dir={tmp_path / 'ds'}", f"--output_csv={tmp_path / 'no' / 'groups.csv'}"))
    assert f"{tmp_path / 'no'} does not exist" in line
    write_image(tmp_path / "ds" / "liver" / "big.png", np.zeros((40, 48), np.uint8))
    line = one_error_line(capsys, "slice_groups.py", lambda: _run(
        f"--dataset_dir={tmp_path / 'ds'}", f"--output_csv={tmp_path / 'groups.csv'}"))
    assert "class 'liver' mixes image sizes" in line
    (tmp_path / "ds" / "liver" / "big.png").write_bytes(b"not a png")
    line = one_error_line(capsys, "slice_groups.py", lambda: _run(
        f"--dataset_dir={tmp_path / 'ds'}", f"--output_csv={tmp_path / 'groups.csv'}"))
    assert "big.png" in line
    assert not list(tmp_path.glob("*.csv*"))  # no CSV, no temporary left behind


def test_dicom_input_is_refused_with_the_reason(tmp_path, capsys):
    from pydicom.data import get_testdata_file  # pydicom is a runtime dependency

    source = get_testdata_file("CT_small.dcm")
    (tmp_path / "ds" / "Chest").mkdir(parents=True)
    (tmp_path / "ds" / "Chest" / "a.dcm").write_bytes(open(source, "rb").read())
    line = one_error_line(capsys, "slice_groups.py", lambda: _run(
        f"--dataset_dir={tmp_path / 'ds'}", f"--output_csv={tmp_path / 'groups.csv'}"))
    assert "a.dcm: a DICOM file; the converter groups DICOMs by their patient" in line
