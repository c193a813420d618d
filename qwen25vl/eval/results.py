"""The results file: JSONL, a header line (task, profile, model, data) then one line per sample:

    {"kind": "sample", "id", "status": "ok" | "failed" | "skipped", "reason", "prompt", "system", "media",
     "raw", "extracted", "target", "score", "context", "meta", "finish_reason"}

Appended and flushed batch by batch, so an interrupted run loses at most the batch in flight; a cut-off last line is
dropped when the run resumes. The summary (and rescoring) takes the last line of each id. Failed samples count as
wrong (they are part of the benchmark); skipped rows (malformed in the data) are reported, not scored.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from qwen25vl.errors import InputError
from qwen25vl.eval.task import Task

VERSION = 1
_BREAKDOWN_MAX_VALUES = 40  # a meta key with more distinct values (ids, file names) is no useful breakdown


class ResultsFile:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> tuple[dict | None, list[dict]]:
        """(header, sample records) as stored; a last line cut off mid-write is ignored."""
        if not self.path.is_file():
            return None, []
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        header, records = None, []
        for number, line in enumerate(lines, start=1):
            if not line.endswith("\n"):
                break  # the run was killed while writing this line
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise InputError(f"{self.path}:{number}: not valid JSON; is this a results file?") from None
            if obj.get("kind") == "header":
                header = obj
            elif obj.get("kind") == "sample":
                records.append(obj)
        if header is None and records:
            raise InputError(f"{self.path}: no header line (task and profile); is this a results file?")
        return header, records

    def start(self, header: dict) -> list[dict]:
        """Open for a run: a new file gets `header`; an existing one must have been written by the same task and
        profile (else InputError naming the first difference). Returns the records already there."""
        old, records = self.read()
        if old is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(_line(header), encoding="utf-8")
            return []
        _check_same(old, header, self.path)
        self._drop_partial_line()
        return records

    def _drop_partial_line(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            self.path.write_bytes(data[: data.rfind(b"\n") + 1])

    def append(self, records: list[dict]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write("".join(_line(r) for r in records))
            f.flush()


def _line(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str) + "\n"


def _check_same(old: dict, new: dict, path: Path) -> None:
    if old.get("task") != new["task"]:
        raise InputError(f"{path} holds results of task {old.get('task')!r}, not {new['task']!r}; use another --out")
    for key, value in new["profile"].items():
        if key != "name" and old["profile"].get(key) != value:  # the settings decide, not what they are called
            raise InputError(f"{path} was written with profile setting {key}={old['profile'].get(key)!r}, this run "
                             f"asks {value!r}; resume with the same settings or write to another --out")


def latest(records: list[dict]) -> list[dict]:
    """The last record of each id, in first-seen order."""
    by_id: dict[str, dict] = {}
    for r in records:
        by_id.pop(r["id"], None)
        by_id[r["id"]] = r
    return list(by_id.values())


def summarize(task: Task, header: dict, records: list[dict]) -> dict:
    """Scores (percent), counts and reasons of a run, from its header and records."""
    records = latest(records)
    scored = [r for r in records if r["status"] in ("ok", "failed")]
    scores = [float(r["score"]) if r["status"] == "ok" else 0.0 for r in scored]
    metrics = {k: 100.0 * v for k, v in task.summary(scores).items()}
    failed = [r for r in records if r["status"] == "failed"]
    skipped = [r for r in records if r["status"] == "skipped"]
    return {
        "task": task.name, "model": header.get("model"), "profile": header["profile"].get("name"),
        "metric": task.metric, "score": metrics[task.metric], "metrics": metrics,
        "samples": len(scored), "answered": len(scored) - len(failed),
        "unextracted": sum(1 for r in scored if r["status"] == "ok" and r.get("extracted") is None),
        "failed": len(failed), "failed_reasons": _reasons(failed),
        "skipped": len(skipped), "skipped_reasons": _reasons(skipped),
        "breakdown": _breakdown(task, scored),
        "published": dict(task.published),
    }


def _reasons(records: list[dict]) -> dict[str, int]:
    return dict(Counter(r.get("reason_kind") or "other" for r in records).most_common())


def _breakdown(task: Task, scored: list[dict]) -> dict:
    groups: dict[str, dict[str, list[float]]] = {}
    for r in scored:
        for key, value in (r.get("meta") or {}).items():
            groups.setdefault(key, {}).setdefault(str(value), []).append(
                float(r["score"]) if r["status"] == "ok" else 0.0)
    out = {}
    for key, values in groups.items():
        if 1 < len(values) <= _BREAKDOWN_MAX_VALUES:
            out[key] = {v: {"score": 100.0 * task.summary(s)[task.metric], "samples": len(s)}
                        for v, s in sorted(values.items())}
    return out


def rescore_records(task: Task, records: list[dict]) -> list[dict]:
    """Records with the answer extracted and scored again from the stored raw answer, context and target."""
    out = []
    for r in records:
        if r["status"] == "ok":
            extracted = task.extract(r["raw"], r.get("context") or {})
            r = {**r, "extracted": extracted, "score": task.score(extracted, r["target"])}
        out.append(r)
    return out


def rescore(path: str | Path) -> dict:
    """The summary recomputed offline from a results file (with the current extractors and metrics)."""
    from qwen25vl.eval.task import get_task

    header, records = ResultsFile(path).read()
    if header is None:
        raise InputError(f"{path}: no results (empty or missing file)")
    task = get_task(header["task"])
    return summarize(task, header, rescore_records(task, records))
