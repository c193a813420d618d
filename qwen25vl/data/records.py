"""Training records: one JSON object per line, OpenAI-style `messages` with image and video parts.

    {"messages": [
        {"role": "user", "content": [
            {"type": "image", "image": "images/cat.jpg", "max_pixels": 401408},
            {"type": "text", "text": "Where is the cat?"}]},
        {"role": "assistant", "content": "[{\"bbox_2d\": [12, 30, 200, 180], \"label\": \"cat\"}]"}]}

Media paths are relative to the dataset's root (the JSONL's folder unless given); absolute paths, URLs and data URLs
pass through. A video is a file or a list of frame paths (then `fps` is the frames' rate). Per-item options:
`min_pixels`, `max_pixels` (images and video frames), `fps`, `min_frames`, `max_frames`, `total_pixels`,
`video_start`, `video_end` (videos). Preference records add `chosen` and `rejected`: an answer string, an assistant
message or a list of messages, each continuing `messages`. Grounding answers hold absolute pixel coordinates of the
original image; encoding rescales them to the frame the model sees (`qwen25vl.data.encoding`).

Validation names the record (`file:line`) and the field: a typo such as `max_pixel` is an error, not a silent default.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from qwen25vl.errors import InputError

ROLES = ("system", "user", "assistant", "tool")
_IMAGE_KEYS = {"type", "image", "min_pixels", "max_pixels"}
_VIDEO_KEYS = {"type", "video", "fps", "min_pixels", "max_pixels", "total_pixels", "min_frames", "max_frames",
               "video_start", "video_end"}
_TEXT_KEYS = {"type", "text"}
_MESSAGE_KEYS = {"role", "content", "tool_calls", "name", "tool_call_id"}


@dataclass
class Record:
    """One validated training example; `where` names it in messages (`data.jsonl:12`)."""

    messages: list[dict]
    chosen: list[dict] | None = None
    rejected: list[dict] | None = None
    root: Path = field(default_factory=Path)
    where: str = "record"

    def to_json(self) -> dict:
        out: dict = {"messages": self.messages}
        if self.chosen is not None:
            out["chosen"] = self.chosen
        if self.rejected is not None:
            out["rejected"] = self.rejected
        return out


def parse_record(obj, *, where: str = "record", root: Path | str = ".") -> Record:
    """A decoded JSON object -> Record, or InputError naming `where` and the field."""
    if not isinstance(obj, dict):
        raise InputError(f"{where}: a record must be a JSON object, got {type(obj).__name__}")
    unknown = set(obj) - {"messages", "chosen", "rejected"}
    if unknown:
        raise InputError(f"{where}: unknown field(s) {sorted(unknown)} (expected messages, chosen, rejected)")
    messages = _messages(obj.get("messages"), f"{where}: messages")
    chosen = rejected = None
    if "chosen" in obj or "rejected" in obj:
        if "chosen" not in obj or "rejected" not in obj:
            raise InputError(f"{where}: a preference record needs both chosen and rejected")
        chosen = _answer(obj["chosen"], f"{where}: chosen")
        rejected = _answer(obj["rejected"], f"{where}: rejected")
    elif not any(m["role"] == "assistant" for m in messages):
        raise InputError(f"{where}: messages hold no assistant answer to train on")
    return Record(messages, chosen, rejected, Path(root), where)


def read_records(path: str | Path, root: str | Path | None = None) -> Iterator[Record]:
    """Records of a JSONL file, in order; blank lines are skipped. Raises InputError at the first bad line."""
    for item in iter_records(path, root):
        if isinstance(item, InputError):
            raise item
        yield item


def iter_records(path: str | Path, root: str | Path | None = None) -> Iterator[Record | InputError]:
    """Like `read_records`, but a bad line yields its InputError instead of raising (loaders count and skip)."""
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    for where, obj in read_jsonl(path):
        if isinstance(obj, InputError):
            yield obj
            continue
        try:
            yield parse_record(obj, where=where, root=base)
        except InputError as err:
            yield err


def read_jsonl(path: str | Path) -> Iterator[tuple[str, object]]:
    """(`file:line`, decoded object) per non-blank line; a line that is not JSON gives an InputError as its object."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"records file {path} does not exist")
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                yield where, InputError(f"{where}: not valid JSON ({err.msg} at column {err.colno})")


def write_records(path: str | Path, records) -> int:
    """Write records (Record or dicts) as JSONL; returns the count."""
    count = 0
    with Path(path).open("w", encoding="utf-8") as f:
        for record in records:
            obj = record.to_json() if isinstance(record, Record) else record
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            count += 1
    return count


def _messages(value, where: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise InputError(f"{where} must be a non-empty list of messages, got {_show(value)}")
    for m, message in enumerate(value):
        _message(message, f"{where}[{m}]")
    return value


def _answer(value, where: str) -> list[dict]:
    if isinstance(value, str):
        value = [{"role": "assistant", "content": value}]
    elif isinstance(value, dict):
        value = [value]
    messages = _messages(value, where)
    if messages[-1]["role"] != "assistant":
        raise InputError(f"{where} must end with an assistant message, got role {messages[-1]['role']!r}")
    return messages


def _message(message, where: str) -> None:
    if not isinstance(message, dict):
        raise InputError(f"{where} must be an object, got {_show(message)}")
    unknown = set(message) - _MESSAGE_KEYS
    if unknown:
        raise InputError(f"{where}: unknown field(s) {sorted(unknown)}")
    role = message.get("role")
    if role not in ROLES:
        raise InputError(f"{where}.role must be one of {list(ROLES)}, got {_show(role)}")
    content = message.get("content")
    if role == "assistant" and message.get("tool_calls"):
        if content is not None and not isinstance(content, (str, list)):
            raise InputError(f"{where}.content must be a string or a list of parts, got {_show(content)}")
        return
    if isinstance(content, str):
        if role == "assistant" and not content.strip():
            raise InputError(f"{where}.content: empty answer")
        return
    if not isinstance(content, list) or not content:
        raise InputError(f"{where}.content must be a string or a non-empty list of parts, got {_show(content)}")
    for p, part in enumerate(content):
        _part(part, f"{where}.content[{p}]", role)
    if role == "assistant" and not any(p.get("type") == "text" and p["text"].strip() for p in content):
        raise InputError(f"{where}.content: empty answer")


def _part(part, where: str, role: str) -> None:
    if not isinstance(part, dict):
        raise InputError(f"{where} must be an object, got {_show(part)}")
    kind = part.get("type")
    keys = {"text": _TEXT_KEYS, "image": _IMAGE_KEYS, "video": _VIDEO_KEYS}.get(kind)
    if keys is None:
        raise InputError(f"{where}.type must be text, image or video, got {_show(kind)}")
    unknown = set(part) - keys
    if unknown:
        raise InputError(f"{where}: unknown field(s) {sorted(unknown)} for a {kind} part (allowed {sorted(keys)})")
    if kind != "text" and role == "assistant":
        raise InputError(f"{where}: an assistant message cannot hold a {kind} (answers are text)")
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise InputError(f"{where}.text must be a string, got {_show(part.get('text'))}")
        return
    source = part.get(kind)
    frames = kind == "video" and isinstance(source, list) and source and all(isinstance(s, str) for s in source)
    if not (isinstance(source, str) and source) and not frames:
        what = "a path or URL" + (" or a list of frame paths" if kind == "video" else "")
        raise InputError(f"{where}.{kind} must be {what}, got {_show(source)}")
    for key in ("min_pixels", "max_pixels", "total_pixels", "min_frames", "max_frames"):
        value = part.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise InputError(f"{where}.{key} must be a positive integer, got {_show(value)}")
    if part.get("min_pixels") and part.get("max_pixels") and part["min_pixels"] > part["max_pixels"]:
        raise InputError(f"{where}: min_pixels {part['min_pixels']} exceeds max_pixels {part['max_pixels']}")
    for key in ("fps", "video_start", "video_end"):
        value = part.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
                                  or (key == "fps" and value == 0)):
            raise InputError(f"{where}.{key} must be a positive number, got {_show(value)}")


def _show(value) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
