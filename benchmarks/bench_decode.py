"""Decode speed: our generation against transformers' generate on the same random weights, CPU, one process.

    .venv/bin/python benchmarks/bench_decode.py [--size 0.5b|small] [--threads 2] [--new-tokens 24] [--reps 2]
        [--write benchmarks/results/generation.md]

Model: Qwen2.5-0.5B's LLM shapes (hidden 896, 24 layers, 14 heads / 2 KV heads, MLP 4864, vocab 151936, tied) with a
small vision tower (4 blocks, 128 wide), random weights written once with `make_tiny_checkpoint` and loaded by both
sides from that folder. Greedy decoding, no stop tokens, fp32.

- decode tokens/s = (new_tokens - 1) / (time from the first token to the end), batch 1 and batch 8 (prompts of
  48-64 text tokens, left-padded). transformers' first-token time comes from a streamer at batch 1 and from a
  separate 1-token run at batch 8 (its streamers take one row only).
- time to first token: an image prompt (448 x 448 -> 256 image tokens) + text, vision tower included.
- memory bandwidth: a 1 GiB tensor copy (read + write bytes / time), best of 3, measured in the same run; achieved
  share at batch 1 = bytes of weights read per token (LLM layers + lm_head, fp32) x tokens/s / bandwidth.
Runs alternate ours and the reference, `--reps` times; the best of each is reported (the host is shared).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time

import torch

from qwen25vl.generation.generate import TokenGenerator
from qwen25vl.generation.layout import use_decode_layout
from qwen25vl.generation.sampling import SamplingParams
from qwen25vl.model.vlm import Qwen25VL
from qwen25vl.testing.checkpoint import make_tiny_checkpoint

IMAGE, VSTART, VEND = 524, 521, 522
SIZES = {
    "0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, mrope_section=(8, 12, 12), tie_word_embeddings=True,
                 vision_depth=4, vision_hidden_size=128, vision_intermediate_size=256, vision_num_heads=2,
                 vision_fullatt_block_indexes=(3,)),
    "small": dict(vocab_size=32768, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, mrope_section=(8, 12, 12), tie_word_embeddings=True,
                  vision_depth=2, vision_hidden_size=64, vision_intermediate_size=128, vision_num_heads=2,
                  vision_fullatt_block_indexes=(1,)),
}


def bandwidth_gbs(nbytes: int = 1 << 30, reps: int = 3) -> float:
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best / 1e9


def prompts(batch: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = [64 - (8 * i) % 17 for i in range(batch)]
    width = max(lengths)
    ids = torch.full((batch, width), 512)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, width - n :] = torch.randint(0, 500, (n,), generator=g)
        mask[b, width - n :] = 1
    return {"input_ids": ids, "attention_mask": mask}


def image_prompt(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    grid = (1, 32, 32)  # 448 x 448 px -> 1024 patches -> 256 tokens
    ids = [513] + torch.randint(0, 500, (10,), generator=g).tolist() + [VSTART] + [IMAGE] * 256 + [VEND] + [7, 8, 9]
    ids = torch.tensor([ids])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "pixel_values": torch.randn(1024, 1176, generator=g), "image_grid_thw": torch.tensor([grid])}


def ours(model, inputs: dict, n: int) -> tuple[float, float]:
    """(time to first token, decode tokens/s per row) of one greedy run of n tokens."""
    t = time.perf_counter()
    gen = TokenGenerator(model, inputs, SamplingParams(max_new_tokens=n))
    first = None
    for _ in gen:
        first = first or time.perf_counter()
    end = time.perf_counter()
    assert all(len(row) == n for row in gen.tokens)
    return first - t, (n - 1) / max(end - first, 1e-9)


class _Clock:
    """A transformers streamer that only notes when tokens arrive: put() gets the prompt first, then each step."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        self.times.append(time.perf_counter())


def reference(hf, inputs: dict, n: int) -> tuple[float, float]:
    ids = inputs["input_ids"]
    extra = {k: v for k, v in inputs.items() if k != "input_ids"}
    mm = (ids == IMAGE).long()
    clock = _Clock()
    t = time.perf_counter()
    with torch.no_grad():
        out = hf.generate(input_ids=ids, **extra, mm_token_type_ids=mm, max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, eos_token_id=None, pad_token_id=512, temperature=None, top_p=None,
                          top_k=None, repetition_penalty=None, streamer=clock if ids.shape[0] == 1 else None)
    end = time.perf_counter()
    assert out.shape[1] == ids.shape[1] + n
    if n == 1:
        return end - t, 0.0
    if ids.shape[0] > 1:  # streamers take batch 1 only: fall back to one more run of 1 token
        first = reference(hf, inputs, 1)[0]
        return first, (n - 1) / max(end - t - first, 1e-9)
    return clock.times[1] - t, (n - 1) / max(end - clock.times[1], 1e-9)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--write", help="markdown file for the results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers

    folder = tempfile.mkdtemp(prefix="bench_decode_")
    t = time.perf_counter()
    make_tiny_checkpoint(folder, seed=0, **SIZES[args.size])
    print(f"checkpoint written in {time.perf_counter() - t:.1f}s: {folder}", file=sys.stderr)
    model = Qwen25VL.from_pretrained(folder, dtype=torch.float32, device="cpu", progress=False).eval()
    hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    layer_bytes = sum(p.numel() * p.element_size() for p in model.model.layers.parameters())
    read_bytes = layer_bytes + model.lm_head.weight.numel() * 4 + model.model.norm.weight.numel() * 4
    n = args.new_tokens
    runs = {"b1": prompts(1), "b8": prompts(8), "img": image_prompt()}
    results: dict[str, list[float]] = {}

    def record(key, value):
        results.setdefault(key, []).append(value)
        print(f"{key}: {value:.3f}", file=sys.stderr, flush=True)

    bws = [bandwidth_gbs()]
    for rep in range(args.reps):
        for name in ("b1", "b8"):
            inputs = runs[name]
            record(f"hf_{name}", reference(hf, inputs, n)[1])
            record(f"ours_{name}", ours(model, inputs, n)[1])
        record("hf_ttft", reference(hf, runs["img"], 1)[0])
        record("ours_ttft", ours(model, runs["img"], 1)[0])
        bws.append(bandwidth_gbs())
    use_decode_layout(model)  # same values, weights stored transposed for x @ w.T
    for rep in range(args.reps):
        record("hf_b1_again", reference(hf, runs["b1"], n)[1])
        record("ours_t_b1", ours(model, runs["b1"], n)[1])
        record("ours_t_b8", ours(model, runs["b8"], n)[1])
    bws.append(bandwidth_gbs())

    best = {k: (min(v) if "ttft" in k else max(v)) for k, v in results.items()}
    bw = max(bws)
    hf_b1 = max(best["hf_b1"], best["hf_b1_again"])

    def share(rate):
        return read_bytes * rate / 1e9 / bw

    lines = [
        "# Generation: decode speed against transformers' generate (CPU)",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_decode.py --size {args.size} --threads {args.threads} "
        f"--new-tokens {n} --reps {args.reps}`  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"transformers {transformers.__version__}; shared host (other engineers' jobs ran alongside), so the "
        "ratios are the figures to read. Best of the runs (alternating ours / reference).",
        f"Model: size `{args.size}` ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, fp32, "
        f"random weights, tied embedding); weights read per decode step: {read_bytes / 1e9:.2f} GB.",
        f"Memory bandwidth (1 GiB tensor copy, read + write, same run): {bw:.1f} GB/s "
        f"(samples {', '.join(f'{b:.1f}' for b in bws)}).",
        "",
        "| measure | transformers | ours | ours, decode layout | ratio (best ours / transformers) |",
        "|---|---|---|---|---|",
        f"| decode tokens/s, batch 1 | {hf_b1:.2f} | {best['ours_b1']:.2f} | {best['ours_t_b1']:.2f} | "
        f"{max(best['ours_b1'], best['ours_t_b1']) / hf_b1:.2f}x |",
        f"| decode tokens/s, batch 8 (tokens of all rows) | {8 * best['hf_b8']:.1f} | {8 * best['ours_b8']:.1f} | "
        f"{8 * best['ours_t_b8']:.1f} | {max(best['ours_b8'], best['ours_t_b8']) / best['hf_b8']:.2f}x |",
        f"| time to first token, image prompt (256 image tokens + 14 text), s | {best['hf_ttft']:.3f} | "
        f"{best['ours_ttft']:.3f} | | {best['hf_ttft'] / best['ours_ttft']:.2f}x faster |",
        f"| batch-1 weight streaming (share of the copy bandwidth) | {share(hf_b1):.0%} | {share(best['ours_b1']):.0%} "
        f"| {share(best['ours_t_b1']):.0%} | |",
        "",
        "All runs: " + "; ".join(f"{k} " + ", ".join(f"{x:.3f}" for x in v) for k, v in results.items()),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        with open(args.write, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
