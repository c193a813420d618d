"""`qwen25vl eval TASK --data DIR -m MODEL`, `qwen25vl eval rescore RESULTS.jsonl`, `qwen25vl eval report ...`,
`qwen25vl eval list`.

A run writes RESULTS.jsonl (one line per sample; resumable), RESULTS.summary.json and RESULTS.report.md beside it,
and prints the summary table. Every profile setting can be overridden: the common ones have flags, any other with
`--set name=value` (repeatable); the profile actually used is written into the results.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qwen25vl.errors import InputError
from qwen25vl.runtime import add_runtime_args, positive_int_arg

_FLAG_SETTINGS = ("prompt", "system", "min_pixels", "max_pixels", "fps", "max_frames", "total_pixels",
                  "max_new_tokens")


def register(subparsers) -> None:
    from qwen25vl.eval.task import all_tasks

    ev = subparsers.add_parser("eval", help="evaluate on a benchmark's local files (see `qwen25vl eval list`)")
    sub = ev.add_subparsers(dest="eval_command", metavar="TASK")
    for name, task in sorted(all_tasks().items()):
        p = sub.add_parser(name, help=f"{task.metric}; data: {task.data_hint}")
        _run_args(p)
        p.set_defaults(func=cmd_run, task=name)
    rescore = sub.add_parser("rescore", help="recompute the scores of a results file offline")
    rescore.add_argument("results", help="RESULTS.jsonl written by `qwen25vl eval TASK`")
    rescore.add_argument("--json", action="store_true", help="print the summary as JSON")
    rescore.set_defaults(func=cmd_rescore)
    report = sub.add_parser("report", help="one report over several results files")
    report.add_argument("results", nargs="+")
    report.add_argument("--out", help="write the markdown here (default: print it)")
    report.set_defaults(func=cmd_report)
    listing = sub.add_parser("list", help="the tasks, their metrics, expected data layouts and profiles")
    listing.set_defaults(func=cmd_list)
    ev.set_defaults(func=lambda args: (ev.print_help(), 2)[1])


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="the benchmark's folder (or file) as downloaded")
    p.add_argument("--model", "-m", help="checkpoint folder (default: the embedded tiny model)")
    p.add_argument("--out", help="results file (default: eval-results/TASK.jsonl); an existing one is resumed")
    p.add_argument("--batch-size", type=positive_int_arg, default=8, help="conversations per generation (8)")
    p.add_argument("--limit", type=positive_int_arg, help="only the first N samples")
    p.add_argument("--retry-failed", action="store_true", help="on resume, ask failed samples again")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a profile setting")
    for name in _FLAG_SETTINGS:
        p.add_argument(f"--{name.replace('_', '-')}", dest=f"profile_{name}", metavar="VALUE",
                       help=f"override the profile's {name}")
    add_runtime_args(p)


def overrides_from_args(args) -> dict[str, str]:
    out = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--set {item!r} must be NAME=VALUE")
        out[name.strip().replace("-", "_")] = value
    for name in _FLAG_SETTINGS:
        value = getattr(args, f"profile_{name}", None)
        if value is not None:
            out[name] = value
    return out


def _paths(out: Path) -> tuple[Path, Path]:
    stem = out.with_suffix("") if out.suffix == ".jsonl" else out
    return stem.with_name(stem.name + ".summary.json"), stem.with_name(stem.name + ".report.md")


def write_outputs(summary: dict, out: Path) -> None:
    from qwen25vl.eval.report import report_markdown

    summary_path, report_path = _paths(out)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    report_path.write_text(report_markdown([summary], f"Evaluation: {summary['task']}"))


def cmd_run(args) -> int:
    from qwen25vl.eval.report import summary_table
    from qwen25vl.eval.runner import EngineAnswerer, run_task
    from qwen25vl.eval.task import get_task
    from qwen25vl.runtime import load_from_args

    task = get_task(args.task)
    profile = task.profile.overridden(overrides_from_args(args))  # checked before the slow model load
    data = Path(args.data)
    if not data.exists():
        raise InputError(f"--data {args.data!r} does not exist")
    out = Path(args.out or f"eval-results/{task.name}.jsonl")
    vlm = load_from_args(args)

    def progress(answered: int, before: int) -> None:
        print(f"\r{task.name}: {answered} answered ({before} done before)", end="", file=sys.stderr, flush=True)

    summary = run_task(task, data, EngineAnswerer(vlm), out, profile=profile, batch_size=args.batch_size,
                       limit=args.limit, model=str(args.model or "embedded"), retry_failed=args.retry_failed,
                       progress=progress)
    print(file=sys.stderr)
    write_outputs(summary, out)
    print(summary_table([summary]))
    print(f"results: {out}; summary and report beside it", file=sys.stderr)
    return 0


def cmd_rescore(args) -> int:
    from qwen25vl.eval.report import summary_table
    from qwen25vl.eval.results import rescore

    summary = rescore(args.results)
    print(json.dumps(summary, indent=2) if args.json else summary_table([summary]))
    return 0


def cmd_report(args) -> int:
    from qwen25vl.eval.report import report_markdown
    from qwen25vl.eval.results import rescore

    text = report_markdown([rescore(path) for path in args.results])
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    return 0


def cmd_list(args) -> int:
    from qwen25vl.eval.task import all_tasks

    for name, task in sorted(all_tasks().items()):
        p = task.profile
        budget = (f"fps {p.fps}, <= {p.max_frames} frames, {p.total_pixels} total pixels" if p.fps
                  else f"pixels {p.min_pixels}..{p.max_pixels}")
        print(f"{name}: {task.metric}; {budget}; max_new_tokens {p.max_new_tokens}; prompt from {p.source}\n"
              f"    data: {task.data_hint}")
    return 0
