"""Rows of the files benchmarks ship as: JSON (a list, or an object holding one), JSONL, parquet (the Hugging Face
mirrors; needs pyarrow, the `eval` extra), TSV (MMBench, images as base64) and plain text lines (Charades-STA).

`rows(path)` yields `(where, row)` with `where` = "file:row"; a line that is not valid JSON yields an InputError
instead of a row so that the reader reports it and goes on. `image_source` turns a row's image cell (a path
relative to one of several folders, a parquet struct with bytes, base64 text) into something `load_image` takes.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from qwen25vl.errors import InputError

Row = tuple[str, "dict | InputError"]
# Files no reader may take as data: the run's own results file, when it sits in the data folder and matches a
# reader's pattern (*.jsonl), would otherwise be read back while it grows.
EXCLUDED: set[Path] = set()


def find_files(data: Path, patterns: Sequence[str], what: str) -> list[Path]:
    """`data` itself when it is a file, else the files under it matching the first pattern that matches any."""
    data = Path(data)
    if data.is_file():
        return [data]
    if not data.is_dir():
        raise InputError(f"--data {str(data)!r} is neither a file nor a folder")
    for pattern in patterns:
        found = sorted(p for p in data.glob(pattern) if p.is_file() and p.resolve() not in EXCLUDED)
        if found:
            return found
    raise InputError(f"no {what} found in {str(data)!r} (looked for {', '.join(patterns)})")


def rows(path: Path) -> Iterator[Row]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _jsonl_rows(path)
    elif suffix == ".json":
        yield from _json_rows(path)
    elif suffix == ".parquet":
        yield from _parquet_rows(path)
    elif suffix == ".tsv":
        yield from _tsv_rows(path)
    else:
        raise InputError(f"{path}: unsupported file type {suffix!r} (json, jsonl, parquet, tsv)")


def _jsonl_rows(path: Path) -> Iterator[Row]:
    from qwen25vl.data.records import read_jsonl  # one JSONL reader: `file:line` and a per-line InputError

    yield from read_jsonl(path)


def _json_rows(path: Path) -> Iterator[Row]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
    if isinstance(data, dict):  # {"data": [...]} (DocVQA, TextVQA) or the one list an object holds
        lists = [v for v in data.values() if isinstance(v, list)]
        data = data["data"] if isinstance(data.get("data"), list) else lists[0] if len(lists) == 1 else None
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a list of rows (or an object with a 'data' list)")
    for i, row in enumerate(data):
        yield f"{path.name}:{i}", row


def _parquet_rows(path: Path) -> Iterator[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{path}: reading parquet needs pyarrow (pip install 'qwen25vl[eval]')") from None
    i = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=64):
        for row in batch.to_pylist():
            yield f"{path.name}:{i}", row
            i += 1


def _tsv_rows(path: Path) -> Iterator[Row]:
    csv.field_size_limit(sys.maxsize)  # MMBench keeps whole images in a cell
    with path.open(encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.DictReader(f, delimiter="\t")):
            yield f"{path.name}:{i}", row


def text_lines(path: Path) -> Iterator[tuple[str, str]]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                yield f"{path.name}:{number}", line.rstrip("\n")


def field(row: dict, *names: str, where: str, kind=str):
    """The first of `names` present in `row` (aliases across releases), checked to be `kind`; InputError if none."""
    for name in names:
        value = row.get(name)
        if value is not None:
            if kind is not None and not isinstance(value, kind):
                raise InputError(f"{where}: {name} must be {_kind_name(kind)}, got {type(value).__name__}")
            return value
    raise InputError(f"{where}: missing {' / '.join(names)} (keys {sorted(row)[:12]})")


def _kind_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def answers_list(value, where: str) -> list[str]:
    """A reference answer cell as a list of strings (a string, a list of strings, or a stringified list)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                return [value]
        else:
            return [value]
    if isinstance(value, (list, tuple)) and value:
        return [str(a["answer"] if isinstance(a, dict) and "answer" in a else a) for a in value]
    raise InputError(f"{where}: answers must be a string or a non-empty list, got {value!r:.60}")


def image_source(value, where: str, roots: Sequence[Path]):
    """A row's image cell -> a path (the first of `roots` / value that exists, else the first candidate, so that
    the run reports the missing file), bytes (parquet structs, base64 text)."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str) or not value:
        raise InputError(f"{where}: image must be a path, a {{bytes, path}} struct or base64 text, got {value!r:.40}")
    if len(value) > 512 and "/" not in value[:64]:  # a whole image as base64 (MMBench TSV)
        try:
            return base64.b64decode(value, validate=False)
        except (binascii.Error, ValueError):
            raise InputError(f"{where}: image cell is neither a path nor base64") from None
    return resolve_path(value, roots)


def resolve_path(value: str, roots: Sequence[Path]) -> Path:
    path = Path(value)
    if path.is_absolute():
        return path
    candidates = [root / path for root in roots] + [root / path.name for root in roots]
    return next((c for c in candidates if c.exists()), candidates[0])


def media_name(source) -> str:
    """How a media source appears in the results: its path, or what it is when it lives inside the data file."""
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes embedded>"
    if isinstance(source, list):
        return f"<{len(source)} frames from {source[0] if source else '?'}>"
    return f"<{type(source).__name__}>"
