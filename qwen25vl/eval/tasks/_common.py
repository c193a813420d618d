"""Pieces the task families share: rows -> samples with malformed rows reported, short-answer extraction, and the
prompt phrasings Qwen's evaluations use."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from qwen25vl.errors import InputError
from qwen25vl.eval import sources
from qwen25vl.eval.task import Sample, Skipped

# The short-answer instruction of the Qwen-VL family's VQA evaluations (document, chart and scene-text VQA).
SHORT_ANSWER = "{question}\nAnswer the question using a single word or phrase."
# The multiple-choice instruction Qwen's evaluations append after the lettered options.
CHOICE_ANSWER = "{question}\n{options}\nAnswer with the option's letter from the given choices directly."

# The official preprocessor's limits (SPEC section 4): what the report's image benchmarks ran at.
OFFICIAL_MIN_PIXELS = 4 * 28 * 28
OFFICIAL_MAX_PIXELS = 16384 * 28 * 28

Make = Callable[[dict, str, Path], Sample]


def table_samples(data: Path, patterns: Sequence[str], what: str, make: Make) -> Iterator[Sample | Skipped]:
    """Every row of the matching files through `make(row, where, file)`; an InputError becomes a Skipped."""
    for path in sources.find_files(data, patterns, what):
        for where, row in sources.rows(path):
            yield _sample_or_skip(make, row, where, path)


def _sample_or_skip(make: Make, row, where: str, path: Path) -> Sample | Skipped:
    if isinstance(row, InputError):
        return Skipped(where, str(row))
    if not isinstance(row, dict):
        return Skipped(where, f"{where}: a row must be an object, got {type(row).__name__}")
    try:
        return make(row, where, path)
    except InputError as err:
        return Skipped(where, str(err))


def row_id(row: dict, where: str, *names: str) -> str:
    for name in names:
        if row.get(name) is not None:
            return str(row[name])
    return where  # releases without ids: the file and row number are stable


_LEAD_IN = re.compile(r"^(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*", re.IGNORECASE)


def short_answer(raw: str, context: dict | None = None) -> str:
    """The answer of a short-answer prompt: its first non-empty line, markup, an "Answer:" lead-in and a final full
    stop removed."""
    line = next((ln for ln in raw.strip().splitlines() if ln.strip()), "")
    line = re.sub(r"[*`]+", "", line).strip()
    line = _LEAD_IN.sub("", line).strip()
    return line[:-1].rstrip() if line.endswith(".") else line


def first_roots(path: Path, *names: str) -> list[Path]:
    """Folders an image path may be relative to: the file's folder, named subfolders of it, and its parent."""
    base = path.parent
    return [base, *(base / n for n in names), base.parent, *(base.parent / n for n in names)]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
