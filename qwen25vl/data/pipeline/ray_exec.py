"""The Ray Data path of a rows stage: the same operators and `apply_ops` as the local path, on a `ray.data`
dataset. Rule operators run as `map_batches` tasks; each model-based operator runs as `map_batches` over an actor
pool (`actors` per operator, `num_gpus` each), the model loaded once per actor in its constructor. Rows travel as
JSON strings (records are nested and irregular, which Arrow columns are not); results are gathered, put back in
input order and written per shard with their markers, as the local path does.

Ray is started on first use when no session is running (`RAY_ADDRESS` joins a cluster); callers that want a given
size start it themselves (`ray.init(num_cpus=2)`).
"""

from __future__ import annotations

import json
from pathlib import Path

from qwen25vl.data.pipeline.runner import apply_ops, load_rows, write_marker, write_rows
from qwen25vl.errors import InputError


def _ray():
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray Data: pip install 'qwen25vl[data]'") from None
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    return ray


def _batch_rows(batch) -> list[dict]:
    return [json.loads(text) for text in batch["row"]]


def _batch_of(rows: list[dict]) -> dict:
    import numpy as np

    return {"idx": np.array([r["idx"] for r in rows], dtype=np.int64),
            "row": np.array([json.dumps(r, ensure_ascii=False) for r in rows], dtype=object)}


class RulesTask:
    """Rule operators first..end-1 over a batch (a Ray task; the pipeline is built once per worker process)."""

    def __init__(self, specs: list, first: int, end: int):
        self.specs, self.first, self.end = specs, first, end

    def __call__(self, batch):
        from qwen25vl.data.pipeline.runner import _worker_pipeline

        ops = _worker_pipeline(self.specs).ops[self.first:self.end]
        return _batch_of(apply_ops(ops, self.first, _batch_rows(batch)))


class ModelActor:
    """One model-based operator in an actor: built, and its model loaded, once when the actor starts."""

    def __init__(self, specs: list, index: int):
        from qwen25vl.data.pipeline.ops import Pipeline

        self.index = index
        self.op = Pipeline(specs).ops[index]
        self.op.answerer  # noqa: B018 (loads the model now, not inside the first batch)

    def __call__(self, batch):
        return _batch_of(apply_ops([self.op], self.index, _batch_rows(batch)))


def segments(ops: list, first: int) -> list[tuple[str, int, int]]:
    """("rules" | "model", start, end) runs of a stage's operators (pipeline indices)."""
    out: list[tuple[str, int, int]] = []
    for j, op in enumerate(ops):
        kind = "model" if op.uses_model else "rules"
        i = first + j
        if out and kind == "rules" and out[-1][0] == "rules":
            out[-1] = ("rules", out[-1][1], i + 1)
        else:
            out.append((kind, i, i + 1))
    return out


def run_rows_stage(run, k: int, first: int, end: int, pending: list[str], fingerprint: str) -> None:
    """Stage k (row operators first..end-1) of `run` on the pending shards, through Ray Data."""
    ray = _ray()
    shard_of, items = {}, []
    for shard in pending:
        for row in load_rows(run.stage_dir(k - 1) / f"{shard}.jsonl"):
            shard_of[row["idx"]] = shard
            items.append({"idx": row["idx"], "row": json.dumps(row, ensure_ascii=False)})
    grouped: dict[str, list[dict]] = {s: [] for s in pending}
    if items:
        blocks = max(1, min(len(items) // 1000, 4 * run.workers))  # ~1,000 rows a block, a few per worker
        ds = ray.data.from_items(items, override_num_blocks=blocks)
        specs = run.pipeline.specs
        for kind, start, stop in segments(run.pipeline.ops[first:end], first):
            if kind == "rules":
                ds = ds.map_batches(RulesTask(specs, start, stop), batch_size=1024, batch_format="numpy")
            else:
                op = run.pipeline.ops[start]
                ds = ds.map_batches(ModelActor, fn_constructor_kwargs={"specs": specs, "index": start},
                                    batch_size=op.batch_size, batch_format="numpy", concurrency=op.actors,
                                    num_gpus=op.num_gpus or None)
        rows = sorted((json.loads(item["row"]) for item in ds.take_all()), key=lambda r: r["idx"])
        if len(rows) != len(items):
            raise RuntimeError(f"Ray returned {len(rows)} rows for {len(items)}")
        for row in rows:
            grouped[shard_of[row["idx"]]].append(row)
    folder = Path(run.stage_dir(k))
    for shard, rows in grouped.items():
        write_rows(folder / f"{shard}.jsonl", rows)
        write_marker(folder / f"{shard}.done", {"fingerprint": fingerprint, "rows": len(rows)})
        if run.on_shard:
            run.on_shard(f"stage{k}", shard)
