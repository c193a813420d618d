"""Vision tower: ours against transformers' Qwen2.5-VL vision model, same random weights, one process, interleaved.

    .venv/bin/python benchmarks/bench_vision.py [--threads 2] [--repeats 5] [--out benchmarks/results/vision.md]

Reports time ratios (transformers / ours, > 1 means we are faster) and the share of the machine's fp32 matmul peak
that our forward achieves, counting the FLOPs of the linear layers and of attention (QK^T and PV per segment). The
peak is the best of several 4096^3 matmuls measured between the timed runs, so it sees the same load as they do.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

from qwen25vl.config import VisionConfig
from qwen25vl.model.vision import VisionTransformer
from qwen25vl.vision_layout import vision_layout

CASES = [
    # name, width, heads, mlp, out, grids
    ("real width, 1 MP image (1008x1008)", 1280, 16, 3420, 3584, [(1, 72, 72)]),
    ("128 wide, 1 MP image", 128, 2, 342, 256, [(1, 72, 72)]),
    ("128 wide, 8 images of 336x336", 128, 2, 342, 256, [(1, 24, 24)] * 8),
    ("128 wide, 32 images of 224x224", 128, 2, 342, 256, [(1, 16, 16)] * 32),
    # the released depth and attention schedule (28 window blocks, full attention in 7, 15, 23, 31) at 128 wide
    ("128 wide, depth 32, 1 MP image", 128, 2, 342, 256, [(1, 72, 72)], (32, (7, 15, 23, 31))),
    ("128 wide, depth 32, 8 images of 336x336", 128, 2, 342, 256, [(1, 24, 24)] * 8, (32, (7, 15, 23, 31))),
]
DEPTH, FULL = 4, (1, 3)


def vision_config(width, heads, mlp, out, schedule=(DEPTH, FULL)):
    depth, full = schedule
    fields = dict(depth=depth, hidden_size=width, intermediate_size=mlp, num_heads=heads, in_chans=3, patch_size=14,
                  temporal_patch_size=2, spatial_merge_size=2, window_size=112, fullatt_block_indexes=full,
                  out_hidden_size=out, tokens_per_second=2, hidden_act="silu")
    return VisionConfig(**fields)


def build_pair(cfg):
    ref_cfg = Qwen2_5_VLVisionConfig(
        depth=cfg.depth, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size, num_heads=cfg.num_heads,
        in_channels=3, patch_size=14, temporal_patch_size=2, spatial_merge_size=2, window_size=112,
        fullatt_block_indexes=list(cfg.fullatt_block_indexes), out_hidden_size=cfg.out_hidden_size, hidden_act="silu",
    )
    ref_cfg._attn_implementation = "sdpa"
    ref = Qwen2_5_VisionTransformerPretrainedModel(ref_cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.02)
    ours = VisionTransformer(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def forward_flops(cfg, grids) -> float:
    """Multiply-adds x 2 of every linear layer and of attention's two batched products."""
    n = sum(t * h * w for t, h, w in grids)
    c, mlp = cfg.hidden_size, cfg.intermediate_size
    per_block_linear = 2 * n * (c * 3 * c + c * c + 3 * c * mlp)
    layout = vision_layout(tuple(grids), 2, 112, 14)
    total = 2 * n * 1176 * c + cfg.depth * per_block_linear
    for i in range(cfg.depth):
        cu = (layout.full_plan if i in cfg.fullatt_block_indexes else layout.window_plan).cu_seqlens.tolist()
        total += sum(4 * (b - a) ** 2 * c for a, b in zip(cu[:-1], cu[1:]))
    total += 2 * (n // 4) * (4 * c * 4 * c + 4 * c * cfg.out_hidden_size)
    return float(total)


def matmul_gflops(size=4096, tries=2) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_case(name, width, heads, mlp, out, grids, schedule=(DEPTH, FULL), *, repeats):
    torch.manual_seed(0)
    cfg = vision_config(width, heads, mlp, out, schedule)
    ref, ours = build_pair(cfg)
    g = torch.tensor(grids)
    x = torch.randn(int(g.prod(-1).sum()), 1176)
    with torch.inference_mode():
        diff = (ref(x, g).pooler_output - ours(x, g)).abs().max().item()  # also the warm-up of both
        ref_t, our_t, peaks = [], [], [matmul_gflops()]
        for r in range(repeats):  # alternate who goes first so neither always runs on a warmer cache
            pair = [("ref", lambda: ref(x, g).pooler_output), ("ours", lambda: ours(x, g))]
            for who, fn in pair if r % 2 == 0 else pair[::-1]:
                (ref_t if who == "ref" else our_t).append(timed(fn))
            peaks.append(matmul_gflops())
    flops = forward_flops(cfg, grids)
    ratios = [a / b for a, b in zip(ref_t, our_t)]
    peak = max(peaks)
    # on a shared host, interference only ever adds time: the best of each is the robust figure, the median of the
    # pairs' ratios shows how much the load moved it
    return dict(name=name, patches=x.shape[0], diff=diff, ref=min(ref_t), ours=min(our_t),
                ratio=min(ref_t) / min(our_t), pair_ratio=statistics.median(ratios), gflop=flops / 1e9, peak=peak,
                share=flops / min(our_t) / 1e9 / peak, ref_share=flops / min(ref_t) / 1e9 / peak)


def report(rows, threads, repeats) -> str:
    lines = [
        "# Vision tower benchmark",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_vision.py --threads {threads} --repeats {repeats}`  ",
        f"torch {torch.__version__}, {threads} threads, fp32, inference_mode for both, same random weights; depth "
        f"{DEPTH} with full attention in blocks {list(FULL)} unless the case says depth 32 (then the released "
        "schedule, full attention in 7, 15, 23, 31); transformers with attn_implementation='sdpa'.  ",
        "Times are the best of the interleaved runs; ratio = transformers / ours (> 1 means ours is faster), "
        "'pairs' = median of the per-pair ratios. Peak = best 4096^3 fp32 matmul measured between the timed runs; "
        "share = counted FLOPs (linear layers + attention) / best time / peak.",
        "",
        "| case | patches | GFLOP | transformers s | ours s | ratio | pairs | ours % of peak | transformers % of peak "
        "| peak GFLOPS | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['patches']} | {r['gflop']:.1f} | {r['ref']:.3f} | {r['ours']:.3f} | {r['ratio']:.2f}x "
            f"| {r['pair_ratio']:.2f}x "
            f"| {100 * r['share']:.0f}% | {100 * r['ref_share']:.0f}% | {r['peak']:.0f} | {r['diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this text")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for case in (c for c in CASES if args.only in c[0]):
        rows.append(run_case(*case, repeats=args.repeats))
        print(rows[-1], flush=True)
    text = report(rows, args.threads, args.repeats)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
