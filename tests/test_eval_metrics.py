"""Metrics against hand-computed cases, the reference scorers' edge cases included; option extraction on prose."""

import pytest

from qwen25vl.eval.choices import extract_choice, format_options
from qwen25vl.eval.metrics import (anls, box_accuracy, click_accuracy, levenshtein, relaxed_accuracy, span_iou,
                                   vqa_accuracy)
from qwen25vl.eval.normalize import normalize_vqa_answer
from qwen25vl.eval.tasks.choice import open_answer_score
from qwen25vl.eval.tasks.documents import ocrbench_score
from qwen25vl.eval.tasks.grounding import extract_count
from qwen25vl.eval.tasks.synth import boxes_f1, click_near
from qwen25vl.eval.tasks.video import grounding_summary


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("abc", "abc") == 0


def test_anls_hand_computed():
    assert anls("hello", ["hello"]) == 1.0
    assert anls("hallo", ["hello"]) == pytest.approx(0.8)  # 1 edit / 5
    assert anls("Hello", ["hello", "other"]) == 1.0  # case and best-of-answers
    assert anls("xyz", ["hello"]) == 0.0  # distance 5/5 >= 0.5
    assert anls("abcdef", ["abcxyz"]) == 0.0  # exactly 0.5 scores 0 (the threshold is strict)
    assert anls("anything", []) == 0.0


def test_anls_length_from_unnormalised_strings():
    # the distance is between "hallo" and "hello" (1), the length is that of "hallo   " (8): 1 - 1/8
    assert anls("hallo   ", ["hello"]) == pytest.approx(0.875)
    # spaces collapse before the distance: "new  york" matches "new york" exactly
    assert anls("new  york", ["New York"]) == 1.0
    assert anls("", [""]) == 1.0


def test_relaxed_accuracy():
    assert relaxed_accuracy("104", "100") == 1.0
    assert relaxed_accuracy("105", "100") == 1.0  # 5% inclusive
    assert relaxed_accuracy("106", "100") == 0.0
    assert relaxed_accuracy("12%", "0.12") == 1.0  # a trailing % divides by 100
    assert relaxed_accuracy("Yes", "yes") == 1.0  # non-numeric: exact, case-insensitive
    assert relaxed_accuracy("yes.", "yes") == 0.0  # ... and nothing looser
    assert relaxed_accuracy("0.0", "0") == 0.0  # a zero target falls back to the string match
    assert relaxed_accuracy("0", "0") == 1.0
    assert relaxed_accuracy("nan", "nan") == 1.0  # not a number: compared as text
    assert relaxed_accuracy("ten", "10") == 0.0


def test_vqa_accuracy_leave_one_out():
    ten = lambda hits, other="no": ["yes"] * hits + [other] * (10 - hits)  # noqa: E731
    assert vqa_accuracy("yes", ten(10)) == 1.0
    assert vqa_accuracy("yes", ten(4)) == 1.0  # every subset of 9 still holds >= 3
    assert vqa_accuracy("yes", ten(3)) == pytest.approx(0.9)  # (3 * 2/3 + 7 * 1) / 10
    assert vqa_accuracy("yes", ten(2)) == pytest.approx(0.6)  # (2 * 1/3 + 8 * 2/3) / 10
    assert vqa_accuracy("yes", ten(1)) == pytest.approx(0.3)  # (1 * 0 + 9 * 1/3) / 10
    assert vqa_accuracy("yes", ten(0)) == 0.0
    assert vqa_accuracy("yes", []) == 0.0


def test_vqa_normalisation():
    assert normalize_vqa_answer("Two") == "2"
    assert normalize_vqa_answer("the Dog.") == "dog"
    assert normalize_vqa_answer("dont") == "don't"
    assert normalize_vqa_answer("1,000") == "1000"  # a digit-comma-digit group: punctuation removed
    assert normalize_vqa_answer("3.5") == "3.5"  # a full stop between digits stays
    assert normalize_vqa_answer("black/white") == "black white"
    assert normalize_vqa_answer("yes !") == "yes"
    assert normalize_vqa_answer("  a\tcat\n") == "cat"
    assert vqa_accuracy("Two dogs.", ["2 dogs"] * 3 + ["dogs"] * 7) == pytest.approx(0.9)


def test_boxes_and_clicks():
    assert box_accuracy((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_accuracy((0, 0, 10, 10), (0, 0, 10, 20)) == 1.0  # IoU exactly 0.5 counts
    assert box_accuracy((0, 0, 10, 10), (0, 0, 10, 21)) == 0.0
    assert box_accuracy(None, (0, 0, 1, 1)) == 0.0
    assert click_accuracy((10, 10), (10, 0, 20, 20)) == 1.0  # edges inside
    assert click_accuracy((9.9, 10), (10, 0, 20, 20)) == 0.0
    assert click_accuracy(None, (0, 0, 1, 1)) == 0.0


def test_temporal_iou_and_grounding_summary():
    assert span_iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert span_iou((0, 5), (6, 10)) == 0.0  # disjoint
    assert span_iou((0, 5), (5, 10)) == 0.0  # touching
    assert span_iou((2, 4), (0, 10)) == pytest.approx(0.2)
    assert span_iou(None, (0, 1)) == 0.0
    summary = grounding_summary([0.2, 0.4, 0.6, 0.8])
    assert summary == pytest.approx({"mIoU": 0.5, "R@0.3": 0.75, "R@0.5": 0.5, "R@0.7": 0.25})


def test_ocrbench_rule():
    assert ocrbench_score("The sign says STOP here", {"answers": ["stop"], "type": "Regular Text"}) == 1.0
    assert ocrbench_score("no", {"answers": ["stop"], "type": "Regular Text"}) == 0.0
    formula = "Handwritten Mathematical Expression Recognition"
    assert ocrbench_score("x ^ { 2 } + 1", {"answers": ["x^{2}+1"], "type": formula}) == 1.0
    assert ocrbench_score("X^{2}+1", {"answers": ["x^{2}+1"], "type": formula}) == 0.0  # formulas keep case


def test_open_answers_counts_and_synthetic_scores():
    assert open_answer_score("The value is 3,000.", ["3000"]) == 1.0
    assert open_answer_score("Paris.", ["paris"]) == 1.0
    assert open_answer_score("London", ["paris"]) == 0.0
    assert extract_count("There are 7 dogs.") == 7
    assert extract_count("I count three apples") == 3
    assert extract_count('[{"bbox_2d": [1, 2, 30, 40]}, {"bbox_2d": [50, 60, 70, 80]}]') == 2
    assert extract_count("none visible") is None
    assert boxes_f1([[0, 0, 10, 10]], [[0, 0, 10, 10], [20, 20, 30, 30]]) == pytest.approx(2 / 3)
    assert boxes_f1([], [[0, 0, 1, 1]]) == 0.0
    assert click_near((105, 100), (100, 100), (200, 100)) == 1.0  # within 5% of 200
    assert click_near((111, 100), (100, 100), (200, 100)) == 0.0


OPTIONS = ["a red car", "a blue car", "a bicycle", "a dog"]
PROSE = [
    ("B", "B"),
    ("(C)", "C"),
    ("c", "C"),
    ("**D**", "D"),
    ("B. a blue car", "B"),
    ("The answer is (B) because the car in the picture is blue.", "B"),
    ("Answer: D", "D"),
    ("The correct option is C.", "C"),
    ("A red car is parked on the left, so the answer is A.", "A"),
    ("Looking at the image, option A seems plausible, but on closer inspection the answer is B.", "B"),
    ("The image shows a bicycle leaning on a wall.", "C"),
    ("A dog.", "D"),
    ("A. a red car", "A"),
    ("Based on the video, C is correct.", "C"),
    ("I think it's D) a dog", "D"),
    ("The best answer is: (A)", "A"),
    ("A cat is sitting on the mat.", None),
    ("I cannot determine this from the image.", None),
    ("", None),
    ("E", None),  # not among four options
]


@pytest.mark.parametrize("answer,expected", PROSE)
def test_option_extraction_survives_prose(answer, expected):
    assert extract_choice(answer, OPTIONS) == expected


def test_format_options():
    assert format_options(["x", " y "]) == "A. x\nB. y"
    assert format_options(["x"], "({letter}) {text}") == "(A) x"
