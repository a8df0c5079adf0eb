"""A report that fails to be written (a full disk, Ctrl-C) leaves the earlier report whole:
never a new metrics.json beside the plot and misclassified list of another evaluation."""

from __future__ import annotations

import errno
import pathlib

import numpy as np
import pytest

from official.utils import report

CLASSES = ["Chest", "Hand"]


def _write(folder, probabilities):
    return report.write_report(folder, labels=np.array([0, 1, 1]),
                               probabilities=np.array(probabilities), class_names=CLASSES,
                               filenames=["a.png", "b.png", "c.png"], title="test")


@pytest.mark.parametrize("named", [True, False])  # a real full disk's OSError names no file
@pytest.mark.parametrize("failing", ["metrics.json", "confusion_matrix.png",
                                     "misclassified.csv"])
def test_a_full_disk_replaces_none_of_the_earlier_report(tmp_path, monkeypatch, failing, named):
    _write(tmp_path, [[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])  # all right
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    real = pathlib.Path.write_bytes

    def full_disk(self, data):
        if self.name.startswith(failing + ".tmp-"):
            raise OSError(errno.ENOSPC, "No space left on device",
                          *([str(self)] if named else []))
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", full_disk)
    with pytest.raises(OSError) as raised:
        _write(tmp_path, [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])  # one wrong now
    assert raised.value.filename == str(tmp_path / failing)  # the user's name, not the tmp
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_the_report_is_replaced_whole(tmp_path):
    _write(tmp_path, [[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    metrics = _write(tmp_path, [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert "b.png" in (tmp_path / "misclassified.csv").read_text()
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "confusion_matrix.png", "metrics.json", "misclassified.csv"]
