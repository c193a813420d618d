"""Evaluation throughput: samples/s of a run through the batched engine against one sample at a time, same tiny model.

    .venv/bin/python benchmarks/bench_eval.py [--samples 32] [--batch-size 8] [--new-tokens 16] [--threads 1]
        [--reps 3] [--write benchmarks/results/eval.md]

Data: a DocVQA-layout JSON of `--samples` questions on small images (56-140 px sides, 4-25 image tokens), written
in a temporary folder. Model: the tiny random checkpoint (`make_tiny_checkpoint`), greedy, `--new-tokens` at most,
EOS ids cleared so that every sample decodes the same number of tokens in both modes. Each mode runs
`run_task` end to end (image decoding, processor, generation, extraction, scoring, the results file); the modes
alternate `--reps` times and the medians are reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

import qwen25vl
from qwen25vl.eval.runner import EngineAnswerer, run_task
from qwen25vl.eval.task import get_task
from qwen25vl.testing.checkpoint import make_tiny_checkpoint


def write_data(folder: Path, count: int) -> None:
    (folder / "documents").mkdir(parents=True)
    rows = []
    for i in range(count):
        w, h = 56 + 28 * (i % 4), 56 + 28 * (i % 3)
        Image.new("RGB", (w, h), (7 * i % 255, 90, 160)).save(folder / "documents" / f"{i}.png")
        rows.append({"questionId": i, "question": f"What is written in box {i}?", "image": f"documents/{i}.png",
                     "answers": ["x"]})
    (folder / "val_v1.0.json").write_text(json.dumps({"data": rows}))


def timed_run(vlm, data: Path, out: Path, batch_size: int, new_tokens: int, count: int) -> float:
    task = get_task("docvqa")
    profile = task.profile.overridden({"max_new_tokens": str(new_tokens)})
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    summary = run_task(task, data, EngineAnswerer(vlm), out, profile=profile, batch_size=batch_size)
    elapsed = time.perf_counter() - start
    assert summary["samples"] == count and summary["failed"] == 0, summary
    return count / elapsed


def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    return next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Model name")), "?")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--write", help="write the markdown result here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = make_tiny_checkpoint(tmp / "tiny", generation={"eos_token_id": []})
        vlm = qwen25vl.load(folder, threads=args.threads)
        vlm._stop_ids = lambda: ()  # no EOS: both modes decode exactly --new-tokens per sample
        write_data(tmp / "data", args.samples)
        timed_run(vlm, tmp / "data", tmp / "warm.jsonl", args.batch_size, 2, args.samples)  # warm-up
        one, batched = [], []
        for _ in range(args.reps):
            one.append(timed_run(vlm, tmp / "data", tmp / "one.jsonl", 1, args.new_tokens, args.samples))
            batched.append(timed_run(vlm, tmp / "data", tmp / "b.jsonl", args.batch_size, args.new_tokens,
                                     args.samples))
    m1, mb = statistics.median(one), statistics.median(batched)
    command = "`.venv/bin/python benchmarks/bench_eval.py " + " ".join(sys.argv[1:]) + "`"
    text = "\n".join([
        "# Evaluation: samples/s batched against one sample at a time (CPU)", "",
        f"Command: {command}  ",
        f"Machine: {cpu_model()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}.  ",
        f"Run: DocVQA layout, {args.samples} samples (small images, 4-25 image tokens each), tiny random model, "
        f"greedy, {args.new_tokens} new tokens per sample in both modes (EOS cleared); `run_task` end to end "
        f"(images, processor, generation, extraction, scoring, results file); medians of {args.reps} alternating "
        "runs (all runs in brackets).", "",
        "| mode | samples/s |", "|---|---:|",
        f"| one at a time (batch 1) | {m1:.2f} ({', '.join(f'{v:.2f}' for v in one)}) |",
        f"| batched (batch {args.batch_size}) | {mb:.2f} ({', '.join(f'{v:.2f}' for v in batched)}) |",
        f"| ratio | {mb / m1:.2f}x (goal >= 3x) |", "",
    ])
    return emit(text, args.write)


def emit(text: str, path: str | None) -> int:
    """Print the result; also write it to `path` when given."""
    print(text)
    if path:
        Path(path).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
