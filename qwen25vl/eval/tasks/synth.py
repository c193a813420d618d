"""Our own held-out synthetic suite: training-format records (`qwen25vl.data.records`: JSONL of OpenAI-style
messages) scored by kind. The prompt is the record's last user turn (its system message too); the reference is the
final assistant answer, parsed the way the kind's answers are written:

| task | reference | score |
|---|---|---|
| synth-grounding | boxes (original pixels, the records' convention) | F1 of one-to-one matches at IoU >= 0.5 |
| synth-counting | the count the answer states (or the number of boxes) | exact |
| synth-ocr, synth-documents | the text | ANLS |
| synth-charts | the short answer | relaxed accuracy (5%) |
| synth-video-time | the first time span, seconds | temporal IoU (R@0.5 and mIoU reported) |
| synth-agent-click | the tool call's click, original pixels | within 5% of the image's longer side |

The records file is `--data FILE`, or a folder holding `*<kind>*.jsonl` (kind: grounding, counting, ocr, charts,
documents, video-time, agent-click). Only this module knows the records format.
"""

from __future__ import annotations

import math
from pathlib import Path

from qwen25vl.errors import InputError
from qwen25vl.eval import sources
from qwen25vl.eval.metrics import anls, relaxed_accuracy, span_iou
from qwen25vl.eval.task import Profile, Sample, Skipped, Task, register_task
from qwen25vl.eval.tasks._common import OFFICIAL_MAX_PIXELS, OFFICIAL_MIN_PIXELS, short_answer
from qwen25vl.eval.tasks.grounding import context_frame, extract_click, extract_count, frame_context
from qwen25vl.eval.tasks.video import extract_span, grounding_summary
from qwen25vl.tasks.agent import parse_actions
from qwen25vl.tasks.coords import match_boxes
from qwen25vl.tasks.grounding import parse_grounding

CLICK_RADIUS = 0.05  # share of the image's longer side a click may miss its target by


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(p["text"] for p in content if p.get("type") == "text")


def record_sample(record, reference) -> Sample:
    """A validated record -> Sample: the last user turn's media and text, the final answer through `reference`."""
    messages = record.messages + (record.chosen or [])
    if messages[-1]["role"] != "assistant":
        raise InputError(f"{record.where}: the record does not end with an assistant answer")
    users = [m for m in messages[:-1] if m["role"] == "user"]
    if not users:
        raise InputError(f"{record.where}: no user turn to ask")
    user, system = users[-1], next((m for m in messages if m["role"] == "system"), None)
    parts = user["content"] if isinstance(user["content"], list) else []
    images, videos, options = [], [], []
    for part in parts:
        if part["type"] in ("image", "video"):
            source = part[part["type"]]
            resolved = ([str(sources.resolve_path(s, [record.root])) for s in source] if isinstance(source, list)
                        else str(sources.resolve_path(source, [record.root])))
            (images if part["type"] == "image" else videos).append(resolved)
            options.append({k: v for k, v in part.items() if k not in ("type", part["type"])})
    fields = {"question": _text(user["content"]), "system": _text(system["content"]) if system else None}
    target = reference(_text(messages[-1]["content"]), record.where)
    return Sample(record.where, fields, target, images=images, videos=videos, options=options)


def _read(kind: str, reference):
    def read(data: Path):
        from qwen25vl.data.records import iter_records

        for path in sources.find_files(data, (f"*{kind}*.jsonl",), f"synthetic {kind} records"):
            for item in iter_records(path):
                if isinstance(item, InputError):
                    yield Skipped(str(item).split(": ", 1)[0], str(item))
                    continue
                try:
                    yield record_sample(item, reference)
                except InputError as err:
                    yield Skipped(item.where, str(err))
    return read


def _boxes_reference(answer: str, where: str) -> list:
    boxes = parse_grounding(answer).boxes
    if not boxes:
        raise InputError(f"{where}: the reference answer holds no box")
    return [list(b) for b in boxes]


def _extract_boxes(raw: str, context: dict) -> list:
    return [[round(v, 2) for v in b] for b in parse_grounding(raw).to_original(context_frame(context)).boxes]


def boxes_f1(pred: list, target: list) -> float:
    if not pred or not target:
        return 0.0
    return 2 * len(match_boxes(pred, target)) / (len(pred) + len(target))


def _count_reference(answer: str, where: str) -> int:
    count = extract_count(answer)
    if count is None:
        raise InputError(f"{where}: the reference answer states no count")
    return count


def _text_reference(answer: str, where: str) -> list[str]:
    return [answer.strip()]


def _short_reference(answer: str, where: str) -> list[str]:
    return [short_answer(answer)]


def _span_reference(answer: str, where: str) -> list[float]:
    span = extract_span(answer)
    if span is None:
        raise InputError(f"{where}: the reference answer holds no time span")
    return span


def _click_reference(answer: str, where: str) -> list[float]:
    actions = [a for a in parse_actions(answer) if a.coordinate is not None]
    if not actions:
        raise InputError(f"{where}: the reference answer holds no click")
    return list(actions[0].coordinate)


def click_near(point, target, size) -> float:
    """1.0 when the click lies within CLICK_RADIUS of the image's longer side (`size`: width, height) of target."""
    if point is None or not size:
        return 0.0
    return float(math.dist(point, target) <= CLICK_RADIUS * max(size))


def _system(sample: Sample, frames: list) -> str | None:
    return sample.fields.get("system")


def _profile(max_new_tokens: int, video: bool = False) -> Profile:
    if video:
        from qwen25vl.eval.tasks.video import _video_profile

        return _video_profile("{question}", max_new_tokens, "the record's own prompt")
    return Profile(prompt="{question}", min_pixels=OFFICIAL_MIN_PIXELS, max_pixels=OFFICIAL_MAX_PIXELS,
                   max_new_tokens=max_new_tokens, source="the record's own prompt")


def _click_target(answer: str, where: str) -> dict:
    return {"point": _click_reference(answer, where), "size": None}  # size: the image's, filled by the reader


def _score_click(extracted, target) -> float:
    return click_near(extracted, target["point"], target["size"])


def _read_clicks(data: Path):
    from PIL import Image

    for item in _read("agent-click", _click_target)(data):
        if isinstance(item, Sample) and item.images:
            try:
                with Image.open(item.images[0]) as im:  # the header only: the size the click radius scales with
                    item.target["size"] = list(im.size)
            except OSError:
                pass  # the run reports the unreadable image
        yield item


_KINDS = {
    "grounding": (_boxes_reference, _extract_boxes, boxes_f1, "f1@0.5", None, 512),
    "counting": (_count_reference, extract_count, lambda e, t: float(e == t), "accuracy", None, 512),
    "ocr": (_text_reference, lambda raw, ctx: raw.strip(), lambda e, t: anls(e or "", t), "anls", None, 1024),
    "documents": (_text_reference, lambda raw, ctx: raw.strip(), lambda e, t: anls(e or "", t), "anls", None, 2048),
    "charts": (_short_reference, short_answer, lambda e, t: relaxed_accuracy(e or "", t[0]), "relaxed_accuracy",
               None, 64),
    "video-time": (_span_reference, extract_span, span_iou, "mIoU", grounding_summary, 64),
}


def _register_kinds() -> None:
    for kind, (reference, extract, score, metric, summarize, tokens) in _KINDS.items():
        register_task(Task(f"synth-{kind}", _read(kind, reference), _profile(tokens, kind == "video-time"), extract,
                           score, metric=metric, summarize=summarize,
                           context=frame_context if kind == "grounding" else None, system_prompt=_system,
                           data_hint=f"training-format records: a JSONL file or a folder with *{kind}*.jsonl",
                           family="synthetic"))


_register_kinds()
register_task(Task("synth-agent-click", _read_clicks, _profile(256), extract_click, _score_click,
                   metric="click_accuracy", context=frame_context, system_prompt=_system,
                   data_hint="training-format records: a JSONL file or a folder with *agent-click*.jsonl",
                   family="synthetic"))
