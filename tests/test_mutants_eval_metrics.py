"""Metric edges the mutation run found unguarded: box edges on every side, percentages, edit-distance paths."""

import pytest

from qwen25vl.eval.metrics import click_accuracy, levenshtein, relaxed_accuracy


def test_clicks_on_every_edge_count_and_x_is_bounded_by_x2():
    box = (10, 20, 30, 60)  # x1, y1, x2, y2: not square, so x2 and y2 differ
    for point in ((10, 40), (30, 40), (20, 20), (20, 60), (30, 60), (10, 20)):
        assert click_accuracy(point, box) == 1.0, point
    assert click_accuracy((45, 40), box) == 0.0  # right of x2, though below y2
    assert click_accuracy((20, 19.5), box) == 0.0 and click_accuracy((20, 60.5), box) == 0.0
    assert click_accuracy((30.5, 40), box) == 0.0


def test_a_percentage_is_exactly_a_hundredth():
    assert relaxed_accuracy("0.5", "50%", tolerance=0.0) == 1.0
    assert relaxed_accuracy("25%", "0.25", tolerance=0.0) == 1.0
    assert relaxed_accuracy("0.495", "50%", tolerance=0.005) == 0.0  # 1% off


def test_edit_distance_of_empty_strings():
    assert levenshtein("", "") == 0
    assert levenshtein("ab", "") == 2


@pytest.mark.parametrize("a, b, distance", [
    ("aaba", "abab", 2),  # delete one a, append a b: needs the insertion step inside the row
    ("abba", "bbab", 2),
    ("aabb", "bbaa", 4),
    ("abcd", "xabc", 2),
    ("sunday", "saturday", 3),
])
def test_edit_distance_hand_computed_both_ways(a, b, distance):
    assert levenshtein(a, b) == distance
    assert levenshtein(b, a) == distance
