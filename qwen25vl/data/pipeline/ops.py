"""The operator contract, the registry, and pipelines read from YAML or JSON.

A row is a training record (`messages`, optional `chosen` / `rejected` / `meta`) plus the pipeline's own fields:
`id` (`file:line`), `idx` (its place in the input), `stats` (what stats operators computed) and `dropped`
(`{"op": index, "reason": ...}` once a filter dropped it, else None). Three kinds of operator, never mixed:

- `StatsOp.compute(rows) -> [stats dict per row]`: measures, never decides; batched (model operators batch the
  engine's generation over the rows of a call). `note` names a stat whose truthy value the run counts (for
  example a judge answer that could not be parsed).
- `FilterOp.decide(stats) -> reason | None`: keep or drop from the stats alone, so a threshold changes without
  recomputing anything.
- `GlobalOp.decide_all(stats of every live row, in input order) -> [reason | None]`: decisions that need the
  whole input (deduplication); the runner gives it all shards at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar

from qwen25vl.errors import ConfigError

REGISTRY: dict[str, type["Operator"]] = {}
PRESETS = Path(__file__).with_name("presets")  # pipeline files shipped with the package, by name (`rules`)


def register(name: str):
    """Class decorator: make the operator available to pipeline files under `name`."""
    def add(cls):
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ConfigError(f"operator name {name!r} is already registered by {REGISTRY[name].__name__}")
        cls.op_name = name
        REGISTRY[name] = cls
        return cls
    return add


class Operator:
    op_name: ClassVar[str] = "operator"
    kind: ClassVar[str] = "stats"
    uses_model: ClassVar[bool] = False

    def __init__(self, **settings: Any):
        self.settings = settings

    def __repr__(self) -> str:
        return f"{self.op_name}({self.settings})"

    @property
    def label(self) -> str:
        """A short name for summaries (filters add the stat they read)."""
        return self.op_name


class StatsOp(Operator):
    kind = "stats"
    note: ClassVar[str | None] = None
    batch_size: int = 256

    def compute(self, rows: list[dict]) -> list[dict]:
        raise NotImplementedError


class FilterOp(Operator):
    kind = "filter"

    def decide(self, stats: dict) -> str | None:
        raise NotImplementedError


class GlobalOp(Operator):
    kind = "global"

    def decide_all(self, stats: list[dict]) -> list[str | None]:
        raise NotImplementedError


def _ensure_builtin_ops() -> None:
    # importing the modules registers their operators
    from qwen25vl.data.pipeline import dedup, filters, judge, media_rules, rejection, text_rules  # noqa: F401


def build_op(spec: Any, where: str = "operator") -> Operator:
    """`{"op": name, **settings}` (or a bare name) -> an operator; unknown names and settings are ConfigErrors."""
    _ensure_builtin_ops()
    if isinstance(spec, str):
        spec = {"op": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("op"), str):
        raise ConfigError(f"{where}: an operator is {{op: NAME, ...settings}}, got {spec!r:.80}")
    settings = {k: v for k, v in spec.items() if k != "op"}
    cls = REGISTRY.get(spec["op"])
    if cls is None:
        raise ConfigError(f"{where}: unknown operator {spec['op']!r} (known: {', '.join(sorted(REGISTRY))})")
    if settings and cls.__init__ is Operator.__init__:
        raise ConfigError(f"{where} ({spec['op']}): bad settings {sorted(settings)}: the operator takes none")
    try:
        return cls(**settings)
    except TypeError as err:
        raise ConfigError(f"{where} ({spec['op']}): bad settings {sorted(settings)}: {err}") from None


class Pipeline:
    """An ordered list of operators with the settings they were built from (for markers and summaries)."""

    def __init__(self, specs: list, source: str = "pipeline"):
        if not isinstance(specs, list) or not specs:
            raise ConfigError(f"{source}: a pipeline is a non-empty list of operators")
        self.specs = [s if isinstance(s, dict) else {"op": s} for s in specs]
        self.ops = [build_op(s, f"{source}: operators[{i}]") for i, s in enumerate(self.specs)]
        self.source = source

    def fingerprint(self, upto: int | None = None) -> str:
        """A hash of the first `upto` operators' specs: a marker from another pipeline prefix is not reused."""
        text = json.dumps(self.specs[:upto], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def stages(self) -> list[tuple[str, int, int]]:
        """(kind, first op, end op) runs: consecutive row operators form one "rows" stage, each global op its own."""
        out: list[tuple[str, int, int]] = []
        for i, op in enumerate(self.ops):
            kind = "global" if op.kind == "global" else "rows"
            if out and out[-1][0] == "rows" and kind == "rows":
                out[-1] = ("rows", out[-1][1], i + 1)
            else:
                out.append((kind, i, i + 1))
        return out


def load_pipeline(path: str | Path) -> Pipeline:
    """A pipeline file: YAML or JSON, either a list of operators or `{operators: [...]}`; a bare name that is no
    file names a preset (`rules`: presets/rules.yaml)."""
    path = Path(path)
    if not path.is_file() and (PRESETS / f"{path}.yaml").is_file():
        path = PRESETS / f"{path}.yaml"
    if not path.is_file():
        presets = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise ConfigError(f"pipeline file {path} does not exist (presets: {presets})")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:  # json.JSONDecodeError, yaml.YAMLError (not a ValueError)
        raise ConfigError(f"{path}: cannot parse: {err}") from None
    if isinstance(data, dict):
        data = data.get("operators")
    return Pipeline(data, source=str(path))


# ----- what operators read from a row


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def answer_texts(row: dict) -> list[str]:
    """The text of every assistant answer (messages, then chosen)."""
    messages = list(row.get("messages") or []) + list(row.get("chosen") or [])
    return [_text_of(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]


def question_text(row: dict) -> str:
    """The user and system text of the record, joined."""
    return "\n".join(_text_of(m.get("content")) for m in row.get("messages") or []
                     if isinstance(m, dict) and m.get("role") in ("user", "system"))


def media_parts(row: dict) -> list[dict]:
    """Image and video parts of the record, in order."""
    out = []
    for message in row.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            out.extend(p for p in content if isinstance(p, dict) and p.get("type") in ("image", "video"))
    return out


def resolve_media(source: str, root: str | Path) -> str:
    """A record's media source as a path from the working folder (URLs and absolute paths unchanged)."""
    if source.startswith(("http://", "https://", "data:")) or os.path.isabs(source):
        return source
    return os.path.join(root, source)


def portable_messages(messages: list[dict], root: str | Path, out: str | Path) -> list[dict]:
    """Messages with local media paths made relative to `out` (where the records are written), so they still
    find their files; URLs and data URLs pass through."""
    def local(p) -> bool:
        source = p.get(p.get("type")) if isinstance(p, dict) and p.get("type") in ("image", "video") else None
        return isinstance(source, str) and not source.startswith(("http://", "https://", "data:"))

    fixed = []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            content = [{**p, p["type"]: os.path.relpath(resolve_media(p[p["type"]], root), out)} if local(p) else p
                       for p in content]
            m = {**m, "content": content}
        fixed.append(m)
    return fixed
