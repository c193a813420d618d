"""Grounding: RefCOCO / RefCOCO+ / RefCOCOg (a box at IoU >= 0.5), CountBench (the count), ScreenSpot and
ScreenSpot-Pro (the click lands in the target box).

The model answers in pixels of the resized image it saw. Each sample's results hold that image's frame (original
and resized sizes), and extraction maps the answer to the original image, where the references live; so a score
never depends on whether the resize happened to be small.
"""

from __future__ import annotations

import re
from pathlib import Path

from qwen25vl.errors import InputError
from qwen25vl.eval import sources
from qwen25vl.eval.metrics import box_accuracy, click_accuracy
from qwen25vl.eval.task import Profile, Sample, Task, register_task
from qwen25vl.eval.tasks._common import (OFFICIAL_MAX_PIXELS, OFFICIAL_MIN_PIXELS, first_roots, row_id,
                                         table_samples)
from qwen25vl.tasks.agent import agent_system_prompt, agent_user_prompt, parse_actions
from qwen25vl.tasks.coords import Frame
from qwen25vl.tasks.grounding import parse_grounding


def frame_context(sample: Sample, frames: list[Frame]) -> dict:
    f = frames[0]
    return {"frame": {"original": list(f.original_size), "resized": list(f.resized_size)}}


def context_frame(context: dict) -> Frame:
    return Frame(tuple(context["frame"]["original"]), tuple(context["frame"]["resized"]))


def _box(value, where: str, xywh: bool) -> list[float]:
    if isinstance(value, str):
        value = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", value)]
    try:
        box = [float(v) for v in value]
    except (TypeError, ValueError):
        raise InputError(f"{where}: bbox must be 4 numbers, got {value!r:.60}") from None
    if len(box) != 4:
        raise InputError(f"{where}: bbox must be 4 numbers, got {value!r:.60}")
    if xywh:
        box = [box[0], box[1], box[0] + box[2], box[1] + box[3]]
    if box[2] <= box[0] or box[3] <= box[1]:
        raise InputError(f"{where}: bbox {value!r} has no area")
    return box


def _rounded(values) -> list[float]:
    return [round(float(v), 2) for v in values]


# --- RefCOCO family ------------------------------------------------------------------------------------------------

REFER_PROMPT = "Locate the {query}, output its bbox coordinates using JSON format."


def _refcoco_sample(row: dict, where: str, path: Path) -> Sample:
    query = next((row[k] for k in ("sent", "expression", "ref", "refexp", "text", "caption") if row.get(k)), None)
    if query is None and isinstance(row.get("answer"), list) and row["answer"]:
        query = row["answer"][0]  # the parquet mirrors list the referring sentences under "answer"
    if not isinstance(query, str) or not query.strip():
        raise InputError(f"{where}: no referring expression (sent / expression / answer)")
    # COCO annotations (the parquet mirrors, rows with segmentation) give [x, y, w, h]; the JSONL releases x1y1x2y2
    xywh = path.suffix == ".parquet" or "segmentation" in row or row.get("bbox_format") == "xywh"
    box = _box(sources.field(row, "bbox", "box", where=where, kind=None), where, xywh)
    cell = sources.field(row, "image", "file_name", "img_path", where=where, kind=None)
    image = sources.image_source(cell, where, first_roots(path, "train2014", "images", "coco/train2014"))
    split = path.stem
    return Sample(row_id(row, where, "question_id", "id", "ref_id"), {"query": query.strip()}, box,
                  images=[image], meta={"split": split})


def _read_refcoco(data: Path):
    return table_samples(data, ("*.jsonl", "*.json", "**/*.parquet"), "RefCOCO annotations", _refcoco_sample)


def extract_box(raw: str, context: dict) -> list[float] | None:
    """The first box of the answer, in the original image's pixels (None when the answer holds none)."""
    boxes = parse_grounding(raw).to_original(context_frame(context)).boxes
    return _rounded(boxes[0]) if boxes else None


def _box_score(extracted, target) -> float:
    return box_accuracy(extracted, target)


_REFER = Profile(prompt=REFER_PROMPT, min_pixels=OFFICIAL_MIN_PIXELS, max_pixels=OFFICIAL_MAX_PIXELS,
                 max_new_tokens=128, source="the official spatial-understanding cookbook's referring prompt")
_REF_HINT = ("one file per split: JSONL rows {image, sent, bbox [x1, y1, x2, y2]} or the parquet mirrors "
             "(COCO [x, y, w, h] boxes)")

for _name, _scores in (("refcoco", {"3B": 89.1, "7B": 90.0}), ("refcoco+", {}), ("refcocog", {})):
    register_task(Task(_name, _read_refcoco, _REFER, extract_box, _box_score, metric="acc@0.5",
                       context=frame_context, published=_scores, data_hint=_REF_HINT, family="grounding"))


# --- CountBench ----------------------------------------------------------------------------------------------------

_COUNT_WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve "
                                           "thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty"
                                           .split())}
_COUNT = re.compile(r"\b(\d+|" + "|".join(_COUNT_WORDS) + r")\b", re.IGNORECASE)


def _countbench_sample(row: dict, where: str, path: Path) -> Sample:
    question = sources.field(row, "question", where=where)
    number = sources.field(row, "number", "answer", "count", where=where, kind=(int, str))
    try:
        number = int(number)
    except ValueError:
        raise InputError(f"{where}: number must be an integer, got {number!r}") from None
    image = sources.image_source(sources.field(row, "image", "image_path", where=where, kind=None), where,
                                 first_roots(path, "images"))
    return Sample(row_id(row, where, "id", "question_id"), {"question": question}, number, images=[image])


def extract_count(raw: str, context: dict | None = None) -> int | None:
    """The last number in the answer ("There are 7 dogs." -> 7; "three" -> 3); a grounding list counts its items
    when no number is written."""
    found = _COUNT.findall(re.sub(r"\[[^\]]*\]|\{[^}]*\}", " ", raw))  # numbers inside boxes are coordinates
    if found:
        last = found[-1].lower()
        return int(last) if last.isdigit() else _COUNT_WORDS[last]
    items = parse_grounding(raw).count
    return items or None


register_task(Task(
    "countbench", lambda data: table_samples(data, ("*.jsonl", "*.json", "**/*.parquet"), "CountBench rows",
                                             _countbench_sample),
    Profile(prompt="{question}\nAnswer with a single number.", min_pixels=OFFICIAL_MIN_PIXELS,
            max_pixels=OFFICIAL_MAX_PIXELS, max_new_tokens=32,
            source="ours: the question and a one-number instruction (Qwen did not publish its CountBench prompt)"),
    extract_count, lambda extracted, target: float(extracted == target), context=None,
    data_hint="rows {image, question, number} (CountBenchQA's parquet or JSON)", family="grounding"))


# --- ScreenSpot and ScreenSpot-Pro ---------------------------------------------------------------------------------

def _screenspot_sample(row: dict, where: str, path: Path, *, xywh: bool) -> Sample:
    instruction = sources.field(row, "instruction", where=where)
    box = _box(sources.field(row, "bbox", where=where, kind=None), where, xywh)
    cell = row.get("image") or sources.field(row, "img_filename", "file_name", where=where)
    image = sources.image_source(cell, where, first_roots(path, "screenspot_imgs", "images"))
    meta = {k: row[k] for k in ("data_type", "data_source", "ui_type", "platform", "application", "group")
            if isinstance(row.get(k), str)}
    meta.setdefault("split", path.stem)
    return Sample(row_id(row, where, "id"), {"instruction": instruction.strip()}, box, images=[image], meta=meta)


def extract_click(raw: str, context: dict) -> list[float] | None:
    """The click in the original screenshot's pixels: a tool call's coordinate, else a point or a box centre."""
    frame = context_frame(context)
    try:
        actions = [a for a in parse_actions(raw) if a.coordinate is not None]
    except InputError:
        actions = []
    if actions:
        return _rounded(frame.to_original(*actions[0].coordinate))
    found = parse_grounding(raw).to_original(frame)
    if found.points:
        return _rounded(found.points[0])
    if found.boxes:
        x1, y1, x2, y2 = found.boxes[0]
        return _rounded(((x1 + x2) / 2, (y1 + y2) / 2))
    return None


def _click_system(sample: Sample, frames: list[Frame]) -> str:
    return agent_system_prompt("computer", frames[0].resized_size)


_SCREEN = Profile(prompt=agent_user_prompt("{instruction}"),  # the cookbook's user turn min_pixels=OFFICIAL_MIN_PIXELS,
                  max_pixels=OFFICIAL_MAX_PIXELS, max_new_tokens=128,
                  source="ours: the cookbook's computer_use system prompt and user query (Qwen did not publish its "
                         "ScreenSpot prompt)")


def _read_screenspot(data: Path):
    return table_samples(data, ("screenspot_*.json", "*.json", "**/*.parquet"), "ScreenSpot annotations",
                         lambda row, where, path: _screenspot_sample(row, where, path, xywh=True))


def _read_screenspot_pro(data: Path):
    return table_samples(data, ("annotations/*.json", "*.json"), "ScreenSpot-Pro annotations",
                         lambda row, where, path: _screenspot_sample(row, where, path, xywh=False))


register_task(Task("screenspot", _read_screenspot, _SCREEN, extract_click, click_accuracy, metric="click_accuracy",
                   context=frame_context, system_prompt=_click_system, published={"3B": 55.5, "7B": 84.7},
                   data_hint="screenspot_{mobile,desktop,web}.json ([x, y, w, h] boxes) with screenspot_imgs/",
                   family="grounding"))
register_task(Task("screenspot-pro", _read_screenspot_pro, _SCREEN, extract_click, click_accuracy,
                   metric="click_accuracy", context=frame_context, system_prompt=_click_system,
                   data_hint="annotations/*.json ([x1, y1, x2, y2] boxes) with images/", family="grounding"))
