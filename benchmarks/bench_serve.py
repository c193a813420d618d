"""Server throughput: requests/s and tokens/s at concurrency 1, 8 and 32, against the same requests served one by one;
and time to first token (TTFT) under load, p50 and p99, streamed, at concurrency 1 and 32.

A small random model (CPU, fp32) is served by `qwen25vl serve` in a child process (127.0.0.1); an asyncio httpx client
in this process sends R requests with at most C in flight. Every request generates exactly `--max-tokens` tokens
(`ignore_eos`), so the work per request is fixed. Rounds interleave the modes (one by one, C=8, C=32) so that noise
from the shared host hits them alike; the table reports medians. The machine's own limit is measured in the same
run: the bare model loop over the same requests (no server, no sampling, no text), one by one and batched; and the
Python API (`VLM.generate`, same requests one by one, stopping at EOS) shows what the HTTP layer costs.

TTFT: the same requests with `"stream": true`, in two more modes of each round (streamed one by one and at
concurrency 32); a request's TTFT is the time from sending it to the arrival of the first SSE chunk whose delta carries
text (the role-only opening chunk does not count). Percentiles are nearest-rank over every request of every round.

    .venv/bin/python benchmarks/bench_serve.py --threads 2 --rounds 3 --out benchmarks/results/serve.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

SMALL = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, mrope_section=(8, 12, 12))


def model_loop_seconds(vlm, bodies: list[dict], max_tokens: int, batched: bool) -> float:
    """The machine's limit for this workload: the bare model loop (prefill, argmax decode; no HTTP, no sampling,
    no text). batched=False: request after request. batched=True: every prompt prefilled on its own, then all
    rows decoded together in one cache (what continuous batching can reach at best)."""
    from qwen25vl.model.kv_cache import KVCache

    model = vlm.model
    inputs = [vlm.processor(b["messages"], add_generation_prompt=True)["input_ids"] for b in bodies]
    with torch.inference_mode():
        start = time.perf_counter()
        groups = [inputs] if batched else [[ids] for ids in inputs]
        for group in groups:
            cache, tokens = None, []
            for ids in group:
                one = KVCache.for_model(model, 1, ids.shape[1] + max_tokens)
                tokens.append(model(ids, cache=one, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True))
                cache = one if cache is None else cache.concat(one)
            step = torch.cat(tokens)  # (B, 1)
            for _ in range(max_tokens - 1):
                step = model(step, cache=cache, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
        return time.perf_counter() - start


@contextlib.contextmanager
def served(folder: Path, threads: int):
    """`qwen25vl serve` in its own process (as in production: clients do not share its interpreter)."""
    proc = subprocess.Popen([sys.executable, "-m", "qwen25vl", "serve", "--model", str(folder), "--port", "0",
                             "--threads", str(threads), "--served-model-name", "small", "--max-batch", "32"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            match = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
            if match:
                break
        else:
            raise RuntimeError("the server did not start")
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep its pipe drained
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def _health(url: str) -> str:
    import httpx

    async with httpx.AsyncClient() as client:
        return (await client.get(url + "/health")).json().get("max_rows_seen", "?")


async def run_load(url: str, bodies: list[dict], concurrency: int) -> tuple[float, int]:
    """Send all bodies with at most `concurrency` in flight; returns (seconds, completion tokens)."""
    import httpx

    limit = asyncio.Semaphore(concurrency)
    tokens = 0

    async def one(client, body):
        nonlocal tokens
        async with limit:
            response = await client.post(url + "/v1/chat/completions", json=body)
            response.raise_for_status()
            tokens += response.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as client:
        start = time.perf_counter()
        await asyncio.gather(*(one(client, b) for b in bodies))
        return time.perf_counter() - start, tokens


async def run_stream_load(url: str, bodies: list[dict], concurrency: int) -> tuple[float, int, list[float]]:
    """Streamed: all bodies with at most `concurrency` in flight; returns (seconds, completion tokens, each
    request's time to first token in seconds, from sending it to its first chunk with text)."""
    import httpx

    limit = asyncio.Semaphore(concurrency)
    tokens, ttfts = 0, []

    async def one(client, body):
        nonlocal tokens
        async with limit:
            sent, first = time.perf_counter(), None
            body = {**body, "stream": True, "stream_options": {"include_usage": True}}
            async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[len("data: "):])
                    if first is None and any(c["delta"].get("content") for c in chunk.get("choices", [])):
                        first = time.perf_counter() - sent
                    if chunk.get("usage"):
                        tokens += chunk["usage"]["completion_tokens"]
            if first is None:
                raise RuntimeError("a streamed answer carried no text")
            ttfts.append(first)

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as client:
        start = time.perf_counter()
        await asyncio.gather(*(one(client, b) for b in bodies))
        return time.perf_counter() - start, tokens, ttfts


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): a value that was measured, no interpolation."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--host-note", default="shared with other jobs: figures are noisy, compare the ratios",
                        help="what else ran on the machine, for the results' machine line")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import qwen25vl
    from qwen25vl.testing.checkpoint import make_tiny_checkpoint

    folder = make_tiny_checkpoint(Path(tempfile.mkdtemp()) / "small", seed=1, **SMALL)
    vlm = qwen25vl.load(folder)
    n_params = sum(p.numel() for p in vlm.model.parameters())
    topics = ["the sea", "a mountain", "bread", "trains", "the moon", "a garden", "winter", "music"]
    bodies = [{"model": "small", "max_tokens": args.max_tokens, "temperature": 0, "ignore_eos": True,
               "messages": [{"role": "user", "content": f"Write a short note about {topics[i % 8]}, number {i}."}]}
              for i in range(args.requests)]
    modes = [("one by one", 1), ("concurrency 8", 8), ("concurrency 32", 32)]
    streamed = [("streamed, one by one", 1), ("streamed, concurrency 32", 32)]
    times: dict[str, list[float]] = {name: [] for name, _ in modes + [("Python API, one by one", 1)] + streamed}
    ttfts: dict[str, list[float]] = {name: [] for name, _ in streamed}
    tokens: dict[str, int] = {}
    limits: dict[bool, list[float]] = {False: [], True: []}
    with served(folder, args.threads) as url:
        asyncio.run(run_load(url, bodies[:4], 4))  # warm-up
        for r in range(args.rounds):
            for name, concurrency in modes:
                seconds, count = asyncio.run(run_load(url, bodies, concurrency))
                times[name].append(seconds)
                tokens[name] = count
                print(f"round {r} {name}: {seconds:.2f}s, {count} tokens", file=sys.stderr)
            for name, concurrency in streamed:
                seconds, count, firsts = asyncio.run(run_stream_load(url, bodies, concurrency))
                times[name].append(seconds)
                tokens[name] = count
                ttfts[name] += firsts
                print(f"round {r} {name}: {seconds:.2f}s, {count} tokens, TTFT p50 "
                      f"{statistics.median(firsts) * 1e3:.0f} ms", file=sys.stderr)
            start, api_tokens = time.perf_counter(), 0  # the library without the server, one by one
            for body in bodies:
                done = vlm.generate(body["messages"], temperature=0, max_new_tokens=args.max_tokens)
                api_tokens += len(done[0].token_ids)
            times["Python API, one by one"].append(time.perf_counter() - start)
            tokens["Python API, one by one"] = api_tokens
            for batched in limits:  # the limit, measured between rounds (server idle)
                limits[batched].append(model_loop_seconds(vlm, bodies, args.max_tokens, batched))
        max_rows = asyncio.run(_health(url))

    base = statistics.median(times["one by one"])
    total = args.requests * args.max_tokens
    loop_seq, loop_batch = statistics.median(limits[False]), statistics.median(limits[True])
    note = "" if args.host_note == parser.get_default("host_note") else f" --host-note '{args.host_note}'"
    lines = [
        "# Server throughput (continuous batching)", "",
        f"Command: `.venv/bin/python benchmarks/bench_serve.py --threads {args.threads} --requests {args.requests} "
        f"--max-tokens {args.max_tokens} --rounds {args.rounds}{note}`", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores ({args.host_note}), torch {torch.__version__}; "
        f"`qwen25vl serve --threads {args.threads}` in a child process, the "
        f"httpx client in this one, on the same cores; CPU fp32. Model: random, {n_params / 1e6:.1f} M parameters "
        f"(text: {SMALL['num_hidden_layers']} layers, hidden {SMALL['hidden_size']}; tiny vision tower), tiny "
        f"tokenizer. Workload: {args.requests} text requests, ~40-token prompts, exactly {args.max_tokens} generated "
        f"tokens each (`ignore_eos`), greedy. Medians of {args.rounds} interleaved rounds; largest running batch "
        f"seen by the server: {max_rows} rows.", "",
        "| mode | seconds | requests/s | tokens/s | vs served one by one |",
        "|---|---|---|---|---|",
    ]
    for name in times:
        seconds = statistics.median(times[name])
        lines.append(f"| {name} | {seconds:.2f} | {args.requests / seconds:.2f} | {tokens[name] / seconds:.0f} | "
                     f"{base / seconds:.2f}x |")
    for name, seconds in (("bare model loop, one by one", loop_seq), ("bare model loop, all batched", loop_batch)):
        lines.append(f"| {name} | {seconds:.2f} | {args.requests / seconds:.2f} | {total / seconds:.0f} | "
                     f"{base / seconds:.2f}x |")
    c32 = statistics.median(times["concurrency 32"])
    lines += [
        "",
        "The bare model loops are the machine's own limit for this workload, measured in the same run (no HTTP, no "
        "sampling, no detokenizing: prefill each prompt, then greedy argmax steps; \"all batched\" decodes the 32 "
        f"rows together). Served one by one reaches {loop_seq / base:.0%} of the one-by-one loop; at concurrency 32 "
        f"the server reaches {loop_batch / c32:.0%} of the batched loop. Prompts cost about as much as the "
        "generated tokens here (~40 prompt tokens per 32 generated); prefills of requests that arrive together are "
        "batched, but each prompt's tokens still cost their FLOPs, so the batched gain is bounded well below 32x "
        "on this CPU.",
        "",
        "Time to first token (streamed; from sending a request to its first chunk with text; nearest-rank "
        f"percentiles over {args.rounds} rounds x {args.requests} requests):",
        "",
        "| mode | requests | TTFT p50 ms | TTFT p99 ms | TTFT max ms | tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for name in ttfts:
        values, seconds = ttfts[name], statistics.median(times[name])
        lines.append(f"| {name} | {len(values)} | {percentile(values, 50) * 1e3:.0f} | "
                     f"{percentile(values, 99) * 1e3:.0f} | {max(values) * 1e3:.0f} | {tokens[name] / seconds:.0f} |")
    lines += [
        "",
        "At concurrency 32 every request is sent at once, so a request's TTFT includes its wait for admission and "
        "the batched prefill of the requests admitted with it, and its first token waits for the decode step of "
        "all running rows; one by one, TTFT is one prefill and one sampling step plus the HTTP round trip.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
