"""Stats operators over the text of a record: answer length and emptiness, repetition, malformed or cut answers,
script mixing, and whether the record is a valid training record at all. Each only measures; filters decide."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from qwen25vl.data.pipeline.ops import StatsOp, answer_texts, question_text, register
from qwen25vl.errors import Qwen25VLError

_WORD = re.compile(r"\w+", re.UNICODE)
_TOOL_OPEN, _TOOL_CLOSE = "<tool_call>", "</tool_call>"
_HTML_HINT = re.compile(r"```html|<html|data-bbox=", re.IGNORECASE)
_JSON_HINT = re.compile(r"```json|^\s*[\[{]")
# Scripts told apart by the first word of a character's Unicode name; CJK covers Han, kana and Hangul.
_SCRIPT_OF_NAME = {"LATIN": "latin", "CJK": "cjk", "HIRAGANA": "cjk", "KATAKANA": "cjk", "HANGUL": "cjk",
                   "CYRILLIC": "cyrillic", "GREEK": "greek", "ARABIC": "arabic", "HEBREW": "hebrew",
                   "DEVANAGARI": "devanagari", "THAI": "thai"}
ASK_WORDS = ("translat", "in chinese", "in english", "in french", "in german", "in japanese", "in korean",
             "in russian", "in spanish", "in arabic", "翻译", "英文", "中文", "英语", "日语")


@register("answer_text")
class AnswerText(StatsOp):
    """`answer_chars` (all answers together), `answer_empty` (an answer that is empty or whitespace only)."""

    def compute(self, rows):
        out = []
        for row in rows:
            answers = answer_texts(row)
            out.append({"answer_chars": sum(len(a) for a in answers),
                        "answer_empty": not answers or any(not a.strip() for a in answers)})
        return out


def ngram_repeat(text: str, n: int = 3) -> float:
    """Share of the answer's n-grams (words; characters for unspaced scripts) that repeat an earlier one."""
    units = _WORD.findall(text)
    if len(units) < 2 * n and len(text) > 4 * n:  # few words but long: an unspaced script, count characters
        units = [c for c in text if not c.isspace()]
    grams = [tuple(units[i:i + n]) for i in range(len(units) - n + 1)]
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


def line_repeat(text: str) -> float:
    """Share of non-blank lines that repeat an earlier line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return 0.0 if not lines else 1.0 - len(set(lines)) / len(lines)


@register("repetition")
class Repetition(StatsOp):
    """`ngram_repeat` and `line_repeat`: the largest over the record's answers."""

    def __init__(self, n: int = 3):
        super().__init__(n=n)
        self.n = int(n)

    def compute(self, rows):
        out = []
        for row in rows:
            answers = answer_texts(row) or [""]
            out.append({"ngram_repeat": round(max(ngram_repeat(a, self.n) for a in answers), 4),
                        "line_repeat": round(max(line_repeat(a) for a in answers), 4)})
        return out


def _json_balanced(text: str) -> bool:
    """Brackets outside strings close in order and nothing is left open."""
    stack, in_string, escaped = [], False, False
    pairs = {"]": "[", "}": "{"}
    for ch in text:
        if in_string:
            escaped = not escaped and ch == "\\"
            if ch == '"' and not escaped:
                in_string = False
            continue
        if ch == '"':
            in_string, escaped = True, False
        elif ch in "[{":
            stack.append(ch)
        elif ch in "]}":
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack and not in_string


def format_error(text: str) -> str | None:
    """Why an answer is cut off or malformed: unbalanced_json, broken_html, unterminated_tool_call,
    malformed_tool_call; None for an answer that looks whole."""
    from qwen25vl.tasks._json import strip_fences

    opens, closes = text.count(_TOOL_OPEN), text.count(_TOOL_CLOSE)
    if opens > closes:
        return "unterminated_tool_call"
    if opens:
        from qwen25vl.tasks.agent import parse_tool_calls

        try:
            parse_tool_calls(text)
        except Qwen25VLError:
            return "malformed_tool_call"
        return None
    if _HTML_HINT.search(text):
        from qwen25vl.tasks.documents import parse_qwenvl_html
        from qwen25vl.tasks.html_tree import parse_html_open

        body = strip_fences(text, "html")[0]
        if parse_qwenvl_html(text).truncated or parse_html_open(body)[1]:
            return "broken_html"
        return None
    if _JSON_HINT.search(text):
        body, _, fence_open = strip_fences(text, "json")
        if fence_open or not _json_balanced(body):
            return "unbalanced_json"
    return None


@register("answer_format")
class AnswerFormat(StatsOp):
    """`format_error`: the first answer's defect (see `format_error`), or None."""

    def compute(self, rows):
        return [{"format_error": next((e for e in map(format_error, answer_texts(row)) if e), None)} for row in rows]


@lru_cache(maxsize=65536)
def script_of(ch: str) -> str | None:
    """The writing system of a letter (latin, cjk, cyrillic, ...), None for digits, punctuation and symbols."""
    if not ch.isalpha():
        return None
    first = unicodedata.name(ch, "").split(" ", 1)[0]
    return _SCRIPT_OF_NAME.get(first, "other")


def script_counts(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ch in text:
        script = script_of(ch)
        if script:
            counts[script] = counts.get(script, 0) + 1
    return counts


def foreign_script_ratio(question: str, answer: str) -> float:
    """Share of the answer's letters written in a script the question does not use (0 when the question asks for
    another language or has no letters of its own)."""
    lowered = question.lower()
    if any(word in lowered for word in ASK_WORDS):
        return 0.0
    asked = script_counts(question)
    said = script_counts(answer)
    total = sum(said.values())
    if not asked or not total:
        return 0.0
    return sum(n for s, n in said.items() if s not in asked) / total


@register("code_switch")
class CodeSwitch(StatsOp):
    """`foreign_script_ratio`: the largest over the record's answers (see `foreign_script_ratio`)."""

    def compute(self, rows):
        out = []
        for row in rows:
            question = question_text(row)
            ratios = [foreign_script_ratio(question, a) for a in answer_texts(row)] or [0.0]
            out.append({"foreign_script_ratio": round(max(ratios), 4)})
        return out


@register("record_check")
class RecordCheck(StatsOp):
    """`record_error`: why `qwen25vl.data.records.parse_record` refuses the record (None when it is valid)."""

    def compute(self, rows):
        from qwen25vl.data.records import parse_record

        out = []
        for row in rows:
            record = {k: row[k] for k in ("messages", "chosen", "rejected") if k in row}
            try:
                parse_record(record, where=row.get("id", "record"))
                out.append({"record_error": None})
            except Qwen25VLError as err:
                out.append({"record_error": str(err)[:200]})
        return out
