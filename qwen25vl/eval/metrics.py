"""Per-sample metrics of the report's benchmarks, as pure functions of (prediction, reference).

Each follows the benchmark's own scoring rule, quirks included, because a score is only comparable to the published
one when it is computed the same way:
- ANLS (DocVQA, InfoVQA): the edit distance is taken between the normalised strings (lower case, spaces collapsed),
  but it is divided by the longer of the *unnormalised* strings' lengths, as the challenge's scorer does; a
  normalised distance of 0.5 or more scores 0.
- Relaxed accuracy (ChartQA): numbers within 5% of a non-zero target; anything else (text, or a target of 0) must
  match exactly, case aside. A trailing "%" divides by 100.
- VQA accuracy (TextVQA): min(1, humans agreeing / 3), averaged over the ten leave-one-out subsets of the ten answers.
- Boxes (RefCOCO): IoU >= 0.5 in the original image's pixels. Clicks (ScreenSpot): the point lies in the target box.
- Temporal IoU (Charades-STA): intersection over union of two spans; disjoint spans score 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from qwen25vl.eval.normalize import normalize_vqa_answer
from qwen25vl.tasks.coords import box_iou
from qwen25vl.tasks.video_time import temporal_iou

__all__ = ["anls", "box_accuracy", "click_accuracy", "levenshtein", "relaxed_accuracy", "span_iou",
           "vqa_accuracy"]


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _anls_one(prediction: str, answer: str, threshold: float) -> float:
    length = max(len(answer.upper()), len(prediction.upper()))  # the unnormalised strings, as the scorer does
    if length == 0:
        return 1.0
    distance = levenshtein(" ".join(answer.strip().lower().split()), " ".join(prediction.strip().lower().split()))
    normalised = distance / length
    return 1.0 - normalised if normalised < threshold else 0.0


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Best ANLS of `prediction` over the accepted `answers` (0 when there are none)."""
    return max((_anls_one(prediction, a, threshold) for a in answers), default=0.0)


def _to_float(text: str) -> float | None:
    try:
        if text.endswith("%"):
            return float(text[:-1]) / 100.0
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def relaxed_accuracy(prediction: str, target: str, tolerance: float = 0.05) -> float:
    """1.0 when `prediction` is within `tolerance` (relative) of a numeric non-zero `target`, or equals a textual
    (or zero) target case-insensitively; else 0.0."""
    pred, gold = _to_float(prediction), _to_float(target)
    if pred is not None and gold:  # a zero target falls through to the string match, as in the reference scorer
        return float(abs(pred - gold) / abs(gold) <= tolerance)
    return float(prediction.lower() == target.lower())


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy: for each of the (usually ten) human answers left out in turn, min(1, matches among the others
    / 3); the mean over the subsets. Answers and prediction pass the standard normalisation first."""
    if not answers:
        return 0.0
    pred = normalize_vqa_answer(prediction)
    gold = [normalize_vqa_answer(a) for a in answers]
    matches = [g == pred for g in gold]
    total = sum(matches)
    return sum(min(1.0, (total - m) / 3.0) for m in matches) / len(gold)


def box_accuracy(prediction, target, threshold: float = 0.5) -> float:
    """1.0 when the predicted (x1, y1, x2, y2) box overlaps the target at IoU >= threshold (same pixel frame)."""
    if prediction is None:
        return 0.0
    return float(box_iou(prediction, target) >= threshold)


def click_accuracy(point, box) -> float:
    """1.0 when the (x, y) click lies inside the (x1, y1, x2, y2) box, edges included."""
    if point is None:
        return 0.0
    x, y = point
    return float(box[0] <= x <= box[2] and box[1] <= y <= box[3])


def span_iou(prediction, target) -> float:
    """Temporal IoU of a predicted (start, end) span with the target; None (no span found) scores 0."""
    if prediction is None:
        return 0.0
    return temporal_iou(tuple(prediction), tuple(target))
