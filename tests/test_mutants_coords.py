"""Coordinate-frame and IoU edges the mutation run found unguarded."""

import pytest

from qwen25vl.errors import InputError
from qwen25vl.tasks.coords import Frame, as_frame, box_iou, match_boxes, resized_size_for


def test_one_pixel_sides_are_valid():
    assert Frame((1, 1), (28, 28)).scale == (1 / 28, 1 / 28)
    with pytest.raises(InputError, match=r"^original_size must be positive, got \(0, 5\)$"):
        Frame((0, 5), (28, 28))
    with pytest.raises(InputError, match=r"^original_size must be \(width, height\), got 'ab'$"):
        resized_size_for("ab")
    with pytest.raises(InputError, match="^a coordinate frame needs a ResizeInfo or original_size$"):
        as_frame()


def test_iou_of_sub_pixel_boxes():
    assert box_iou([0, 0, 0.5, 10], [0, 0, 10, 10]) == pytest.approx(5 / 100)  # a thin box's area is 5, not 10
    assert box_iou([0, 0, 10, 0.5], [0, 0, 10, 10]) == pytest.approx(5 / 100)
    assert box_iou([0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]) == 1.0  # a union under one pixel is still a union


def test_matching_is_one_to_one_for_predictions():
    # one prediction overlapping two truths matches only the better one
    assert match_boxes([[0, 0, 10, 10]], [[0, 0, 10, 10], [0, 0, 10, 9]]) == [(0, 0, 1.0)]
