"""Markdown tables in model answers ("Convert the table in the image to markdown.").

A table is a run of consecutive lines holding an unescaped `|` that either has an alignment row (`|---|:---:|`)
or is at least two lines that all start with `|` (so a lone "a | b" in prose is not a table). Rows keep every cell,
empty ones as "" (`| a | | c |` has three cells); alignment rows are skipped (the one right after the first row
makes that row the header and gives the columns' alignment); `\\|` is a literal pipe. Ragged rows (fewer or more
cells than others) are padded with "" to the widest row and the table says `ragged=True`. A table whose last row
lost its closing pipe (or whose fence never closed) says `truncated=True`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qwen25vl.errors import InputError
from qwen25vl.tasks._json import segments

_SPLIT = re.compile(r"(?<!\\)\|")
_ALIGN_CELL = re.compile(r"^\s*(:?)-+(:?)\s*$")


@dataclass(frozen=True)
class MarkdownTable:
    """`rows`: every row (the header first when `has_header`), all `width` cells wide. `align`: per column,
    "left" / "center" / "right" or None, from the alignment row."""

    rows: tuple[tuple[str, ...], ...]
    has_header: bool = False
    align: tuple = ()
    ragged: bool = False
    truncated: bool = False

    @property
    def width(self) -> int:
        return len(self.rows[0]) if self.rows else 0

    @property
    def header(self) -> tuple[str, ...] | None:
        return self.rows[0] if self.has_header and self.rows else None

    @property
    def body(self) -> tuple[tuple[str, ...], ...]:
        return self.rows[1:] if self.has_header else self.rows

    def records(self) -> list[dict]:
        """Body rows as {header cell: value} (needs a header; columns without a header name are "column N")."""
        if self.header is None:
            raise InputError("this markdown table has no header row to name its columns")
        names = [h or f"column {i + 1}" for i, h in enumerate(self.header)]
        return [dict(zip(names, row)) for row in self.body]

    def to_json(self) -> dict:
        return {"header": list(self.header) if self.header else None, "rows": [list(r) for r in self.body],
                "align": list(self.align), "ragged": self.ragged, "truncated": self.truncated}


def _cells(line: str) -> list[str]:
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    return [c.strip().replace("\\|", "|") for c in _SPLIT.split(body)]


def _alignment(cells: list[str]) -> tuple | None:
    """Column alignments when `cells` is an alignment row, else None."""
    found = [_ALIGN_CELL.match(c) for c in cells]
    if not found or not all(found):
        return None
    kinds = {(True, True): "center", (True, False): "left", (False, True): "right", (False, False): None}
    return tuple(kinds[(bool(m.group(1)), bool(m.group(2)))] for m in found)


def _table(lines: list[str], last: bool, open_fence: bool) -> MarkdownTable | None:
    """The table these lines hold, or None; `last`: they end the answer (only then can the table be cut off)."""
    rows, align, header = [], (), False
    for i, line in enumerate(lines):
        cells = _cells(line)
        spec = _alignment(cells)
        if spec is None:
            rows.append(cells)
        elif not align:
            align, header = spec, i == 1
    piped = all(line.lstrip().startswith("|") for line in lines)
    if not rows or not (align or (piped and len(lines) >= 2)):
        return None
    width = max(len(r) for r in rows)
    ragged = any(len(r) != width for r in rows) or bool(align) and len(align) != width
    padded = tuple(tuple(r) + ("",) * (width - len(r)) for r in rows)
    align = tuple(align[:width]) + (None,) * (width - len(align)) if align else ()
    truncated = last and (open_fence or piped and not lines[-1].rstrip().endswith("|"))
    return MarkdownTable(padded, header, align, ragged, truncated)


def _runs(text: str):
    """Runs of consecutive lines that hold an unescaped pipe: (lines, ends at the end of the text)."""
    run: list[str] = []
    for line in text.rstrip().splitlines():
        if _SPLIT.search(line):
            run.append(line)
            continue
        if run:
            yield run, False
        run = []
    if run:
        yield run, True


def parse_markdown_tables(text: str) -> list[MarkdownTable]:
    """Every markdown table in an answer, in order (in fences or not; prose around them ignored)."""
    if not isinstance(text, str):
        raise InputError(f"model answer must be a string, got {type(text).__name__}")
    tables = []
    parts = segments(text)
    for n, (fenced, body, closed) in enumerate(parts):
        for lines, at_end in _runs(body):  # a closed fence after the table: the answer went on, nothing was cut
            last = at_end and n == len(parts) - 1 and not (fenced and closed)
            table = _table(lines, last, not closed)
            if table is not None:
                tables.append(table)
    return tables


def parse_markdown_table(text: str) -> MarkdownTable | None:
    """The first markdown table of an answer, or None when it has none."""
    tables = parse_markdown_tables(text)
    return tables[0] if tables else None
