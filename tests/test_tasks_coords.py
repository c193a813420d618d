"""Coordinate frames, box IoU and matching, at the edges where a one-character slip changes the answer: axes with
different scales (an x/y swap shows), values on the clamp limits, ties at the matching threshold."""

import pytest

from qwen25vl.errors import InputError
from qwen25vl.tasks.coords import (DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, Frame, as_frame, box_iou, iou_matrix,
                                   match_boxes, resized_size_for)

# 3 original pixels per resized pixel across, 4 down: every swap of x and y, or of the two sizes, changes a number
FRAME = Frame((300, 800), (100, 200))


def test_scale_is_original_over_resized_per_axis():
    assert FRAME.scale == (3.0, 4.0)
    assert Frame((100, 200), (300, 800)).scale == pytest.approx((1 / 3, 1 / 4))


def test_points_and_boxes_map_each_axis_by_its_own_scale():
    assert FRAME.to_original(10, 20) == (30, 80)
    assert FRAME.to_resized(30, 80) == (10, 20)
    assert FRAME.box_to_original((1, 2, 5, 7)) == (3, 8, 15, 28)
    assert FRAME.box_to_resized((3, 8, 15, 28)) == (1, 2, 5, 7)
    assert all(isinstance(v, float) for v in FRAME.box_to_resized((3, 8, 15, 28)))  # no rounding unless asked


def test_integer_labels_round_to_nearest_not_down():
    frame = Frame((100, 100), (100, 100))  # identity: only the rounding and the clamp act
    assert frame.box_to_resized((10.6, 20.4, 30.5, 40.7), integer=True) == (11, 20, 30, 41)  # round half to even
    assert all(type(v) is int for v in frame.box_to_resized((10.6, 20.4, 30.5, 40.7), integer=True))


@pytest.mark.parametrize("box, label", [
    ((0, 0, 99, 199), (0, 0, 99, 199)),  # the last pixel column / row is kept
    ((-0.4, -0.4, 99.4, 199.4), (0, 0, 99, 199)),  # rounds onto the edges
    ((-3, -3, 100, 200), (0, 0, 99, 199)),  # one past the edge is clamped to size - 1
    ((0.6, 0.6, 98.6, 198.6), (1, 1, 99, 199)),
    ((150, 250, 150, 250), (99, 199, 99, 199)),  # x clamps to width - 1, y to height - 1: not the same limit
])
def test_integer_labels_are_clamped_per_axis(box, label):
    frame = Frame((100, 200), (100, 200))
    assert frame.box_to_resized(box, integer=True) == label


def test_clamp_uses_the_resized_size_not_the_original():
    frame = Frame((200, 400), (100, 200))  # halves every coordinate
    assert frame.box_to_resized((0, 0, 400, 400), integer=True) == (0, 0, 99, 199)
    assert frame.box_to_resized((198, 398, 198, 398), integer=True) == (99, 199, 99, 199)


@pytest.mark.parametrize("size", [(0, 10), (10, 0), (-1, 5), (5, -1)])
def test_sizes_must_be_positive_on_each_axis(size):
    with pytest.raises(InputError, match="^original_size must be positive"):
        Frame(size, (28, 28))
    with pytest.raises(InputError, match="resized_size must be positive"):
        Frame((28, 28), size)


@pytest.mark.parametrize("bad", [None, (1,), (1, 2, 3), ("a", 2), 5])
def test_sizes_must_be_two_numbers(bad):
    with pytest.raises(InputError, match=r"original_size must be \(width, height\)"):
        Frame(bad, (28, 28))


def test_one_pixel_sizes_are_valid():
    assert Frame((1, 1), (1, 1)).scale == (1.0, 1.0)
    assert Frame((1, 7), (7, 1)).scale == (1 / 7, 7.0)


def test_sizes_become_int_tuples():
    frame = Frame([300.0, 800], ["100", 200])
    assert frame.original_size == (300, 800) and frame.resized_size == (100, 200)
    assert all(type(v) is int for v in (*frame.original_size, *frame.resized_size))


def test_resized_size_is_width_height_from_smart_resize():
    from qwen25vl.processing.image import smart_resize

    h, w = smart_resize(300, 1000, factor=28, min_pixels=DEFAULT_MIN_PIXELS, max_pixels=DEFAULT_MAX_PIXELS)
    assert resized_size_for((1000, 300)) == (w, h) == (1008, 308)  # width first, as the input
    assert resized_size_for((1000, 300), max_pixels=28 * 28 * 20) == (224, 56)
    assert resized_size_for((20, 30), min_pixels=28 * 28 * 30) == (140, 196)  # grown to the floor
    assert resized_size_for((1000, 300), factor=14, max_pixels=14 * 14 * 100) == (252, 70)  # 28: (252, 56)
    with pytest.raises(InputError, match=r"^original_size must be positive, got \(0, 3\)$"):
        resized_size_for((0, 3))


def test_as_frame_from_each_source():
    assert as_frame(FRAME) is FRAME

    class Info:  # a processor ResizeInfo, duck-typed
        original_size, resized_size = [300, 800], [100, 200]

    assert as_frame(Info()) == FRAME
    assert as_frame(original_size=(300, 800), resized_size=(100, 200)) == FRAME
    computed = as_frame(original_size=(1000, 300), max_pixels=28 * 28 * 20)
    assert computed == Frame((1000, 300), (224, 56))
    assert as_frame(original_size=(20, 30), min_pixels=28 * 28 * 30).resized_size == (140, 196)
    assert as_frame(original_size=(1000, 300), factor=14, max_pixels=14 * 14 * 100).resized_size == (252, 70)
    assert as_frame(original_size=(1000, 300)).resized_size == resized_size_for((1000, 300))
    with pytest.raises(InputError, match="^frame must be a Frame or ResizeInfo, got str$"):
        as_frame("1000x300")
    with pytest.raises(InputError, match="^a coordinate frame needs a ResizeInfo or original_size$"):
        as_frame(resized_size=(28, 28))


# ---- IoU ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("a, b, iou", [
    ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
    ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),  # overlap along x only
    ((0, 0, 10, 10), (0, 5, 10, 15), 50 / 150),  # along y only
    ((0, 0, 10, 20), (2, 4, 6, 12), 32 / 200),  # one inside the other
    ((0, 0, 4, 2), (1, -1, 3, 5), 4 / 16),  # a cross: each sticks out of the other on one axis
    ((0, 0, 1, 1), (1, 0, 2, 1), 0.0),  # touching edges share no area
    ((0, 0, 1, 1), (0, 1, 1, 2), 0.0),
    ((0, 0, 1, 1), (3, 3, 4, 4), 0.0),  # apart: the negative overlap counts as 0
    ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),  # both empty: no union, 0 rather than a division by zero
    ((0, 0, 0.5, 10), (0, 0, 10, 10), 5 / 100),  # sub-pixel widths and heights count as they are
    ((0, 0, 10, 0.5), (0, 0, 10, 10), 5 / 100),
    ((0, 0, 0.5, 0.5), (0, 0, 0.5, 0.5), 1.0),  # a union under one pixel is still a union
    ((10, 10, 0, 0), (0, 0, 10, 10), 0.0),  # an inverted box has no area (not (-10) * (-10))
    ((0, 10, 10, 0), (0, 0, 10, 10), 0.0),
])
def test_box_iou(a, b, iou):
    assert box_iou(a, b) == pytest.approx(iou)
    assert box_iou(b, a) == pytest.approx(iou)


def test_iou_matrix_rows_are_the_first_argument():
    a = [(0, 0, 10, 10), (0, 0, 5, 10)]
    b = [(0, 0, 10, 10), (5, 0, 15, 10), (20, 20, 30, 30)]
    assert [pytest.approx(row) for row in [[1.0, 50 / 150, 0.0], [0.5, 0.0, 0.0]]] == iou_matrix(a, b)
    assert iou_matrix([], b) == [] and iou_matrix(a, []) == [[], []]


def test_matching_is_greedy_by_descending_iou_and_one_to_one():
    truth = [(0, 0, 10, 10), (0, 0, 10, 6)]
    pred = [(0, 0, 10, 9), (0, 0, 10, 8)]  # both overlap both truths; pred 0 fits truth 0 best
    pairs = match_boxes(pred, truth)
    assert [(i, j) for i, j, _ in pairs] == [(0, 0), (1, 1)]  # the best pair first, then the best left over
    assert [round(iou, 4) for _, _, iou in pairs] == [0.9, 0.75]


def test_matching_keeps_a_pair_exactly_at_the_threshold():
    pred, truth = [(0, 0, 10, 5)], [(0, 0, 10, 10)]  # iou 0.5
    assert match_boxes(pred, truth) == [(0, 0, 0.5)]  # the default threshold is 0.5, inclusive
    assert match_boxes(pred, truth, threshold=0.51) == []
    assert match_boxes(pred, truth, threshold=0.0) == [(0, 0, 0.5)]


def test_matching_uses_each_prediction_once():
    pairs = match_boxes([(0, 0, 10, 10)], [(0, 0, 10, 10), (0, 0, 10, 9)])
    assert [(i, j) for i, j, _ in pairs] == [(0, 0)]


def test_matching_skips_a_used_box_and_keeps_looking():
    truth = [(0, 0, 10, 10), (20, 0, 30, 10)]
    pred = [(0, 0, 10, 10), (0, 0, 10, 9), (20, 0, 30, 9)]
    pairs = match_boxes(pred, truth, threshold=0.5)
    assert sorted((i, j) for i, j, _ in pairs) == [(0, 0), (2, 1)]  # pred 1 loses truth 0 to pred 0
