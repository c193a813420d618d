"""OpenAI function calling over Qwen's `<tool_call>` answers.

The model answers a call as `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>` (the Qwen2.5 layout the
chat template renders). Here that text becomes OpenAI `tool_calls` (arguments as a JSON string), in a whole answer
and in a stream: text before the first `<tool_call>` streams as content, with any tail that could still be the
start of the tag held back; everything from the tag on is held until the row ends, then sent as tool-call deltas.
A block whose JSON does not parse stays in the content (the client sees what the model wrote; nothing is lost).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Optional

from qwen25vl.errors import InputError

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def _call(body: str) -> Optional[dict]:
    """{"name", "arguments" (a JSON string)} from one block's text; None when it is not a call."""
    try:
        value, end = json.JSONDecoder().raw_decode(body)
    except json.JSONDecodeError:
        return None
    if body[end:].strip() or not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):  # some answers already hold the string form
        return {"name": value["name"], "arguments": arguments}
    return {"name": value["name"], "arguments": json.dumps(arguments, ensure_ascii=False)}


def split_tool_calls(text: str) -> tuple[Optional[str], list[dict]]:
    """(content, calls) of a whole answer. Content is the text outside parsed blocks, stripped (None when empty)."""
    calls, kept, last = [], [], 0
    for match in _BLOCK.finditer(text):
        call = _call(match.group(1))
        if call is None:
            continue
        calls.append(call)
        kept.append(text[last:match.start()])
        last = match.end()
    kept.append(text[last:])
    content = "".join(kept).strip() if calls else text
    return (content or None), calls


class ToolStream:
    """Per-choice streaming state: `push(delta) -> content to send now`; `finish() -> (content, calls)` at the end."""

    def __init__(self):
        self.sent = 0  # characters of `text` already sent as content
        self.text = ""
        self.in_call = False

    def push(self, delta: str) -> str:
        self.text += delta
        if self.in_call:
            return ""
        start = self.text.find(OPEN, self.sent)
        if start >= 0:
            self.in_call = True
            return self._send_to(start)
        hold = _partial_tag_tail(self.text)
        return self._send_to(len(self.text) - hold)

    def finish(self) -> tuple[str, list[dict]]:
        """The content not sent yet and the calls; a text without valid calls is sent whole as content."""
        rest = self.text[self.sent:]
        content, calls = split_tool_calls(rest)
        return (content or "", calls) if calls else (rest, [])

    def _send_to(self, end: int) -> str:
        out = self.text[self.sent:end]
        self.sent = max(self.sent, end)
        return out


def _partial_tag_tail(text: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `<tool_call>`."""
    for n in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-n:]):
            return n
    return 0


def tool_plan(tools: list[dict], choice) -> tuple[Optional[list[dict]], str, bool]:
    """(tools for the template, answer prefix, parse calls?) for OpenAI's `tools` and `tool_choice`.

    "none" renders no tools (the model cannot call what it is not shown); "auto" (the default) shows them and
    parses what comes back; "required" and a named function start the answer with the call's opening text, so the
    model can only complete a call (of that function): a forced call without constrained decoding.
    """
    if not tools:
        if choice not in (None, "none", "auto"):
            raise InputError(f"tool_choice={choice!r} needs tools, and the request has none")
        return None, "", False
    if choice == "none":
        return None, "", False
    if choice in (None, "auto"):
        return tools, "", True
    if choice == "required":
        return tools, OPEN + "\n", True
    names = [t["function"]["name"] for t in tools]
    if choice not in names:
        raise InputError(f"tool_choice names the function {choice!r}, which is not among the tools {names}")
    return tools, OPEN + '\n{"name": ' + json.dumps(choice, ensure_ascii=False) + ', "arguments": ', True
