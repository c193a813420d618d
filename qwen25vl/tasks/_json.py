"""Tolerant extraction of JSON values from a model's free-form answer.

The model wraps JSON in ```json fences, adds prose before or after it, writes Python literals (single quotes, True),
and stops mid-object when `max_new_tokens` runs out. `extract_json_values` returns every complete value it can find,
in order, plus a flag saying the answer ended inside an unfinished value (so callers can report "truncated" instead of
silently returning a short list).
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n?(.*?)(```|$)", re.DOTALL)
_DECODER = json.JSONDecoder()
_PY_CONSTANTS = {"true": "True", "false": "False", "null": "None"}
_PY_SCALAR = re.compile(r"'(?:[^'\\\n]|\\.)*'|(?:True|False|None)\b")


@dataclass
class Extracted:
    """Values found in an answer; `truncated` when the text ended inside a value; `prose` is the text outside them."""

    values: list = field(default_factory=list)
    truncated: bool = False
    prose: str = ""


def strip_fences(text: str, language: str | None = None) -> tuple[str, str, bool]:
    """(body of the first fenced block (of `language` when given) or the whole text, the text outside it, the fence
    never closed)."""
    for match in _FENCE.finditer(text):
        lang = match.group(1).lower()
        if language is None or lang in ("", language):
            outside = text[: match.start()] + "\n" + text[match.end() :]
            return match.group(2), outside, match.group(3) == ""
    return text, "", False


def fenced_blocks(text: str) -> list[tuple[str, str, bool]]:
    """Every fenced block in order: (language, body, closed)."""
    return [(m.group(1).lower(), m.group(2), m.group(3) != "") for m in _FENCE.finditer(text)]


def segments(text: str) -> list[tuple[bool, str, bool]]:
    """The whole text cut at its fences, in order: (fenced, body, closed); prose between fences is unfenced."""
    out, i = [], 0
    for m in _FENCE.finditer(text):
        if text[i : m.start()].strip():
            out.append((False, text[i : m.start()], True))
        out.append((True, m.group(2), m.group(3) != ""))
        i = m.end()
    if text[i:].strip():
        out.append((False, text[i:], True))
    return out


def _matching_close(text: str, start: int) -> int | None:
    """Index just past the bracket closing the one at `start`, skipping brackets inside quoted strings."""
    depth, quote, i = 0, None, start
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def decode_value_at(text: str, pos: int):
    """Decode one JSON (or Python-literal) value starting at `pos`: (value, end) or None when it is unfinished/bad."""
    try:
        return _DECODER.raw_decode(text, pos)
    except (json.JSONDecodeError, RecursionError):  # garbage such as "[[[[..." nests past the stack
        pass
    scalar = _PY_SCALAR.match(text, pos)  # a Python-literal string or constant ('O\'Neil', True, None)
    if scalar:
        try:
            return ast.literal_eval(scalar.group(0)), scalar.end()
        except (ValueError, SyntaxError):  # a bad escape such as '\N'
            return None
    end = _matching_close(text, pos)
    if end is None:
        return None
    snippet = re.sub(r"\b(true|false|null)\b", lambda m: _PY_CONSTANTS[m.group(1)], text[pos:end])
    try:
        return ast.literal_eval(snippet), end
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def _decode_list_prefix(text: str, pos: int) -> tuple[list, int, bool]:
    """Elements of the list opened at `pos` until it closes or one fails to decode: (items, end, closed)."""
    items, i = [], pos + 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text):
            return items, i, False
        if text[i] == "]":
            return items, i + 1, True
        decoded = decode_value_at(text, i)
        if decoded is None:
            return items, len(text), False
        value, i = decoded
        items.append(value)


def decode_object_prefix(text: str, pos: int) -> tuple[dict, bool]:
    """The complete `"key": value` pairs of the object opened at `pos`, up to where it closes or stops decoding:
    (pairs, closed). For an answer cut off inside an object, the finished pairs survive."""
    out, i = {}, pos + 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] == "}":
            return out, i < len(text)
        key = decode_value_at(text, i) if text[i] in "\"'" else None
        if key is None or not isinstance(key[0], str):  # a bare or unfinished key: stop here
            return out, False
        colon = re.compile(r"\s*:\s*").match(text, key[1])
        value = decode_value_at(text, colon.end()) if colon else None
        if value is None:
            return out, False
        out[key[0]], i = value


def extract_json_values(text: str) -> Extracted:
    """All top-level JSON arrays / objects in `text` (fences removed), keeping the complete prefix of a cut one."""
    body, outside, _ = strip_fences(text)  # an unclosed fence alone is no loss: the values decide "truncated"
    out = Extracted()
    prose, i = [outside], 0
    while i < len(body):
        starts = [p for p in (body.find("[", i), body.find("{", i)) if p >= 0]
        if not starts:
            break
        start = min(starts)
        prose.append(body[i:start])
        decoded = decode_value_at(body, start)
        if decoded is not None:
            out.values.append(decoded[0])
            i = decoded[1]
            continue
        close = _matching_close(body, start)
        if close is None:  # the answer stopped inside this value: keep the elements that were finished
            if body[start] == "[":
                out.values.append(_decode_list_prefix(body, start)[0])
            out.truncated = True
            i = len(body)
            break
        items = _decode_list_prefix(body, start)[0] if body[start] == "[" else []
        if items:  # a closed list with a bad element: keep the good ones before it
            out.values.append(items)
        else:  # brackets in prose
            prose.append(body[start:close])
        i = close
    prose.append(body[i:])
    out.prose = " ".join(p.strip() for p in prose if p.strip())
    return out
