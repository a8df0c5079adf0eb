"""dataset/test_time.py: the fixed test-time views are zooms, rotations, shifts; never mirrors."""

from __future__ import annotations

import numpy as np
import pytest

# The module, not its function: pytest would collect an imported `test_time_views` as a test.
from dataset import test_time

SIZE = 32
ALL = len(test_time.TTA_VIEWS)


def _blob(rows: slice, cols: slice) -> np.ndarray:
    image = np.zeros((SIZE, SIZE, 1), np.float32)
    image[rows, cols] = 255.0
    return image


def _centroid(image: np.ndarray) -> tuple[float, float]:
    rows, cols = np.arange(SIZE)[:, None, None], np.arange(SIZE)[None, :, None]
    return float((image * rows).sum() / image.sum()), float((image * cols).sum() / image.sum())


def test_first_view_is_the_identity_and_the_layout_is_view_major():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, SIZE, SIZE, 1)).astype(np.uint8)
    views = test_time.test_time_views(images, ALL).numpy()
    assert views.shape == (ALL * 3, SIZE, SIZE, 1) and views.dtype == np.float32
    np.testing.assert_array_equal(views[:3], images.astype(np.float32))
    np.testing.assert_array_equal(test_time.test_time_views(images, 1).numpy(), images)
    # Fewer views are a prefix of all of them, image by image.
    np.testing.assert_array_equal(test_time.test_time_views(images, 3).numpy(), views[:9])
    assert test_time.TTA_VIEWS[0] == (1.0, 0.0, 0.0, 0.0)


def test_views_never_mirror_left_and_right_or_top_and_bottom():
    """A structure in the top-left corner stays there in every view: a mirror would move its
    centre of mass to the other side (a left kidney seen as a right one)."""
    image = _blob(slice(4, 12), slice(3, 11))  # centre of mass (7.5, 6.5) of 0..31
    views = test_time.test_time_views(image[None], ALL).numpy()
    centroids = [_centroid(view) for view in views]
    for index, (row, col) in enumerate(centroids):
        assert abs(row - 7.5) < 3.0 and abs(col - 6.5) < 3.0, (index, row, col)
    # ... and each view does move it: no two views are the same image.
    for first in range(ALL):
        for second in range(first + 1, ALL):
            assert not np.allclose(views[first], views[second], atol=1.0), (first, second)


def test_views_keep_orientation_determinant_positive():
    """The table itself: a zoom > 0 times a rotation has determinant zoom^2 > 0; small angles,
    zooms and shifts only (a radiograph's field of view carries the label)."""
    for zoom, degrees, shift_y, shift_x in test_time.TTA_VIEWS:
        assert 0.85 <= zoom <= 1.15 and abs(degrees) <= 10
        assert abs(shift_y) <= 0.1 and abs(shift_x) <= 0.1


def test_shift_and_zoom_move_content_the_stated_way():
    image = _blob(slice(12, 20), slice(12, 20))  # centred square, centre 15.5
    views = test_time.test_time_views(image[None], ALL).numpy()
    for view, (zoom, degrees, shift_y, shift_x) in zip(views, test_time.TTA_VIEWS):
        row, col = _centroid(view)
        assert row == pytest.approx(15.5 + shift_y * SIZE, abs=0.05)
        assert col == pytest.approx(15.5 + shift_x * SIZE, abs=0.05)
        assert view.sum() / image.sum() == pytest.approx(zoom ** 2, rel=0.05)
    # Pixels moved in from outside are black.
    shifted = views[5]
    assert shifted[:2].max() == 0 and shifted[:, :2].max() == 0


@pytest.mark.parametrize("num_views", [0, ALL + 1, -1, 2.0, True])
def test_out_of_range_view_counts_name_the_valid_range(num_views):
    with pytest.raises(ValueError, match=rf"\[1, {ALL}\]"):
        test_time.test_time_views(np.zeros((1, 8, 8, 1), np.float32), num_views)


def test_images_must_be_a_batch():
    with pytest.raises(ValueError, match="rank 4"):
        test_time.test_time_views(np.zeros((8, 8, 1), np.float32), 2)
