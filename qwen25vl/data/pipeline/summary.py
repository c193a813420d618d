"""Counts, histograms and outputs of a finished run, computed from the final rows alone (so the local and Ray
paths, and a resumed run, report the same figures by construction).

Per operator i: `in` = rows not dropped before i, `dropped` = {reason: rows dropped by i}, `kept` = in - dropped;
`notes` counts rows alive at i whose `note` stat is truthy (a judge answer that did not parse). Overall:
`in` = every input line = kept + every reason of every operator (the read step included).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from qwen25vl.data.pipeline.ops import Pipeline, portable_messages

BINS = 10


def counts(pipeline: Pipeline, rows: list[dict]) -> list[dict]:
    read_drops = Counter(r["dropped"]["reason"] for r in rows if r["dropped"] and r["dropped"]["op"] == -1)
    out = [{"op": "read", "in": len(rows), "kept": len(rows) - sum(read_drops.values()),
            "dropped": dict(read_drops)}]
    for i, op in enumerate(pipeline.ops):
        alive = [r for r in rows if r["dropped"] is None or r["dropped"]["op"] >= i]
        dropped = Counter(r["dropped"]["reason"] for r in alive if r["dropped"] and r["dropped"]["op"] == i)
        entry = {"op": op.label, "in": len(alive), "kept": len(alive) - sum(dropped.values()),
                 "dropped": dict(sorted(dropped.items()))}
        note = getattr(op, "note", None)
        if note:
            entry["notes"] = {note: sum(1 for r in alive if r["stats"].get(note))}
        out.append(entry)
    return out


def histograms(rows: list[dict], bins: int = BINS) -> dict:
    """Per numeric stat: {min, max, edges, counts} over the rows that have it; booleans count true / false."""
    values: dict[str, list] = {}
    for row in rows:
        for key, value in row["stats"].items():
            if isinstance(value, (bool, int, float)) and value is not None:
                values.setdefault(key, []).append(value)
    out = {}
    for key, vals in sorted(values.items()):
        if all(isinstance(v, bool) for v in vals):
            out[key] = {"true": sum(vals), "false": len(vals) - sum(vals)}
            continue
        lo, hi = min(vals), max(vals)
        width = (hi - lo) / bins or 1.0
        hist = [0] * bins
        for v in vals:
            hist[min(int((v - lo) / width), bins - 1)] += 1
        out[key] = {"min": lo, "max": hi, "edges": [round(lo + width * b, 6) for b in range(bins + 1)],
                    "counts": hist}
    return out


def summarize(pipeline: Pipeline, rows: list[dict]) -> dict:
    rows = sorted(rows, key=lambda r: r["idx"])
    per_op = counts(pipeline, rows)
    kept = sum(1 for r in rows if r["dropped"] is None)
    reasons = Counter(r["dropped"]["reason"] for r in rows if r["dropped"])
    return {"pipeline": pipeline.source, "operators": per_op, "in": len(rows), "kept": kept,
            "dropped": dict(sorted(reasons.items())), "histograms": histograms(rows)}


def training_record(row: dict, out: Path) -> dict:
    """The row as a training record, its media paths relative to `out`."""
    record = {k: row[k] for k in ("messages", "chosen", "rejected") if k in row}
    record["messages"] = portable_messages(record["messages"], row.get("root", "."), out)
    return record


def write_outputs(out: Path, rows: list[dict], summary: dict) -> None:
    from qwen25vl.data.pipeline.rejection import training_outputs

    rows = sorted(rows, key=lambda r: r["idx"])
    out.mkdir(parents=True, exist_ok=True)
    with (out / "kept.jsonl").open("w", encoding="utf-8") as kept, \
            (out / "dropped.jsonl").open("w", encoding="utf-8") as dropped, \
            (out / "stats.jsonl").open("w", encoding="utf-8") as stats:
        for row in rows:
            if row["dropped"] is None:
                kept.write(json.dumps(training_record(row, out), ensure_ascii=False) + "\n")
            else:
                dropped.write(json.dumps({"id": row["id"], **row["dropped"]}, ensure_ascii=False) + "\n")
            stats.write(json.dumps({"id": row["id"], "stats": row["stats"], "dropped": row["dropped"]},
                                   ensure_ascii=False) + "\n")
    summary.update(training_outputs(out, rows))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))


def summary_table(summary: dict) -> str:
    """A plain-text table: one line per operator with in / kept / dropped and its reasons."""
    lines = [f"{'#':>3}  {'operator':<28} {'in':>8} {'kept':>8} {'dropped':>8}  reasons"]
    for i, entry in enumerate(summary["operators"]):
        gone = sum(entry["dropped"].values())
        reasons = ", ".join(f"{k}={v}" for k, v in entry["dropped"].items())
        notes = ", ".join(f"{k}={v}" for k, v in entry.get("notes", {}).items())
        extra = "; ".join(x for x in (reasons, notes and f"notes: {notes}") if x)
        lines.append(f"{i - 1 if i else '-':>3}  {entry['op']:<28} {entry['in']:>8} {entry['kept']:>8} {gone:>8}  "
                     f"{extra}")
    lines.append(f"total: {summary['in']} in, {summary['kept']} kept, {summary['in'] - summary['kept']} dropped")
    return "\n".join(lines)
