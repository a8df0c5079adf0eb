"""benchmarks/mirror_audit.py: which images look mirrored against a reference split's means."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from benchmarks import mirror_audit
from dataset.convert import ConvertConfig, convert_dataset
from tests.conftest import one_error_line, write_image
from tests.trainer_fixtures import REPO_ROOT, trainer_env

SIZE = 16


def _organ(rng: np.random.Generator) -> np.ndarray:
    """An asymmetric 'organ': bright on the left, a ramp falling to the right, some noise."""
    image = np.tile(np.linspace(180, 40, SIZE), (SIZE, 1))
    image[4:12, 1:6] = 250
    return np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)


def _bar(rng: np.random.Generator) -> np.ndarray:
    """A left-right symmetric class: a centred vertical bar."""
    image = np.full((SIZE, SIZE), 30.0)
    image[:, 6:10] = 220
    return np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)


def test_margins_find_the_mirrored_images_and_symmetry_flags_the_symmetric_class():
    rng = np.random.default_rng(0)
    reference = np.stack([_organ(rng) for _ in range(6)] + [_bar(rng) for _ in range(6)])
    reference_labels = np.array([0] * 6 + [1] * 6)
    means = mirror_audit.class_means(reference[..., None], reference_labels, 2)
    images = np.stack([_organ(rng) for _ in range(10)])
    images[:3] = images[:3, :, ::-1]  # three written the other way round
    margins = mirror_audit.mirror_margins(images[..., None], np.zeros(10, int), means, axis=2)
    np.testing.assert_array_equal(margins < -mirror_audit.MARGIN, [True] * 3 + [False] * 7)
    assert np.all(margins[3:] > mirror_audit.MARGIN)
    # Mirrored across the rows the organ looks the same (its ramp runs along the columns).
    rows = mirror_audit.mirror_margins(images[3:, ..., None], np.zeros(7, int), means, axis=1)
    assert np.all(np.abs(rows) < mirror_audit.MARGIN)
    organ_symmetry, bar_symmetry = mirror_audit.symmetry(means, axis=2)
    assert organ_symmetry < 0 and bar_symmetry > mirror_audit.MAX_SYMMETRY


def _audit(*flags):
    mirror_audit.main(mirror_audit.parse_flags(["mirror_audit.py", *flags]))


def test_cli_on_a_converted_dataset_reports_the_share_of_each_split(tmp_path, capsys):
    rng = np.random.default_rng(1)
    root = tmp_path / "ds"
    for split, count, mirrored in (("train", 10, 4), ("val", 6, 0)):
        for index in range(count):
            organ = _organ(rng)
            write_image(root / split / "organ" / f"{split}{index}.png",
                        organ[:, ::-1] if index < mirrored else organ)
            write_image(root / split / "bar" / f"{split}{index}.png", _bar(rng))
    convert_dataset(ConvertConfig(dataset_name="organs", dataset_dir=str(root),
                                  output_dir=str(tmp_path / "data"), need_split="predefined",
                                  num_workers=1, show_progress=False))
    capsys.readouterr()
    _audit(f"--data_dir={tmp_path / 'data'}")
    lines = capsys.readouterr().out.splitlines()
    organ = next(line for line in lines if line.startswith("organ "))
    bar = next(line for line in lines if line.startswith("bar "))
    assert "0.400 / 0.600 (10)" in organ and "0.000 / 1.000 (6)" in organ
    assert bar.endswith("(symmetric: left out)")
    # 4 mirrored of 10 train organs; the symmetric bars are left out of the share.
    assert lines[-1] == "mirrored share over the asymmetric classes: train 0.400, validation 0.000"


def test_cli_on_a_folder_that_is_not_a_converted_dataset_is_one_line(tmp_path, capsys):
    line = one_error_line(capsys, "mirror_audit.py", lambda: _audit(f"--data_dir={tmp_path}"))
    assert f"{tmp_path}: no manifest.json" in line


def test_help_answers_without_tensorflow():
    result = subprocess.run([sys.executable, "benchmarks/mirror_audit.py", "--help"],
                            cwd=REPO_ROOT, env=trainer_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "--reference_split" in result.stdout
    assert result.stderr == ""  # no TensorFlow start-up lines: it is imported after the flags
