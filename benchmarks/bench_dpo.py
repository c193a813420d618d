"""DPO step time: ours (`train/dpo.py`) against a baseline that encodes each pair's images twice and runs the
reference model as a second forward (what TRL does for vision-language models).

    .venv/bin/python benchmarks/bench_dpo.py [--threads 1] [--pairs 8] [--rounds 6] [--vit-depth 3] [--text-only]
        [--out benchmarks/results/dpo.md]

Same random model (LLM 4 layers x 256, vocab 544; ViT `--vit-depth` blocks x 128; frozen ViT and merger, the LLM
trains), same pairs, one process, the variants interleaved round by round (order rotated):

- ours: the step's pairs packed in one row (`collate_pairs`: c0 r0 c1 r1 ... with `cu_seqlens`), each pair's images
  through the ViT once (their features fill both answers' pads), log-probs of answer rows only (`PairLogps`),
  reference log-probs read from the table computed once before training (`dpo_step`). The table's one-time pass is
  timed too and reported as a cost per step over one epoch.
- ours, online reference: the same packed step, plus a frozen copy's packed forward per step instead of the table.
- baseline: chosen and rejected as rows of a right-padded batch (2P rows), the pixels of each row (each image twice),
  full logits, `log_softmax` + gather; the reference model (a frozen copy) runs the same padded forward again under
  no_grad (its ViT encodes the images twice more). The same sigmoid loss (`preference_loss`), AdamW, clip 1.0.

Before timing, both paths' log-probs on the first step's pairs are checked equal (they compute the same function).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_train import cpu_model, padded_batch  # noqa: E402
from model_helpers import PATCH_DIM, TEXT_IDS  # noqa: E402

from qwen25vl.config import Qwen25VLConfig  # noqa: E402
from qwen25vl.data.encoding import IGNORE, Sample  # noqa: E402
from qwen25vl.positions import mrope_position_ids  # noqa: E402
from qwen25vl.train.dpo import PairLogps, PairSample, collate_pairs, dpo_step, preference_loss  # noqa: E402
from qwen25vl.train.optim import build_optimizer, build_scheduler, set_trainable  # noqa: E402

GRIDS = [(1, 16, 16), (1, 16, 24), (1, 24, 24)]  # 224 x 224 .. 336 x 336 px: 64 .. 144 image tokens
BETA = 0.1


def bench_config(vit_depth: int = 3) -> Qwen25VLConfig:
    tiny = Qwen25VLConfig.preset("tiny")
    text = dataclasses.replace(tiny.text, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                               num_attention_heads=4, num_key_value_heads=2, mrope_section=(8, 12, 12))
    vision = dataclasses.replace(tiny.vision, depth=vit_depth, hidden_size=128, intermediate_size=256, num_heads=2,
                                 fullatt_block_indexes=(vit_depth - 1,), out_hidden_size=256)
    return dataclasses.replace(tiny, text=text, vision=vision)


def vit_share(config) -> float:
    """Linear-layer MACs of the ViT + merger per image token over the LLM layers' MACs per token (attention scores
    and the head left out), counted from the weight shapes on the meta device."""
    from qwen25vl.model.vlm import Qwen25VL

    with torch.device("meta"):
        model = Qwen25VL(config)
    unit = config.vision.spatial_merge_size ** 2

    def macs(module):
        return sum(p.numel() for p in module.parameters() if p.ndim >= 2)

    vit = unit * (macs(model.visual.patch_embed) + macs(model.visual.blocks)) + macs(model.visual.merger)
    return vit / macs(model.model.layers)


def _sample(prompt: list[int], answer: list[int], grids, pixels, config) -> Sample:
    ids = torch.tensor(prompt + answer)
    labels = torch.full_like(ids, IGNORE)
    labels[len(prompt) - 1:-1] = ids[len(prompt):]  # labels[i] = token i + 1 on the answer only
    grid = torch.tensor(grids) if grids else None
    pos, _ = mrope_position_ids(ids[None], image_grid_thw=grid, image_token_id=config.image_token_id,
                                video_token_id=config.video_token_id,
                                vision_start_token_id=config.vision_start_token_id, spatial_merge_size=2,
                                tokens_per_second=config.vision.tokens_per_second)
    return Sample(ids, labels, pos[:, 0], pixels, grid, vision_end=len(prompt))


def make_pairs(n: int, config, *, images: bool, seed: int = 0) -> list[PairSample]:
    """Pairs sharing a prompt (an image of a random grid when `images`, 8-40 text ids); answers of 10-60 ids."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    pairs = []
    for i in range(n):
        grids = [rng.choice(GRIDS)] if images else []
        prompt = torch.randint(0, TEXT_IDS, (4,), generator=gen).tolist()
        for t, h, w in grids:
            prompt += [config.vision_start_token_id] + [config.image_token_id] * (t * h * w // 4)
            prompt += [config.vision_end_token_id]
        prompt += torch.randint(0, TEXT_IDS, (rng.randint(8, 40),), generator=gen).tolist()
        pixels = torch.randn(sum(t * h * w for t, h, w in grids), PATCH_DIM, generator=gen) if grids else None
        answers = [torch.randint(0, TEXT_IDS, (rng.randint(10, 60),), generator=gen).tolist() for _ in range(2)]
        chosen, rejected = (_sample(prompt, a, grids, pixels, config) for a in answers)
        pairs.append(PairSample(chosen, rejected, f"pair {i}"))
    return pairs


def padded_logps(model, pairs: list[PairSample]) -> torch.Tensor:
    """(P, 2) summed answer log-probs through the model's padded forward, every row with its own pixels."""
    batch = padded_batch([s for p in pairs for s in (p.chosen, p.rejected)])
    labels = batch.pop("labels")
    logits = model(**batch).logits.float()  # (2P, T, V)
    keep = labels != IGNORE
    token = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]  # (2P, T)
    return (token * keep).sum(-1).view(-1, 2)


def baseline_step(policy, reference, optimizer, pairs: list[PairSample]) -> float:
    logps = padded_logps(policy, pairs)
    with torch.no_grad():
        ref = padded_logps(reference, pairs)
    stats = preference_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], beta=BETA)
    loss = stats.losses.mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def trainer(model):
    optimizer = build_optimizer(model, {"llm": 1e-6})
    return optimizer, build_scheduler(optimizer, warmup=0, total=10_000)


def run(args, *, images: bool) -> dict:
    from qwen25vl.model.vlm import Qwen25VL
    from qwen25vl.testing.checkpoint import init_random_weights

    config = bench_config(args.vit_depth)
    torch.manual_seed(0)
    start = Qwen25VL(config)
    init_random_weights(start, 0, embed_std=1.0, gain=1.0)
    set_trainable(start, {"vision": False, "merger": False, "llm": True})
    steps = [make_pairs(args.pairs, config, images=images, seed=1 + s) for s in range(args.rounds + 1)]
    index = [list(range(s * args.pairs, (s + 1) * args.pairs)) for s in range(len(steps))]
    packed = [collate_pairs(p, i) for p, i in zip(steps, index)]

    # the reference table, once: the starting policy's packed log-probs of every pair (timed as a one-time cost)
    reference_model = copy.deepcopy(start).eval()
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        table = torch.cat([PairLogps(reference_model)(b) for b in packed]).float()
    table_s = (time.process_time() - c0) / len(packed)
    table_wall = (time.perf_counter() - t0) / len(packed)

    with torch.no_grad():  # both paths compute the same log-probs
        check = ((padded_logps(start, steps[0]) - table[:args.pairs]).abs().max() / table.abs().max()).item()
    assert check < 1e-5, check

    ours_model, online_model, base_model = (copy.deepcopy(start) for _ in range(3))
    ours, online = PairLogps(ours_model), PairLogps(online_model)
    opt_ours, sched_ours = trainer(ours)
    opt_online, sched_online = trainer(online)
    opt_base, _ = trainer(base_model)
    frozen = PairLogps(reference_model)

    def step_ours(k):
        dpo_step(ours, opt_ours, sched_ours, [packed[k]], table, global_pairs=args.pairs, beta=BETA)

    def step_online(k):
        live = table.clone()
        with torch.no_grad():
            live[packed[k].index] = frozen(packed[k]).float()
        dpo_step(online, opt_online, sched_online, [packed[k]], live, global_pairs=args.pairs, beta=BETA)

    def step_base(k):
        baseline_step(base_model, reference_model, opt_base, steps[k])

    variants = {"ours": step_ours, "ours, online reference": step_online, "baseline": step_base}
    for fn in variants.values():  # warm-up on the spare step
        fn(args.rounds)
    times, wall = {name: [] for name in variants}, {name: [] for name in variants}
    names = list(variants)
    for k in range(args.rounds):
        for name in names[k % 3:] + names[:k % 3]:
            t0, c0 = time.perf_counter(), time.process_time()
            variants[name](k)
            times[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - t0)
    tokens = sum(b.batch.input_ids.numel() for b in packed[:args.rounds]) / args.rounds
    padded = sum(2 * len(p) * max(s.length for q in p for s in (q.chosen, q.rejected)) for p in steps[:-1])
    return {"images": images, "times": times, "wall": wall, "table_s": table_s, "table_wall": table_wall,
            "check": check, "tokens": tokens,
            "padded_slots": padded / args.rounds,
            "image_tokens": sum(int((b.batch.input_ids == config.image_token_id).sum())
                                for b in packed[:-1]) / args.rounds,
            "params": {"llm": sum(p.numel() for p in start.model.parameters()),
                       "vit": sum(p.numel() for p in start.visual.parameters())}}


def report(results: list[dict], args) -> str:
    cfg = bench_config(args.vit_depth)
    lines = ["# DPO step time: ours vs a baseline that encodes images twice and runs the reference as a second forward",
             "",
             f"Command: `.venv/bin/python benchmarks/bench_dpo.py --threads {args.threads} --pairs {args.pairs} "
             f"--rounds {args.rounds} --vit-depth {args.vit_depth}{' --text-only' if args.text_only else ''}`",
             f"Machine: {cpu_model()} ({platform.machine()}), {args.threads} torch thread(s), fp32, CPU; "
             f"torch {torch.__version__}. All variants in one process, interleaved round by round (order rotated).",
             "",
             f"Model: LLM {cfg.text.num_hidden_layers} layers x {cfg.text.hidden_size} (MLP "
             f"{cfg.text.intermediate_size}, {cfg.text.num_attention_heads}/{cfg.text.num_key_value_heads} heads, "
             f"vocab {cfg.text.vocab_size}), {results[0]['params']['llm'] / 1e6:.2f}M parameters, trained; ViT "
             f"{cfg.vision.depth} blocks x {cfg.vision.hidden_size} + merger, "
             f"{results[0]['params']['vit'] / 1e6:.2f}M, "
             f"frozen. Per image token (4 patches) the ViT + merger cost {vit_share(cfg):.2f}x the LLM's per-token "
             f"matmul work here (the released 3B: {vit_share(Qwen25VLConfig.preset('3b')):.2f}x, 7B: "
             f"{vit_share(Qwen25VLConfig.preset('7b')):.2f}x).",
             f"Pairs: {args.pairs} per step, each a prompt (one image of {', '.join(str(g) for g in GRIDS)} patches "
             "when image pairs, and 8-40 text ids) with chosen and rejected answers of 10-60 ids.",
             ""]
    lines += ["Step times are the process's CPU seconds (with one thread, contention from other jobs on the host "
              "stretches wall time but not the CPU time a step needs); wall-clock medians for comparison.", "",
              "| pairs | variant | best step, CPU s | median, CPU s | median, wall s | speed-up vs baseline "
              "(CPU best / CPU median / wall median) |", "|---|---|---|---|---|---|"]
    for r in results:
        kind = "image" if r["images"] else "text-only"
        once = r["table_s"]
        rows = dict(r["times"])
        rows["ours + the table's one-time pass (one epoch)"] = [t + once for t in r["times"]["ours"]]
        walls = dict(r["wall"])
        walls["ours + the table's one-time pass (one epoch)"] = [t + r["table_wall"] for t in r["wall"]["ours"]]
        base = (min(rows["baseline"]), statistics.median(rows["baseline"]), statistics.median(walls["baseline"]))
        for name, times in rows.items():
            mine = (min(times), statistics.median(times), statistics.median(walls[name]))
            lines.append(f"| {kind} | {name} | {mine[0]:.3f} | {mine[1]:.3f} | {mine[2]:.3f} | "
                         + " / ".join(f"{b / m:.2f}x" for b, m in zip(base, mine)) + " |")
    lines.append("")
    for r in results:
        kind = "image" if r["images"] else "text-only"
        lines.append(f"- {kind} pairs: {r['tokens']:.0f} packed tokens per step ({r['image_tokens']:.0f} image "
                     f"tokens; the baseline's padded batch: {r['padded_slots']:.0f} slots); the table's pass "
                     f"{r['table_s']:.3f} CPU s per step's pairs; ours vs baseline log-probs max relative diff "
                     f"{r['check']:.1e}; "
                     f"raw CPU step times: " + "; ".join(f"{n} {', '.join(f'{t:.3f}' for t in ts)}"
                                                     for n, ts in r["times"].items()))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--vit-depth", type=int, default=3, help="ViT blocks (3: the released 3B's ViT / LLM share)")
    p.add_argument("--text-only", action="store_true", help="also time text-only pairs")
    p.add_argument("--out", help="write the markdown report here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = [run(args, images=True)]
    if args.text_only:
        results.append(run(args, images=False))
    text = report(results, args)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
