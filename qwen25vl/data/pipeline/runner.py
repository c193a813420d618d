"""Running a pipeline over sharded input, resumably, on a local process pool (or Ray Data, `ray_exec.py`).

Layout of `--out`:
    work/input/<shard>.jsonl          the input split into shards (rows with id, idx, root, stats, dropped)
    work/stage<k>/<shard>.jsonl       rows after stage k; `<shard>.done` beside it is the marker
    kept.jsonl                        the kept records, as training records
    dropped.jsonl                     {id, op, reason} per dropped row
    stats.jsonl                       {id, stats, dropped} per row: re-threshold without recomputing
    summary.json                      per-operator counts (in, kept, dropped by reason, notes) and histograms
A marker holds the fingerprint of the operators up to its stage: a rerun skips every shard whose marker matches,
so a run killed mid-way redoes only the shards it had not finished. Rows are written before their marker, and
both by rename, so a shard is either finished or redone whole.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

from qwen25vl.data.pipeline.ops import Pipeline
from qwen25vl.errors import InputError

PIPELINE_KEYS = ("id", "idx", "root", "stats", "dropped")
RECORD_KEYS = ("messages", "chosen", "rejected")


def input_files(paths) -> list[Path]:
    """JSONL files named directly or found (sorted) in named folders."""
    files: list[Path] = []
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        p = Path(p)
        if p.is_dir():
            files.extend(sorted(p.glob("*.jsonl")))
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"--in {str(p)!r} does not exist")
    if not files:
        raise InputError(f"no .jsonl input found in {paths}")
    return files


def read_rows(files: list[Path]):
    """Rows of the input files in order; a line that is not a record object is a row dropped at read."""
    from qwen25vl.data.records import read_jsonl

    idx = 0
    for path in files:
        for where, obj in read_jsonl(path):
            row = dict(obj) if isinstance(obj, dict) else {}
            row.update(id=where, idx=idx, root=str(path.parent), stats={}, dropped=None)
            if not isinstance(obj, dict):
                row["dropped"] = {"op": -1, "reason": "unreadable"}
            elif not isinstance(obj.get("messages"), list):
                row["dropped"] = {"op": -1, "reason": "no_messages"}
            idx += 1
            yield row


def write_rows(path: Path, rows) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def load_rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_marker(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def marker_ok(path: Path, fingerprint: str) -> bool:
    try:
        return json.loads(path.read_text()).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        return False


def apply_ops(ops: list, first: int, rows: list[dict]) -> list[dict]:
    """Run row operators `ops` (pipeline indices first, first + 1, ...) over rows, in place; dropped rows skip."""
    for j, op in enumerate(ops):
        index = first + j
        live = [r for r in rows if r["dropped"] is None]
        if op.kind == "stats":
            size = max(1, int(getattr(op, "batch_size", 256)))
            for s in range(0, len(live), size):
                chunk = live[s:s + size]
                for row, stats in zip(chunk, op.compute(chunk), strict=True):
                    row["stats"].update(stats)
        else:
            for row in live:
                reason = op.decide(row["stats"])
                if reason:
                    row["dropped"] = {"op": index, "reason": reason}
    return rows


def apply_global(op, index: int, rows: list[dict]) -> None:
    """A global operator's decisions over the live rows, in input order."""
    live = sorted((r for r in rows if r["dropped"] is None), key=lambda r: r["idx"])
    for row, reason in zip(live, op.decide_all([r["stats"] for r in live]), strict=True):
        if reason:
            row["dropped"] = {"op": index, "reason": reason}


_WORKER_PIPELINES: dict[str, Pipeline] = {}  # one built pipeline per worker process: models load once


def _worker_pipeline(specs: list) -> Pipeline:
    key = json.dumps(specs, sort_keys=True, default=str)
    if key not in _WORKER_PIPELINES:
        _WORKER_PIPELINES[key] = Pipeline(specs)
    return _WORKER_PIPELINES[key]


def run_shard(specs: list, first: int, end: int, source: str, target: str, fingerprint: str) -> int:
    """One shard through row operators first..end-1; writes its rows, then its marker. Returns the row count."""
    pipeline = _worker_pipeline(specs)
    rows = apply_ops(pipeline.ops[first:end], first, load_rows(Path(source)))
    write_rows(Path(target), rows)
    write_marker(Path(target).with_suffix(".done"), {"fingerprint": fingerprint, "rows": len(rows)})
    return len(rows)


class Run:
    """One pipeline run into `out`; `execute()` runs what is not done yet and returns the summary."""

    def __init__(self, pipeline: Pipeline, inputs, out, *, shard_size: int = 10000, workers: int = 1,
                 engine: str = "local", progress: bool = True, on_shard: Callable[[str, str], None] | None = None):
        if shard_size < 1 or workers < 1:
            raise InputError(f"shard_size and workers must be positive, got {shard_size} and {workers}")
        if engine not in ("local", "ray"):
            raise InputError(f"engine must be local or ray, got {engine!r}")
        self.pipeline, self.files, self.out = pipeline, input_files(inputs), Path(out)
        self.shard_size, self.workers, self.engine = shard_size, workers, engine
        self.progress, self.on_shard = progress, on_shard
        self.work = self.out / "work"

    def split_input(self) -> list[str]:
        """Write the input shards once (marker `work/input/_done`); returns the shard names in order."""
        folder = self.work / "input"
        marker = folder / "_done"
        if marker.is_file():
            return json.loads(marker.read_text())["shards"]
        folder.mkdir(parents=True, exist_ok=True)
        names, chunk = [], []
        for row in read_rows(self.files):
            chunk.append(row)
            if len(chunk) == self.shard_size:
                names.append(self._write_input(folder, len(names), chunk))
                chunk = []
        if chunk or not names:
            names.append(self._write_input(folder, len(names), chunk))
        write_marker(marker, {"shards": names})
        return names

    @staticmethod
    def _write_input(folder: Path, n: int, rows: list[dict]) -> str:
        name = f"shard-{n:05d}"
        write_rows(folder / f"{name}.jsonl", rows)
        return name

    def stage_dir(self, k: int) -> Path:
        return self.work / "input" if k < 0 else self.work / f"stage{k}"

    def execute(self) -> dict:
        from qwen25vl.data.pipeline.summary import summarize, write_outputs

        shards = self.split_input()
        for k, (kind, first, end) in enumerate(self.pipeline.stages()):
            folder = self.stage_dir(k)
            folder.mkdir(parents=True, exist_ok=True)
            fingerprint = self.pipeline.fingerprint(end)
            pending = [s for s in shards if not marker_ok(folder / f"{s}.done", fingerprint)]
            if not pending:
                continue
            if kind == "global":
                self._global(k, first, shards, fingerprint)
            elif self.engine == "ray":
                from qwen25vl.data.pipeline.ray_exec import run_rows_stage

                run_rows_stage(self, k, first, end, pending, fingerprint)
            else:
                self._rows_local(k, first, end, pending, fingerprint)
        rows = [r for s in shards for r in load_rows(self.stage_dir(len(self.pipeline.stages()) - 1) / f"{s}.jsonl")]
        summary = summarize(self.pipeline, rows)
        summary.update(engine=self.engine, shards=len(shards))
        write_outputs(self.out, rows, summary)
        return summary

    def _rows_local(self, k: int, first: int, end: int, pending: list[str], fingerprint: str) -> None:
        from tqdm import tqdm

        jobs = [(self.pipeline.specs, first, end, str(self.stage_dir(k - 1) / f"{s}.jsonl"),
                 str(self.stage_dir(k) / f"{s}.jsonl"), fingerprint) for s in pending]
        bar = tqdm(total=len(jobs), desc=f"stage {k} ({end - first} ops)", unit="shard", file=sys.stderr,
                   disable=not self.progress)
        if self.workers == 1 or len(jobs) == 1:
            for shard, job in zip(pending, jobs):
                run_shard(*job)
                bar.update()
                if self.on_shard:
                    self.on_shard(f"stage{k}", shard)
        else:
            with ProcessPoolExecutor(self.workers, mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(run_shard, *job): shard for shard, job in zip(pending, jobs)}
                for future in futures:  # in submission order: shards finish in any order, markers say which
                    future.result()
                    bar.update()
                    if self.on_shard:
                        self.on_shard(f"stage{k}", futures[future])
        bar.close()

    def _global(self, k: int, first: int, shards: list[str], fingerprint: str) -> None:
        per_shard = {s: load_rows(self.stage_dir(k - 1) / f"{s}.jsonl") for s in shards}
        apply_global(self.pipeline.ops[first], first, [r for rows in per_shard.values() for r in rows])
        for s, rows in per_shard.items():
            write_rows(self.stage_dir(k) / f"{s}.jsonl", rows)
            write_marker(self.stage_dir(k) / f"{s}.done", {"fingerprint": fingerprint, "rows": len(rows)})


def run_pipeline(pipeline: Pipeline, inputs, out, **kw) -> dict:
    """Run (or resume) `pipeline` on `inputs` into `out`; returns the summary (see `summary.summarize`)."""
    return Run(pipeline, inputs, out, **kw).execute()
