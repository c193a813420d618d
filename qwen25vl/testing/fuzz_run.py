"""Feed the fuzz generator's inputs (`qwen25vl.testing.fuzz`) to the processor, or to the server, and record each one.

Inputs run in worker subprocesses, one at a time each: the parent sends an index, the worker builds that case,
runs it and answers one JSON line: the outcome (`ok`, `error` for the project's own error types, `bug:<Type>` for
any other exception), the seconds it took, and the peak resident memory it caused (Linux: `/proc/self/clear_refs`
resets the high-water mark before each input, `VmHWM` reads it after). An input that runs past the time limit has
its worker killed and recorded as `timeout`; a worker that dies (a crash, the OOM killer) records `crash`. Both
are failures, like `bug:*`.

    python -m qwen25vl.testing.fuzz_run --count 10000 --workers 2 --out RELIABILITY.md
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

# The caps the fuzz processor runs under; the RSS bound below is stated for them.
FUZZ_MAX_IMAGE_PIXELS = 4096 * 4096
FUZZ_MAX_FRAME_PIXELS = 2048 * 2048
FUZZ_MAX_PIXELS = 28 * 28 * 64  # resized size per image: the work after decoding stays small
# A video's output budget: at most 32 frames of at most 64 tokens' pixels each (what the server's limits also cap)
FUZZ_VIDEO_OPTIONS = {"max_frames": 32, "min_pixels": 28 * 28 * 16, "max_pixels": FUZZ_MAX_PIXELS,
                      "total_pixels": 32 * FUZZ_MAX_PIXELS}


@dataclass
class Result:
    index: int
    family: str
    outcome: str  # ok | error | bug:<Type> | timeout | crash
    seconds: float
    peak_mb: float  # peak RSS during the input, above the RSS before it
    detail: str = ""
    rss_mb: float = 0.0  # the worker's RSS before the input (a steady rise would be a leak)

    @property
    def failed(self) -> bool:
        return self.outcome not in ("ok", "error")


# ---------------------------------------------------------------- inside a worker

def _memory_kb(field_name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name):
                return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    """Return freed heap to the system (glibc keeps it otherwise, hiding the next input's cost), then reset the
    high-water mark to the current RSS."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _processor_target(workdir: Path):
    from qwen25vl.processing.processor import Processor
    from qwen25vl.testing.tokenizer import write_preprocessor_config, write_tiny_tokenizer

    folder = write_tiny_tokenizer(workdir / "tokenizer")
    write_preprocessor_config(folder, max_pixels=FUZZ_MAX_PIXELS)
    processor = Processor.from_pretrained(folder, max_image_pixels=FUZZ_MAX_IMAGE_PIXELS,
                                          max_frame_pixels=FUZZ_MAX_FRAME_PIXELS)

    def run(case) -> str:
        processor([{"role": "user", "content": _processor_content(case)}], max_length=200_000,
                  video_options=FUZZ_VIDEO_OPTIONS)
        return "ok"
    return run


def _processor_content(case) -> list | str:
    if case.kind == "text":
        return case.source
    part = {"type": case.kind, case.kind: case.source, **{k: v for k, v in case.options.items() if k != "note"}}
    return [part, {"type": "text", "text": "Describe."}]


def _server_target(workdir: Path):
    from fastapi.testclient import TestClient

    import qwen25vl
    from qwen25vl.serve.app import create_app
    from qwen25vl.serve.settings import Limits, ServeSettings
    from qwen25vl.testing.checkpoint import make_tiny_checkpoint

    vlm = qwen25vl.load(make_tiny_checkpoint(workdir / "model", preprocessor={"max_pixels": FUZZ_MAX_PIXELS}))
    # max_prompt_tokens: a 10,000-token prompt took 8 s of tiny-model prefill in the server (0.2 s to process)
    limits = Limits(max_image_pixels=FUZZ_MAX_PIXELS, max_decoded_pixels=FUZZ_MAX_IMAGE_PIXELS, max_frames=16,
                    max_prompt_tokens=4096)
    settings = ServeSettings(local_roots=(workdir,), limits=limits)
    client = TestClient(create_app(vlm, settings))
    client.__enter__()  # runs the app's lifespan (the scheduler) for the worker's life

    def run(case) -> str:
        body = {"model": settings.model_name, "max_tokens": 1, "messages": [
            {"role": "user", "content": _server_content(case)}]}
        # as clients write it: a lone surrogate as the escape \ud800, infinity as the (non-standard) Infinity
        raw = json.dumps(body).encode()
        status = client.post("/v1/chat/completions", content=raw,
                             headers={"Content-Type": "application/json"}).status_code
        if client.get("/v1/models").status_code != 200:
            return "bug:server-not-answering"
        return "ok" if status == 200 else ("error" if 400 <= status < 500 else f"bug:HTTP{status}")
    return run


def _server_content(case) -> list | str:
    if case.kind == "text":
        return case.source
    source = case.source
    if isinstance(source, list):
        source = [_as_url(s, "image/png") for s in source]
    else:
        source = _as_url(source, "video/mp4" if case.kind == "video" else "image/png")
    key = "image_url" if case.kind == "image" else "video_url"
    options = {k: v for k, v in case.options.items() if k != "note"}
    return [{"type": key, key: {"url": source}, **options}, {"type": "text", "text": "Describe."}]


def _as_url(source, mime: str):
    """What a client can send: bytes as a data URL, arrays as PNG data URLs, strings (paths, URLs) as they are."""
    import io

    import numpy as np
    from PIL import Image

    if isinstance(source, np.ndarray):
        try:
            buf = io.BytesIO()
            Image.fromarray(source).save(buf, "PNG")
            source = buf.getvalue()
        except (TypeError, ValueError, OSError):
            source = b""
    if isinstance(source, (bytes, bytearray)):
        return f"data:{mime};base64," + base64.b64encode(source).decode()
    return source if isinstance(source, str) else repr(source)


def worker(seed: int, workdir: Path, server: bool) -> None:
    """Answer one JSON line per index read from stdin."""
    from qwen25vl.errors import Qwen25VLError
    from qwen25vl.testing.fuzz import make_case, warm_templates

    target = (_server_target if server else _processor_target)(workdir)
    warm_templates()
    print("ready", flush=True)
    for line in sys.stdin:
        index = int(line)
        case = make_case(index, seed, workdir) if index >= 0 else _self_test_case(index)
        detail = ""
        _reset_peak()
        before = _memory_kb("VmRSS")
        start = time.perf_counter()
        try:
            outcome = case.source() if case.kind == "self-test" else target(case)
        except Qwen25VLError as err:
            outcome, detail = "error", str(err)[:160]
        except Exception as err:  # what the fuzz exists to find
            outcome, detail = f"bug:{type(err).__name__}", str(err)[:160]
        seconds = time.perf_counter() - start
        peak = (_memory_kb("VmHWM") - before) / 1024
        case.cleanup()
        print(json.dumps({"index": index, "family": case.family, "outcome": outcome, "seconds": round(seconds, 4),
                          "peak_mb": round(peak, 1), "detail": detail, "rss_mb": round(before / 1024, 1)}),
              flush=True)


def _self_test_case(index: int):
    """Negative indices: inputs that fail on purpose, so tests can check the runner records each failure kind."""
    from qwen25vl.testing.fuzz import Case

    def hang():
        threading.Event().wait()  # an input that never finishes

    actions = {-1: lambda: 1 / 0, -2: hang, -3: lambda: os._exit(3), -4: lambda: "ok"}
    names = {-1: "bug", -2: "hang", -3: "crash", -4: "ok"}
    return Case(index, f"self-test/{names[index]}", "self-test", actions[index])


# ---------------------------------------------------------------- the parent

class _Worker:
    def __init__(self, seed: int, workdir: Path, server: bool, start_timeout: float = 120.0):
        cmd = [sys.executable, "-m", "qwen25vl.testing.fuzz_run", "--worker", "--seed", str(seed),
               "--workdir", str(workdir)] + (["--server"] if server else [])
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.died = False
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=env, bufsize=1)
        if self._line(start_timeout) != "ready":
            self.close()
            raise RuntimeError(f"fuzz worker did not start: {' '.join(cmd)}")

    def _line(self, timeout: float) -> str | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        self.died = self.died or not line  # end of output: the worker is gone, even before it can be reaped
        return line.strip() if line else None

    def run(self, index: int, timeout: float) -> Result | None:
        """None when the input took longer than `timeout` or the worker died (the caller replaces the worker)."""
        try:
            self.proc.stdin.write(f"{index}\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.died = True
            return None
        line = self._line(timeout)
        return Result(**json.loads(line)) if line else None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def run_fuzz(indices, *, seed: int = 0, timeout: float = 10.0, server: bool = False, workdir: str | None = None,
             progress=None) -> list[Result]:
    """Run each input index in a worker subprocess; a timeout or a dead worker is recorded and the worker replaced."""
    from qwen25vl.testing.fuzz import FAMILIES

    with tempfile.TemporaryDirectory(prefix="qwen25vl-fuzz-", dir=workdir) as folder:
        results, proc = [], None
        try:
            for n, index in enumerate(indices):
                proc = proc or _Worker(seed, Path(folder), server)
                start = time.monotonic()
                result = proc.run(index, timeout)
                if result is None:
                    outcome = "crash" if proc.died or proc.proc.poll() is not None else "timeout"
                    proc.close()
                    proc = None
                    family = FAMILIES[index % len(FAMILIES)][0] if index >= 0 else "self-test"
                    result = Result(index, family, outcome, time.monotonic() - start, 0.0)
                results.append(result)
                if progress is not None:
                    progress(n + 1, result)
        finally:
            if proc is not None:
                proc.close()
    return results


def run_parallel(count: int, *, workers: int, start: int = 0, **kw) -> list[Result]:
    """`count` consecutive indices split round-robin over `workers` parent threads, each with its own subprocess."""
    from concurrent.futures import ThreadPoolExecutor

    shards = [range(start + w, start + count, workers) for w in range(workers)]
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(lambda shard: run_fuzz(shard, **kw), shards))
    return sorted((r for part in parts for r in part), key=lambda r: r.index)


# ---------------------------------------------------------------- the table

def _group(family: str) -> str:
    return "/".join(family.split("/")[:2])


def summary_table(results: list[Result]) -> str:
    """One markdown row per family group: counts by outcome, the slowest input and the largest peak RSS."""
    groups: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        groups[_group(r.family)].append(r)
    rows = ["| family | inputs | ok | InputError | other exception | timeout / crash | max s | max peak RSS MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in sorted(groups) + ["**all**"]:
        rs = results if name == "**all**" else groups[name]
        count = lambda *kinds: sum(r.outcome in kinds for r in rs)  # noqa: E731
        bugs = sum(r.outcome.startswith("bug:") for r in rs)
        rows.append(f"| {name} | {len(rs)} | {count('ok')} | {count('error')} | {bugs} | "
                    f"{count('timeout', 'crash')} | {max(r.seconds for r in rs):.2f} | "
                    f"{max(r.peak_mb for r in rs):.0f} |")
    return "\n".join(rows)


def failures(results: list[Result]) -> list[Result]:
    return [r for r in results if r.failed]


def write_report(results: list[Result], out: Path, *, seed: int, seconds: float, server: bool) -> None:
    """Replace the text between the fuzz markers of `out` (or append it) with this run's table."""
    mode = "server" if server else "processor"
    begin, end = f"<!-- fuzz:{mode}:begin -->", f"<!-- fuzz:{mode}:end -->"
    worst = max(results, key=lambda r: r.peak_mb)
    command = f"python -m qwen25vl.testing.fuzz_run --count {len(results)} --seed {seed}{' --server' * server}"
    lines = [begin, f"### Through the {mode}", "", f"Run: `{command}` ({seconds:.0f} s wall, {os.cpu_count()} cores).", "",
             summary_table(results), "",
             f"Largest peak RSS above the worker's resting RSS: {worst.peak_mb:.0f} MB ({worst.family}, input "
             f"{worst.index}). Failures (other exception, timeout, crash): {len(failures(results))}."]
    for r in failures(results)[:20]:
        lines.append(f"- input {r.index} {r.family}: {r.outcome} {r.detail}")
    lines.append(end)
    block = "\n".join(lines)
    text = out.read_text() if out.exists() else ""
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    out.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--server", action="store_true", help="send each input to the HTTP server instead")
    parser.add_argument("--out", type=Path, help="markdown file to write the table into (e.g. RELIABILITY.md)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.seed, args.workdir, args.server)
        return 0
    start = time.monotonic()
    results = run_parallel(args.count, workers=args.workers, start=args.start, seed=args.seed, timeout=args.timeout,
                           server=args.server)
    seconds = time.monotonic() - start
    print(summary_table(results))
    for r in failures(results):
        print(f"FAIL input {r.index} {r.family}: {r.outcome} {r.detail}")
    if args.out:
        write_report(results, args.out, seed=args.seed, seconds=seconds, server=args.server)
    return 1 if failures(results) else 0


if __name__ == "__main__":
    sys.exit(main())
