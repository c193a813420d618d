"""Plain OCR answers ("Read all the text in the image.") and key-information extraction answers (a JSON object).

OCR answers come as the text itself, often behind a prose lead-in ("The text in the image reads:", "Sure! Here is
the text:"), inside a ``` fence, with blank lines between paragraphs, or as one quoted string. `parse_ocr` keeps
the lines of text in order and drops the lead-in, the fences and the blank lines; prose *inside* the text is kept
(a line of a receipt may end with a colon). Key-information answers are one JSON object, fenced or after prose,
sometimes Python-literal, sometimes cut off; `parse_key_info` returns its fields (values as written: strings with
`<` / `>` untouched, nested objects and lists kept).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from qwen25vl.errors import InputError
from qwen25vl.tasks._json import (_matching_close, decode_object_prefix, extract_json_values, fenced_blocks,
                                  strip_fences)

OCR_PROMPT = "Read all the text in the image."

# A prose opening that announces the text: "The text in the image reads:", "Here's the extracted text:",
# "Sure! The image contains the following text:". Only the answer's first line is tested.
_LEAD_IN = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|okay|ok)\b[!.,]*\s*)?"
    r"(?:here(?:'s| is| are)|the (?:text|words?|content|image|picture|document)|this (?:image|picture)|"
    r"below is|the following|i can see|extracted text)\b[^\n:\"]{0,100}?"
    r"(?::|(?=\s*[\"“]))\s*", re.IGNORECASE)
_QUOTES = {'"': '"', "“": "”", "'": "'"}


def _check(text) -> str:
    if not isinstance(text, str):
        raise InputError(f"model answer must be a string, got {type(text).__name__}")
    return text


def _unquote(text: str) -> str:
    """`"STOP"` or `"STOP".` -> `STOP` (an answer that is one quoted string)."""
    body = text.strip().removesuffix(".")
    if len(body) >= 2 and _QUOTES.get(body[0]) == body[-1] and body[0] not in body[1:-1]:
        return body[1:-1]
    return text


@dataclass
class OcrText:
    """The lines of text read from the image, in order (no blank lines). `truncated`: a fence was never closed."""

    lines: list[str]
    raw: str = ""
    truncated: bool = False

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def to_json(self) -> dict:
        return {"lines": self.lines, "truncated": self.truncated}


def parse_ocr(text: str) -> OcrText:
    """Lines of a plain OCR answer: the fenced blocks' bodies when the answer has fences (prose around them is not
    text of the image), else the answer without its lead-in; blank lines dropped, each line stripped."""
    text = _check(text)
    fences = fenced_blocks(text)
    if fences:
        body, truncated = "\n".join(b for _, b, _ in fences), not fences[-1][2]
    else:
        lead = _LEAD_IN.match(text)
        body, truncated = _unquote(text[lead.end():] if lead else text), False
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    return OcrText(lines=lines, raw=text, truncated=truncated)


def key_info_prompt(keys) -> str:
    """Ask for the values of `keys` as one JSON object (the template the model fills in)."""
    keys = [str(k).strip() for k in keys]
    if not keys or not all(keys):
        raise InputError(f"key-information extraction needs non-empty key names, got {keys!r}")
    template = json.dumps({k: "" for k in keys}, ensure_ascii=False)
    return f"Extract the key-value information in the format: {template}. Output in JSON format."


@dataclass
class KeyInfo:
    """Fields of a key-information answer, in the order written. `truncated`: the answer stopped inside the object
    (fields holds the pairs finished before the cut). `prose`: the text outside the object."""

    fields: dict = field(default_factory=dict)
    raw: str = ""
    truncated: bool = False
    prose: str = ""

    def get(self, key: str, default=None):
        return self.fields.get(key, default)

    def to_json(self) -> dict:
        return {"fields": self.fields, "truncated": self.truncated}


def _as_fields(value) -> dict | None:
    """An object as it is; a list of objects merged in order ({"key": k, "value": v} pairs become k: v)."""
    if isinstance(value, dict):
        return value
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out: dict = {}
        for v in value:
            out.update({v["key"]: v["value"]} if set(v) == {"key", "value"} and isinstance(v["key"], str) else v)
        return out
    return None


def parse_key_info(text: str) -> KeyInfo:
    """The first JSON object of a key-information answer (fenced or bare, after prose, Python literals, cut off).
    No object gives empty fields; never raises on model output."""
    text = _check(text)
    found = extract_json_values(text)
    for value in found.values:
        fields = _as_fields(value)
        if fields is not None:
            return KeyInfo(fields=fields, raw=text, truncated=found.truncated, prose=found.prose)
    body = strip_fences(text)[0]
    start = next((m.start() for m in re.finditer(r"\{", body) if _matching_close(body, m.start()) is None), -1)
    if found.truncated and start >= 0:  # cut inside the object: keep the finished pairs
        fields, _ = decode_object_prefix(body, start)
        return KeyInfo(fields=fields, raw=text, truncated=True, prose=body[:start].strip())
    return KeyInfo(raw=text, truncated=found.truncated, prose=found.prose)
