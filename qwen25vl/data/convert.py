"""Converters into our record layout (`qwen25vl data convert`).

- LLaVA / ShareGPT (the official Qwen2.5-VL fine-tuning scripts): `image` / `video` (a path or a list) and
  `conversations` of `{"from": "human" | "gpt" | "system", "value": "...<image>..."}`.
- ms-swift: `messages` with string contents holding `<image>` / `<video>` tags, plus `images` / `videos` lists
  (strings or `{"path": ...}`); a `rejected_response` makes a preference record (chosen = the last answer).

Each `<image>` / `<video>` tag becomes a media part at its place in the text, the media taken in list order. A
record with media but no tags gets them at the start of the first user turn (what both tools do); any other count
mismatch is an error naming the record.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from qwen25vl.data.records import parse_record, read_jsonl
from qwen25vl.errors import InputError

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
          "tool": "tool", "function_call": "assistant", "observation": "tool"}
_TAG = re.compile(r"<(image|video)>")  # the newline after a tag stays, as the official scripts keep it
LAYOUTS = ("llava", "swift")


def from_llava(obj: dict, where: str = "record", item_options: dict | None = None) -> dict:
    if not isinstance(obj, dict) or not isinstance(obj.get("conversations"), list):
        raise InputError(f"{where}: a LLaVA record needs a 'conversations' list")
    media = {"image": _as_list(obj.get("image", obj.get("images")), where),
             "video": _as_list(obj.get("video", obj.get("videos")), where)}
    turns = []
    for t, turn in enumerate(obj["conversations"]):
        if not isinstance(turn, dict) or "from" not in turn or not isinstance(turn.get("value"), str):
            raise InputError(f"{where}: conversations[{t}] needs 'from' and a string 'value'")
        role = _ROLES.get(turn["from"])
        if role is None:
            raise InputError(f"{where}: conversations[{t}].from {turn['from']!r} is not one of {sorted(_ROLES)}")
        turns.append((role, turn["value"]))
    return {"messages": _with_media(turns, media, where, item_options or {})}


def from_swift(obj: dict, where: str = "record", item_options: dict | None = None) -> dict:
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
        raise InputError(f"{where}: an ms-swift record needs a 'messages' list")
    media = {"image": _as_list(obj.get("images"), where), "video": _as_list(obj.get("videos"), where)}
    turns = []
    for m, message in enumerate(obj["messages"]):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise InputError(f"{where}: messages[{m}] needs a role and a string content")
        turns.append((message.get("role"), message["content"]))
    messages = _with_media(turns, media, where, item_options or {})
    if "rejected_response" not in obj:
        return {"messages": messages}
    if messages[-1]["role"] != "assistant":
        raise InputError(f"{where}: rejected_response given but the last message is not an assistant answer")
    return {"messages": messages[:-1], "chosen": [messages[-1]],
            "rejected": [{"role": "assistant", "content": obj["rejected_response"]}]}


def convert_file(source: str | Path, target: str | Path, layout: str, *, item_options: dict | None = None,
                 skip_bad: bool = False) -> tuple[int, list[str]]:
    """Convert a JSONL (or a JSON list) file; returns (records written, reasons of the skipped ones).

    Every output record is validated as ours; with `skip_bad` a bad record is reported instead of stopping."""
    convert = {"llava": from_llava, "swift": from_swift}.get(layout)
    if convert is None:
        raise InputError(f"unknown layout {layout!r}; choose one of {list(LAYOUTS)}")
    source = Path(source)
    written, skipped = 0, []
    with Path(target).open("w", encoding="utf-8") as out:
        for where, obj in _objects(source):
            try:
                record = convert(obj, where, item_options)
                parse_record(record, where=where)
            except InputError as err:
                if not skip_bad:
                    raise
                skipped.append(str(err))
                continue
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            written += 1
    return written, skipped


def _objects(path: Path):
    if not path.is_file():
        raise InputError(f"input file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):  # the official scripts' annotation files are JSON lists
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"{path.name}: not valid JSON ({err.msg} at line {err.lineno})") from None
        yield from ((f"{path.name}[{i}]", obj) for i, obj in enumerate(items))
        return
    for where, obj in read_jsonl(path):
        if isinstance(obj, InputError):
            raise obj
        yield where, obj


def _as_list(value, where: str) -> list:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, dict):
            item = item.get("path") or item.get("url")
        if not isinstance(item, (str, list)) or not item:
            raise InputError(f"{where}: a media entry must be a path (or a dict with 'path'), got {item!r:.60}")
        out.append(item)
    return out


def _with_media(turns, media: dict, where: str, options: dict) -> list[dict]:
    """(role, text with tags) turns + media lists -> messages with parts where the tags were."""
    tags = {kind: sum(len(re.findall(f"<{kind}>", text)) for role, text in turns if role != "assistant")
            for kind in media}
    untagged = all(n == 0 for n in tags.values())
    for kind, items in media.items():
        if tags[kind] != len(items) and not (untagged and items):
            raise InputError(f"{where}: {tags[kind]} <{kind}> tag(s) in the text but {len(items)} {kind}(s) given")
    queues = {kind: list(items) for kind, items in media.items()}
    messages = []
    for role, text in turns:
        if untagged and role == "user" and any(queues.values()):
            text = "<image>" * len(queues["image"]) + "<video>" * len(queues["video"]) + text
        if role == "assistant" or not _TAG.search(text):
            messages.append({"role": role, "content": text})
            continue
        parts, at = [], 0
        for match in _TAG.finditer(text):
            if match.start() > at:
                parts.append({"type": "text", "text": text[at:match.start()]})
            kind = match.group(1)
            parts.append({"type": kind, kind: queues[kind].pop(0), **options.get(kind, {})})
            at = match.end()
        if at < len(text):
            parts.append({"type": "text", "text": text[at:]})
        messages.append({"role": role, "content": parts})
    return messages
