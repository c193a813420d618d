"""Grounding: prompts, a tolerant parser of the model's boxes and points, and the map back to the original image.

The model answers in pixels of the resized image it saw (see `coords.py`), usually as a ```json list of
`{"bbox_2d": [x1, y1, x2, y2], "label": ...}` or `{"point_2d": [x, y], "label": ...}` (coordinates also come as
one string, `"point_2d": ["243, 291"]`, `"243,291"`, `"(243, 291)"`, or as corner pairs); it can also answer in the
plain-text `x1,y1,x2,y2 label` form or as XML `<points x1=".." y1=".." alt="..">phrase</points>` when asked to.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace

from qwen25vl.errors import InputError
from qwen25vl.tasks._json import extract_json_values
from qwen25vl.tasks.coords import Frame, as_frame

MODES = ("detect", "refer", "point", "count")
_BOX_KEYS = ("bbox_2d", "bbox", "box_2d", "box")
_POINT_KEYS = ("point_2d", "point")
_LABEL_KEYS = ("label", "name", "text", "description")
_NUM = r"(-?\d+(?:\.\d+)?)"
_SP = r"[^\S\n]*"  # spaces within a line: a box line's label must not run into the next line
_PLAIN_BOX = re.compile(rf"^{_SP}{_NUM}{_SP},{_SP}{_NUM}{_SP},{_SP}{_NUM}{_SP},{_SP}{_NUM}{_SP}(.*?){_SP}$",
                        re.MULTILINE)
_XML_POINTS = re.compile(r"<points\b([^>]*)>(.*?)(?:</points>|$)", re.DOTALL)
_XML_ATTR = re.compile(r'([A-Za-z_][\w-]*)\s*=\s*"([^"]*)"')
_NUMBER_WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve"
                                            .split())}


def grounding_prompt(query: str, mode: str = "detect") -> str:
    """The user prompt for one `mode`: detect (every instance of a category) and refer (one described object) use
    the official spatial-understanding cookbook's phrasings; point and count follow the same pattern."""
    query = query.strip()
    if not query:
        raise InputError("grounding query is empty")
    if mode == "detect":
        return f"Outline the position of each {query} and output all the coordinates in JSON format."
    if mode == "refer":
        return f"Locate the {query}, output its bbox coordinates using JSON format."
    if mode == "point":
        return f"Point to the {query}, output its point coordinates in JSON format."
    if mode == "count":
        return (f"Count the number of {query} in the image. Outline the position of each {query} and output all "
                "the coordinates in JSON format, then state the total number.")
    raise InputError(f"grounding mode must be one of {', '.join(MODES)}, got {mode!r}")


@dataclass(frozen=True)
class Grounding:
    """One found object: a box (x1, y1, x2, y2) and/or a point (x, y), a label, and any extra keys the model wrote."""

    label: str | None = None
    bbox: tuple[float, float, float, float] | None = None
    point: tuple[float, float] | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = dict(self.extra)
        if self.bbox is not None:
            out["bbox_2d"] = [round(v, 2) for v in self.bbox]
        if self.point is not None:
            out["point_2d"] = [round(v, 2) for v in self.point]
        if self.label is not None:
            out["label"] = self.label
        return out


@dataclass
class GroundingResult:
    """Parsed answer. `frame` says which pixels the coordinates are in ("resized" as parsed, "original" after
    `to_original`). `truncated`: the answer stopped mid-list (items hold the complete prefix). `skipped`: entries
    that were not a usable box or point. `stated_count`: a number the answer wrote in prose (counting)."""

    items: list[Grounding]
    raw: str = ""
    truncated: bool = False
    skipped: int = 0
    stated_count: int | None = None
    frame: str = "resized"
    frame_map: Frame | None = field(default=None, repr=False)  # set by `ground()`: resized <-> original sizes

    @property
    def boxes(self) -> list[tuple[float, float, float, float]]:
        return [g.bbox for g in self.items if g.bbox is not None]

    @property
    def points(self) -> list[tuple[float, float]]:
        return [g.point for g in self.items if g.point is not None]

    @property
    def count(self) -> int:
        return len(self.items)

    def summary(self) -> str:
        """One line for people: what was found, or why nothing was."""
        if not self.items:
            why = "the answer was cut off" if self.truncated else "the answer holds no bbox_2d / point_2d entries"
            return f"no boxes parsed ({why})"
        labels = sorted({g.label or "?" for g in self.items})
        note = " (answer truncated: later entries lost)" if self.truncated else ""
        return f"{self.count} found: {', '.join(labels)}{note}"

    def to_original(self, frame: Frame) -> "GroundingResult":
        """The same result with every coordinate mapped from the resized frame to the original image."""
        frame = as_frame(frame)  # a Frame or the processor's ResizeInfo
        if self.frame != "resized":
            raise InputError(f"grounding result is already in the {self.frame!r} frame")
        items = [replace(g, bbox=frame.box_to_original(g.bbox) if g.bbox else None,
                         point=frame.to_original(*g.point) if g.point else None) for g in self.items]
        return replace(self, items=items, frame="original", frame_map=frame)

    def to_json(self) -> dict:
        return {"frame": self.frame, "count": self.count, "truncated": self.truncated, "skipped": self.skipped,
                "stated_count": self.stated_count, "items": [g.to_dict() for g in self.items]}


_NUMBER = re.compile(_NUM)


def _flat_numbers(value, depth: int = 0) -> list | None:
    """Every coordinate in `value`, in order: numbers as they are, numbers written inside strings ("243, 291",
    "(243, 291)"), nested lists ([[x1, y1], [x2, y2]], ["243, 291"]); None for anything else (bools, dicts, lists
    nested deeper than coordinates ever are)."""
    if isinstance(value, str):
        return _NUMBER.findall(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    if not isinstance(value, (list, tuple)) or depth == 3:
        return None
    out = []
    for v in value:
        inner = _flat_numbers(v, depth + 1)
        if inner is None:
            return None
        out.extend(inner)
    return out


def _numbers(value, n: int) -> tuple[float, ...] | None:
    flat = _flat_numbers(value)
    if flat is None or len(flat) != n:
        return None
    try:
        out = tuple(float(v) for v in flat)
    except OverflowError:  # an int too large for a float
        return None
    return out if all(math.isfinite(v) for v in out) else None


def _item_from_dict(d: dict) -> Grounding | None:
    box = next((_numbers(d[k], 4) for k in _BOX_KEYS if k in d), None)
    point = next((_numbers(d[k], 2) for k in _POINT_KEYS if k in d), None)
    if box is None and point is None:
        return None
    if box is not None:  # the model sometimes writes corners in the other order
        box = (min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3]))
    label_key = next((k for k in _LABEL_KEYS if isinstance(d.get(k), (str, int, float))), None)
    extra = {k: v for k, v in d.items() if k not in _BOX_KEYS + _POINT_KEYS and k != label_key}
    label = None if label_key is None else str(d[label_key])
    return Grounding(label=label, bbox=box, point=point, extra=extra)


def _flatten(values) -> list:
    """Candidate objects from nested lists and one-key wrappers ({"objects": [...]}), in order; iterative, since
    garbage answers can nest arbitrarily deep."""
    out, stack = [], list(reversed(values))
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(reversed(v))
        elif isinstance(v, dict) and len(v) == 1 and not any(k in v for k in _BOX_KEYS + _POINT_KEYS):
            stack.extend(reversed(list(v.values())))
        else:
            out.append(v)
    return out


def _parse_plain(text: str) -> list[Grounding]:
    items = []
    for m in _PLAIN_BOX.finditer(text):
        box = tuple(float(m.group(i)) for i in range(1, 5))
        items.append(Grounding(label=m.group(5) or None, bbox=box))
    return items


def _parse_xml_points(text: str) -> list[Grounding]:
    items = []
    for m in _XML_POINTS.finditer(text):
        attrs = dict(_XML_ATTR.findall(m.group(1)))
        label = attrs.get("alt") or m.group(2).strip() or None
        for i in range(1, 100):
            if f"x{i}" not in attrs and not (i == 1 and "x" in attrs):
                break
            x, y = attrs.get(f"x{i}", attrs.get("x")), attrs.get(f"y{i}", attrs.get("y"))
            point = _numbers([x, y], 2)
            if point is not None:
                items.append(Grounding(label=label, point=point))
    return items


def _stated_count(prose: str) -> int | None:
    words = re.findall(r"\b(\d+|" + "|".join(_NUMBER_WORDS) + r")\b", prose.lower())
    if not words:
        return None
    last = words[-1]
    return int(last) if last.isdigit() else _NUMBER_WORDS[last]


def parse_grounding(text: str) -> GroundingResult:
    """Parse a grounding answer (JSON fenced or bare, Python literals, trailing prose, truncated output, plain-text
    boxes, XML points). Never raises on model output: garbage gives an empty result whose `summary()` says so."""
    if not isinstance(text, str):
        raise InputError(f"model answer must be a string, got {type(text).__name__}")
    found = extract_json_values(text)
    items, skipped = [], 0
    for value in _flatten(found.values):
        item = _item_from_dict(value) if isinstance(value, dict) else None
        if item is None:
            skipped += 1
        else:
            items.append(item)
    if not items:
        items = _parse_xml_points(text) or _parse_plain(found.prose)
    prose = re.sub(r"<points\b.*?(</points>|$)", " ", found.prose, flags=re.DOTALL)
    return GroundingResult(items=items, raw=text, truncated=found.truncated, skipped=skipped,
                           stated_count=_stated_count(prose) if found.values else None)


def to_resized(items, frame: Frame, *, integer: bool = True) -> list[Grounding]:
    """Original-image annotations mapped into the model's frame (training labels): rounded and clamped by default."""
    out = []
    for g in items:
        point = None
        if g.point is not None:
            x, y = frame.to_resized(*g.point)
            point = (x, y) if not integer else (min(max(round(x), 0), frame.resized_size[0] - 1),
                                                min(max(round(y), 0), frame.resized_size[1] - 1))
        out.append(replace(g, bbox=frame.box_to_resized(g.bbox, integer=integer) if g.bbox else None, point=point))
    return out


def format_grounding(items, *, fence: bool = True) -> str:
    """The answer format the model is trained on (for training data): a ```json list of bbox_2d / point_2d objects."""
    body = json.dumps([g.to_dict() if isinstance(g, Grounding) else g for g in items], ensure_ascii=False, indent=4)
    return f"```json\n{body}\n```" if fence else body
