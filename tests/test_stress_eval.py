"""benchmarks/stress_eval.py: the fixed acquisition shifts, and a run on a tiny trained model."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import stress_eval, stress_eval_lib
from tests.conftest import one_error_line
from tests.trainer_fixtures import tiny_dataset


def _left_blob() -> tf.Tensor:
    image = np.zeros((1, 32, 32, 1), np.uint8)
    image[0, 10:22, 3:11] = 200
    return tf.constant(image)


def _centroid_x(images: tf.Tensor) -> float:
    x = images.numpy()[0, ..., 0].astype(np.float64)
    return float((x * np.arange(32)[None, :]).sum() / x.sum())


@pytest.mark.parametrize("name, kind, parameter",
                         stress_eval_lib.PRESETS["ct"] + stress_eval_lib.PRESETS["ct-corruptions"]
                         + stress_eval_lib.PRESETS["ct-aspect"])
def test_ct_shifts_change_the_image_but_never_mirror_it(name, kind, parameter):
    image = _left_blob()
    shifted = stress_eval_lib.perturb(image, kind, parameter)
    assert shifted.dtype == tf.uint8 and shifted.shape == image.shape
    assert not np.array_equal(shifted.numpy(), image.numpy()), name
    assert _centroid_x(shifted) < 16.0, name  # the left-sided structure stays on the left


def test_stretch_scales_one_axis_about_the_centre():
    image = np.zeros((1, 32, 32, 1), np.uint8)
    image[0, 8:24, 12:20] = 200  # 16 rows x 8 columns, centred

    def extent(stretch):
        out = stress_eval_lib.perturb(tf.constant(image), "stretch", stretch).numpy()[0, ..., 0]
        rows, cols = np.nonzero(out > 100)
        return (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1,
                (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2)

    assert extent((0.5, 1.0)) == (8, 8, 15.5, 15.5)
    assert extent((1.0, 1.5)) == (16, 12, 15.5, 15.5)
    assert extent((1.0, 1.0)) == (16, 8, 15.5, 15.5)


def test_radiograph_shifts_do_what_their_names_say():
    image = _left_blob()
    np.testing.assert_array_equal(stress_eval_lib.perturb(image, "rot90", 2).numpy()[0],
                                  np.rot90(image.numpy()[0], 2))
    np.testing.assert_array_equal(stress_eval_lib.perturb(image, "invert", None).numpy(),
                                  255 - image.numpy())
    framed = stress_eval_lib.perturb(tf.fill((1, 32, 32, 1), tf.constant(100, tf.uint8)),
                                 "affine", (0.75, 0.0, 0.0, 0.0)).numpy()[0, ..., 0]
    assert framed[0].max() == 0 and framed[:, 0].max() == 0 and framed[16, 16] == 100


def test_orientation_shifts_are_the_two_mirrors_and_a_half_turn():
    image = _left_blob()
    array = image.numpy()[0]
    flips = {kind_parameter: stress_eval_lib.perturb(image, kind, kind_parameter).numpy()[0]
             for _, kind, kind_parameter in stress_eval_lib.PRESETS["orientation"]}
    np.testing.assert_array_equal(flips["left_right"], array[:, ::-1])
    np.testing.assert_array_equal(flips["up_down"], array[::-1])
    np.testing.assert_array_equal(flips[2], array[::-1, ::-1])


def test_report_counts_the_left_right_swaps_of_each_shift():
    names = ["kidney-left", "kidney-right", "liver"]
    clean = np.array([[9, 1, 0], [0, 10, 0], [0, 0, 5]])
    mirrored = np.array([[1, 8, 1], [9, 1, 0], [0, 0, 5]])
    rows = [("clean", 0.96, 0.9, "kidney-left", clean),
            ("flip up-down", 0.28, 0.1, "kidney-left", mirrored)]
    lines = stress_eval_lib.report("m", "d", "validation", "orientation", 1, rows, 25,
                                   names).splitlines()
    start = lines.index("left/right swaps (1 pairs, 20 images):")
    assert lines[start + 1].split() == ["clean", "1", "0.0500"]
    assert lines[start + 2].split() == ["flip", "up-down", "17", "0.8500"]
    # No left/right classes, no such block.
    assert not any("swaps" in line for line in stress_eval_lib.report(
        "m", "d", "validation", "ct", 1, rows, 25, ["a", "b", "c"]).splitlines())


def test_corruptions_do_what_their_names_say():
    flat = tf.fill((1, 32, 32, 1), tf.constant(100, tf.uint8))
    image = _left_blob()
    # A blur keeps a flat image and the blob's total brightness, and spreads its edge.
    np.testing.assert_array_equal(stress_eval_lib.perturb(flat, "blur", 1.0).numpy(), 100)
    blurred = stress_eval_lib.perturb(image, "blur", 1.0).numpy()[0, ..., 0].astype(int)
    assert abs(blurred.sum() - 200 * 12 * 8) < 0.01 * 200 * 12 * 8
    assert 0 < blurred[15, 11] < 200 and 0 < blurred[15, 2] < 200
    # Pixelation at 0.5 makes 2x2 blocks.
    checker = tf.constant((np.indices((32, 32)).sum(axis=0) % 2 * 200)[None, ..., None],
                          tf.uint8)
    blocky = stress_eval_lib.perturb(checker, "pixelate", 0.5).numpy()[0, ..., 0]
    np.testing.assert_array_equal(blocky[::2, ::2], blocky[1::2, 1::2])
    assert stress_eval_lib.perturb(image, "brightness", 1.2).numpy().max() == 240
    impulse = stress_eval_lib.perturb(flat, "impulse", 0.03).numpy()
    assert set(np.unique(impulse)) == {0, 100, 255}
    assert 0.01 < np.mean(impulse != 100) < 0.05
    speckle = stress_eval_lib.perturb(image, "speckle", 0.2).numpy()
    assert speckle[image.numpy() == 0].max() == 0  # multiplicative: black stays black
    assert speckle[image.numpy() == 200].std() > 10


def test_report_lists_every_class_and_the_confusions():
    confusion = np.array([[9, 1], [0, 10]])
    rows = [("clean", 0.95, 0.9, "a", confusion), ("blur", 0.5, 0.0, "b",
                                                   np.array([[10, 0], [10, 0]]))]
    lines = stress_eval_lib.report("m", "d", "validation", "ct", 1, rows, 20,
                                   ["a", "b"]).splitlines()
    assert "a                  0.9000   1.0000" in lines
    assert "b                  1.0000   0.0000" in lines
    assert "commonest confusions under the shifts: b->a 10" in lines
    assert lines[-1] == "stress accuracy 0.5000 (clean 0.9500)"


def test_the_program_offers_every_preset():
    assert stress_eval.PRESET_NAMES == tuple(sorted(stress_eval_lib.PRESETS))


def test_a_missing_preset_is_one_line_naming_the_presets(capsys):
    with pytest.raises(SystemExit) as exit_:
        stress_eval.parse_flags(["stress_eval.py", "--model=m", "--data_dir=d"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "stress_eval.py: error: flag --preset=None: must be one of ct, ct-aspect, "
        "ct-corruptions, orientation, radiograph (see --help)"]


class _ByBrightness:
    """A stand-in predictor: class 1 when an image's centre is bright, else class 0."""
    class_names = ["dark", "bright"]

    def __call__(self, encoded):
        images = [tf.io.decode_png(png).numpy() for png in encoded.numpy()]
        bright = np.array([image[16, 16, 0] > 100 for image in images])
        return np.stack([~bright, bright], axis=1).astype(np.float32)


def test_shifts_picks_named_shifts_of_the_preset_in_its_order():
    chosen = stress_eval_lib.chosen_shifts("ct", ["noise 4%", "zoom 0.85"])
    assert [name for name, *_ in chosen] == ["zoom 0.85", "noise 4%"]
    assert stress_eval_lib.chosen_shifts("orientation") == stress_eval_lib.PRESETS["orientation"]
    with pytest.raises(ValueError, match="preset ct has no shift 'zoom 2'; its shifts: zoom 0.85"):
        stress_eval_lib.chosen_shifts("ct", ["zoom 2"])
    # Only the named shift is scored, so the confusions are its own.
    images = np.zeros((4, 32, 32, 1), np.uint8)
    images[2:, 12:20, 12:20] = 200
    rows = stress_eval_lib.stress(_ByBrightness(), images, np.array([0, 0, 1, 1]), "radiograph",
                                  batch_size=3, shifts=["inverted"])
    assert [row[0] for row in rows] == ["clean", "inverted"]
    assert rows[0][1] == 1.0 and rows[1][1] == 0.0
    np.testing.assert_array_equal(rows[1][4], [[0, 2], [2, 0]])


def test_an_unknown_shift_is_one_line_before_any_model_is_loaded(capsys, tmp_path):
    argv = ["stress_eval.py", f"--model={tmp_path}/none", f"--data_dir={tmp_path}",
            "--preset=ct", "--shifts=zoom 0.85,zoom 2"]
    line = one_error_line(capsys, "stress_eval.py",
                          lambda: stress_eval.main(stress_eval.parse_flags(argv)))
    assert "preset ct has no shift 'zoom 2'" in line


def test_a_misspelt_split_is_one_line_before_any_model_is_loaded(capsys, tmp_path):
    data = tiny_dataset(tmp_path / "data")
    argv = ["stress_eval.py", f"--model={tmp_path}/none", f"--data_dir={data}", "--preset=ct",
            "--split=tset"]
    line = one_error_line(capsys, "stress_eval.py",
                          lambda: stress_eval.main(stress_eval.parse_flags(argv)))
    assert line == (f"stress_eval.py: error: {data}: no split 'tset'; available: train, "
                    "validation")


def test_tiny_model_run_prints_every_shift_and_the_stress_accuracy(trained, capsys):
    # conftest.py's trained model_dir and its data: stress_eval.py only reads them. In this
    # process (TensorFlow is imported already); the command line itself runs in
    # test_cli_edges.py.
    capsys.readouterr()
    stress_eval.main(stress_eval.parse_flags([
        "stress_eval.py", f"--model={trained['model_dir']}", f"--data_dir={trained['data_dir']}",
        "--split=validation", "--preset=radiograph"]))
    lines = capsys.readouterr().out.splitlines()
    for name, _, _ in stress_eval_lib.PRESETS["radiograph"]:
        assert any(line.startswith(name) for line in lines), name
    clean = next(line for line in lines if line.startswith("clean"))
    assert 0.0 <= float(clean.split()[1]) <= 1.0
    assert lines[-1].startswith("stress accuracy ") and "(clean " in lines[-1]
