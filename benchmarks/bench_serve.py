"""Server throughput: requests/s and tokens/s at concurrency 1, 8 and 32, against the same requests served one by one.

A small random model (CPU, fp32) is served in this process (uvicorn in a background thread, 127.0.0.1); an asyncio
httpx client sends R requests with at most C in flight. Every request generates exactly `--max-tokens` tokens
(`ignore_eos`), so the work per request is fixed. Rounds interleave the modes (one by one, C=8, C=32) so that noise
from the shared host hits them alike; the table reports medians. The machine's own limit is measured in the same
run: the model's raw batched decode loop (no server, no sampling, no text), tokens/s at batch 1 and at batch 32; and
the Python API (`VLM.generate`, same requests one by one, stopping at EOS) shows what the HTTP layer costs.

    .venv/bin/python benchmarks/bench_serve.py --threads 2 --rounds 3 --out benchmarks/results/serve.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

SMALL = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, mrope_section=(8, 12, 12))


def raw_decode_tokens_per_s(model, batch: int, prompt_len: int, steps: int) -> float:
    """The limit: prefill a batch, then time `steps` plain decode steps (argmax, no text)."""
    from qwen25vl.model.kv_cache import KVCache

    ids = torch.randint(0, 500, (batch, prompt_len))
    with torch.inference_mode():
        cache = KVCache.for_model(model, batch, prompt_len + steps + 1)
        tokens = model(ids, cache=cache, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
        start = time.perf_counter()
        for _ in range(steps):
            tokens = model(tokens, cache=cache, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
        return batch * steps / (time.perf_counter() - start)


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import qwen25vl
    from qwen25vl.serve.app import create_app
    from qwen25vl.serve.background import BackgroundServer
    from qwen25vl.serve.settings import ServeSettings
    from qwen25vl.testing.checkpoint import make_tiny_checkpoint

    folder = make_tiny_checkpoint(Path(tempfile.mkdtemp()) / "small", seed=1, **SMALL)
    vlm = qwen25vl.load(folder)
    n_params = sum(p.numel() for p in vlm.model.parameters())
    topics = ["the sea", "a mountain", "bread", "trains", "the moon", "a garden", "winter", "music"]
    bodies = [{"model": "small", "max_tokens": args.max_tokens, "temperature": 0, "ignore_eos": True,
               "messages": [{"role": "user", "content": f"Write a short note about {topics[i % 8]}, number {i}."}]}
              for i in range(args.requests)]
    modes = [("one by one", 1), ("concurrency 8", 8), ("concurrency 32", 32)]
    times: dict[str, list[float]] = {name: [] for name, _ in modes + [("Python API, one by one", 1)]}
    tokens: dict[str, int] = {}
    limits = {1: [], 32: []}
    app = create_app(vlm, ServeSettings(model_name="small", max_batch=32))
    with BackgroundServer(app) as srv:
        asyncio.run(run_load(srv.url, bodies[:4], 4))  # warm-up
        for r in range(args.rounds):
            for name, concurrency in modes:
                seconds, count = asyncio.run(run_load(srv.url, bodies, concurrency))
                times[name].append(seconds)
                tokens[name] = count
                print(f"round {r} {name}: {seconds:.2f}s, {count} tokens", file=sys.stderr)
            start, api_tokens = time.perf_counter(), 0  # the library without the server, one by one
            for body in bodies:
                done = vlm.generate(body["messages"], temperature=0, max_new_tokens=args.max_tokens)
                api_tokens += len(done[0].token_ids)
            times["Python API, one by one"].append(time.perf_counter() - start)
            tokens["Python API, one by one"] = api_tokens
            for batch in limits:  # the limit, measured between rounds (server idle)
                limits[batch].append(raw_decode_tokens_per_s(vlm.model, batch, 40, args.max_tokens))
        max_rows = app.state.scheduler.max_rows_seen

    base = statistics.median(times["one by one"])
    limit1, limit32 = statistics.median(limits[1]), statistics.median(limits[32])
    lines = [
        "# Server throughput (continuous batching)", "",
        f"Command: `.venv/bin/python benchmarks/bench_serve.py --threads {args.threads} --requests {args.requests} "
        f"--max-tokens {args.max_tokens} --rounds {args.rounds}`", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.threads} torch threads (client, HTTP server and model share the machine); CPU fp32. "
        f"Model: random, {n_params / 1e6:.1f} M parameters (text: {SMALL['num_hidden_layers']} layers, "
        f"hidden {SMALL['hidden_size']}; tiny vision tower), tiny tokenizer. Workload: {args.requests} text requests, "
        f"~40-token prompts, exactly {args.max_tokens} generated tokens each (`ignore_eos`), greedy. "
        f"Medians of {args.rounds} interleaved rounds; largest running batch seen: {max_rows} rows.", "",
        "| mode | seconds | requests/s | tokens/s | vs one by one |",
        "|---|---|---|---|---|",
    ]
    for name in times:
        seconds = statistics.median(times[name])
        lines.append(f"| {name} | {seconds:.2f} | {args.requests / seconds:.2f} | {tokens[name] / seconds:.0f} | "
                     f"{base / seconds:.2f}x |")
    lines += [
        "",
        f"The machine's own limit for this model (raw decode loop, no server, same run): {limit1:.0f} tokens/s at "
        f"batch 1, {limit32:.0f} tokens/s at batch 32. Served one by one reaches "
        f"{tokens['one by one'] / base / limit1:.0%} of the batch-1 loop; at concurrency 32 the server reaches "
        f"{tokens['concurrency 32'] / statistics.median(times['concurrency 32']) / limit32:.0%} of the batch-32 loop "
        "(the rest: prefills, HTTP, JSON, detokenizing, the client itself on the same two cores).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
