"""Video time: timestamps in seconds, mm:ss.ff and hh:mm:ss:ff, event spans, and temporal IoU.

Qwen2.5-VL reads time from M-RoPE's absolute-time ids (no timestamp text in the prompt) and answers either in plain
seconds ("The given query happens in 64.0 - 72.0 seconds.") or, for dense captions, as JSON events with "mm:ss.ff"
start/end times; the report also names an hour:minute:second:frame form. Times are seconds from the start of the
clip the model saw: `offset` adds the clip's start when the video was cut with `start=`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qwen25vl.errors import InputError
from qwen25vl.tasks._json import extract_json_values

DEFAULT_FRAME_RATE = 25.0  # frames per second assumed for "hh:mm:ss:ff" when the caller gives none
STYLES = ("seconds", "mm:ss.ff", "hh:mm:ss.ff", "hh:mm:ss:ff")

_CLOCK = r"\d{1,2}(?::\d{1,2}){1,3}(?:\.\d+)?"
_TIME = rf"(?:{_CLOCK}|\d+(?:\.\d+)?)"
_SPAN = re.compile(rf"(?:from\s+|between\s+)?({_TIME})\s*(?:s(?:ec(?:ond)?s?)?)?\s*(?:-|–|—|~|to|and|until)\s*"
                   rf"({_TIME})\s*(?:s\b|sec\b|secs\b|seconds?\b)?", re.IGNORECASE)
_START_KEYS = ("start_time", "start", "begin", "from", "start_sec")
_END_KEYS = ("end_time", "end", "stop", "to", "end_sec")
_TEXT_KEYS = ("description", "event", "caption", "label", "text")


def video_grounding_prompt(event: str) -> str:
    """The official cookbook's temporal grounding question."""
    if not event.strip():
        raise InputError("video event query is empty")
    return f"Give the query: '{event.strip()}', when does the described content occur in the video?"


DENSE_CAPTION_PROMPT = (
    "Localize a series of activity events in the video, output the start and end timestamp for each event, and "
    "describe each event with sentences. Provide the result in json format with 'mm:ss.ff' format for time depiction."
)


def parse_timestamp(value, *, frame_rate: float = DEFAULT_FRAME_RATE) -> float:
    """Seconds from a number or a string: "64.0", "64.0s", "01:04.50" (mm:ss.ff), "00:01:04.5" (hh:mm:ss.ff),
    "00:01:04:12" (hh:mm:ss:ff, ff = frame number at `frame_rate`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(f"timestamp must be a number or a string, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip().lower().removesuffix("seconds").removesuffix("second").removesuffix("sec")
        text = text.removesuffix("s").strip()
        try:
            seconds = _parse_clock(text, frame_rate) if ":" in text else float(text)
        except ValueError:
            raise InputError(f"timestamp {value!r} is not seconds, mm:ss.ff or hh:mm:ss:ff") from None
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        raise InputError(f"timestamp {value!r} must be a finite time >= 0")
    return seconds


def _parse_clock(text: str, frame_rate: float) -> float:
    parts = text.split(":")
    if not 2 <= len(parts) <= 4 or any(p == "" for p in parts):
        raise ValueError(text)
    if len(parts) == 4:  # hh:mm:ss:ff
        if "." in "".join(parts[:3]):
            raise ValueError(text)
        h, m, s, f = (int(p) for p in parts)
        if f >= frame_rate:
            raise ValueError(text)
        return h * 3600 + m * 60 + s + f / frame_rate
    whole = [int(p) for p in parts[:-1]]
    sec = float(parts[-1])
    if sec >= 60 or any(v >= 60 for v in whole[1:]):
        raise ValueError(text)
    return (whole[0] * 3600 + whole[1] * 60 if len(whole) == 2 else whole[0] * 60) + sec


def format_timestamp(seconds: float, style: str = "seconds", *, frame_rate: float = DEFAULT_FRAME_RATE) -> str:
    """`seconds` written in one of `STYLES` ("seconds" has one decimal, as the model writes it)."""
    if seconds < 0:
        raise InputError(f"timestamp must be >= 0, got {seconds}")
    if style == "seconds":
        return f"{seconds:.1f}"
    if style == "hh:mm:ss:ff":
        whole, f = int(seconds), round((seconds - int(seconds)) * frame_rate)
        if f >= frame_rate:  # rounded up into the next second
            whole, f = whole + 1, 0
        return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}:{f:02d}"
    centis = round(seconds * 100)
    whole, cc = divmod(centis, 100)
    if style == "mm:ss.ff":
        return f"{whole // 60:02d}:{whole % 60:02d}.{cc:02d}"
    if style == "hh:mm:ss.ff":
        return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}.{cc:02d}"
    raise InputError(f"timestamp style must be one of {', '.join(STYLES)}, got {style!r}")


@dataclass(frozen=True)
class EventSpan:
    """[start, end] in seconds, with the event's description when the answer gave one."""

    start: float
    end: float
    description: str | None = None

    @property
    def duration(self) -> float:
        return self.end - self.start

    def shifted(self, offset: float) -> "EventSpan":
        return EventSpan(self.start + offset, self.end + offset, self.description)

    def to_dict(self, style: str = "seconds", **kw) -> dict:
        out = {"start": format_timestamp(self.start, style, **kw) if style != "seconds" else round(self.start, 3),
               "end": format_timestamp(self.end, style, **kw) if style != "seconds" else round(self.end, 3)}
        if self.description is not None:
            out["description"] = self.description
        return out


def temporal_iou(a: EventSpan | tuple, b: EventSpan | tuple) -> float:
    """Intersection over union of two time spans; 0 when they do not overlap or both are empty."""
    a0, a1 = (a.start, a.end) if isinstance(a, EventSpan) else a
    b0, b1 = (b.start, b.end) if isinstance(b, EventSpan) else b
    inter = max(0.0, min(a1, b1) - max(a0, b0))
    union = max(a1, b1) - min(a0, b0) if inter > 0 else (a1 - a0) + (b1 - b0)
    return inter / union if union > 0 else 0.0


def _span(start, end, description=None, frame_rate=DEFAULT_FRAME_RATE) -> EventSpan | None:
    try:
        s, e = parse_timestamp(start, frame_rate=frame_rate), parse_timestamp(end, frame_rate=frame_rate)
    except InputError:
        return None
    s, e = min(s, e), max(s, e)
    return EventSpan(s, e, None if description is None else str(description))


def _from_dict(d: dict, frame_rate: float) -> EventSpan | None:
    start = next((d[k] for k in _START_KEYS if k in d), None)
    end = next((d[k] for k in _END_KEYS if k in d), None)
    text = next((d[k] for k in _TEXT_KEYS if k in d), None)
    if start is None and end is None:
        for v in d.values():  # {"timestamp": [s, e]} or {"time": "s - e"}
            if isinstance(v, (list, tuple)) and len(v) == 2:
                start, end = v
            elif isinstance(v, str) and _SPAN.search(v):
                start, end = _SPAN.search(v).groups()
    if start is None or end is None:
        return None
    return _span(start, end, text, frame_rate)


def parse_event_spans(text: str, *, frame_rate: float = DEFAULT_FRAME_RATE, offset: float = 0.0) -> list[EventSpan]:
    """Every time span in an answer: JSON events (any of start_time/end_time, start/end; clock or seconds) or prose
    spans ("64.0 - 72.0 seconds", "from 1:04 to 1:12"). Garbage gives an empty list; never raises on model output."""
    if not isinstance(text, str):
        raise InputError(f"model answer must be a string, got {type(text).__name__}")
    found = extract_json_values(text)
    spans: list[EventSpan] = []
    stack = list(found.values)
    while stack:
        v = stack.pop(0)
        if isinstance(v, list):
            if len(v) == 2 and all(isinstance(x, (int, float, str)) and not isinstance(x, bool) for x in v):
                span = _span(*v, frame_rate=frame_rate)
                if span:
                    spans.append(span)
                continue
            stack[:0] = v
        elif isinstance(v, dict):
            span = _from_dict(v, frame_rate)
            if span:
                spans.append(span)
            else:
                stack[:0] = [x for x in v.values() if isinstance(x, (list, dict))]
    if not spans:
        for m in _SPAN.finditer(found.prose if found.values else text):
            span = _span(m.group(1), m.group(2), frame_rate=frame_rate)
            if span:
                spans.append(span)
    return [s.shifted(offset) for s in spans] if offset else spans
