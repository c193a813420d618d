"""`qwen25vl data run PIPELINE.yaml --in ... --out ... [--ray]` and `qwen25vl data stats OUT`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from qwen25vl.errors import InputError


def register_pipeline(sub) -> None:
    run = sub.add_parser("run", help="run a filtering / scoring pipeline over records (resumable)")
    run.add_argument("pipeline", help="pipeline file (.yaml or .json: operators with their settings) or a preset "
                     "name (rules)")
    run.add_argument("--in", dest="inputs", nargs="+", required=True, help="input .jsonl files or folders")
    run.add_argument("--out", required=True, help="output folder (kept.jsonl, summary.json, resumable work/)")
    run.add_argument("--ray", action="store_true", help="run on Ray Data (RAY_ADDRESS joins a cluster)")
    run.add_argument("--workers", type=int, default=1, help="local processes (or Ray CPUs when starting Ray)")
    run.add_argument("--shard-size", type=int, default=10000, help="records per shard (the resumable unit)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)
    stats = sub.add_parser("stats", help="show a pipeline run's per-operator counts and stats histograms")
    stats.add_argument("out", help="the run's output folder (or its summary.json)")
    stats.add_argument("--stat", action="append", default=[], help="show this stat's histogram (repeatable)")
    stats.add_argument("--json", action="store_true", help="print the summary as JSON")
    stats.set_defaults(func=cmd_stats)


def cmd_run(args) -> int:
    from qwen25vl.data.pipeline.ops import load_pipeline
    from qwen25vl.data.pipeline.runner import run_pipeline
    from qwen25vl.data.pipeline.summary import summary_table

    pipeline = load_pipeline(args.pipeline)
    if args.ray:
        import ray

        if not ray.is_initialized():
            ray.init(num_cpus=args.workers if args.workers > 1 else None, log_to_driver=False)
    summary = run_pipeline(pipeline, args.inputs, args.out, shard_size=args.shard_size, workers=args.workers,
                           engine="ray" if args.ray else "local", progress=not args.quiet)
    print(summary_table(summary))
    extra = "".join(f", {k.replace('_', ' ')}: {summary[k]}" for k in ("sft_records", "dpo_pairs") if k in summary)
    print(f"kept records: {Path(args.out) / 'kept.jsonl'}{extra}", file=sys.stderr)
    return 0


def histogram_lines(name: str, hist: dict, width: int = 30) -> list[str]:
    if "true" in hist:
        return [f"{name}: true {hist['true']}, false {hist['false']}"]
    top = max(hist["counts"]) or 1
    lines = [f"{name} (min {hist['min']}, max {hist['max']}):"]
    for lo, hi, n in zip(hist["edges"], hist["edges"][1:], hist["counts"]):
        lines.append(f"  [{lo:>10.4g}, {hi:>10.4g})  {'#' * round(width * n / top):<{width}} {n}")
    return lines


def cmd_stats(args) -> int:
    from qwen25vl.data.pipeline.summary import summary_table

    path = Path(args.out)
    path = path / "summary.json" if path.is_dir() else path
    if not path.is_file():
        raise InputError(f"{args.out!r}: no summary.json (is it a finished `qwen25vl data run` folder?)")
    summary = json.loads(path.read_text())
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return 0
    print(summary_table(summary))
    hists = summary.get("histograms", {})
    unknown = [s for s in args.stat if s not in hists]
    if unknown:
        raise InputError(f"no histogram for stat(s) {unknown}; have {sorted(hists)}")
    for name in args.stat or sorted(hists):
        print("\n".join(histogram_lines(name, hists[name])))
    return 0
