"""Peak memory (and step time) of LoRA training against full fine-tuning of the same model, CPU, fp32.

    .venv/bin/python benchmarks/bench_lora.py [--threads 1] [--layers 4] [--tokens 512] [--rounds 1] [--out FILE]

The model: Qwen2.5-0.5B's LLM shapes (hidden 896, MLP 4864, 14/2 heads, vocab 151,936, tied head) with `--layers`
layers, and a small ViT (256 wide, 4 blocks); random weights. One pack of synthetic samples (text, images, a short
video; `--tokens` in all) through the project's training path: `PackedLoss` (varlen attention, chunked CE),
`build_optimizer` (AdamW) and `train_step`, `--steps` steps. Each configuration runs in a fresh child process,
children alternating (full, LoRA, LoRA, full, ...):
  full       every parameter trains (AdamW keeps two moments per parameter)
  lora-llm   adapters of rank `--rank` on the LLM's 7 projections per layer, everything else frozen
  lora-all   the same plus the merger and the ViT blocks
Reported: peak RSS (VmHWM) of the child, the RSS once model and batch are built (before any step), their difference
(what training adds: gradients, optimizer state, activations), the optimizer state's bytes and the best step time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODES = ("full", "lora-llm", "lora-all")
TARGETS = {"lora-llm": ("llm",), "lora-all": ("llm", "merger", "vision")}


def rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def build(args):
    """(model, one packed batch) at the benchmark's sizes."""
    from bench_train import make_samples

    from qwen25vl.data.packing import collate_pack
    from qwen25vl.model.vlm import Qwen25VL
    from qwen25vl.testing.checkpoint import tiny_config

    config = tiny_config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=args.layers,
                         num_attention_heads=14, num_key_value_heads=2, mrope_section=(8, 12, 12),
                         vision_hidden_size=256, vision_intermediate_size=512, vision_num_heads=4, vision_depth=4,
                         vision_fullatt_block_indexes=(3,))
    torch.manual_seed(0)
    model = Qwen25VL(config).train()
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0.0, 0.02)  # tied head: nn.Embedding's N(0, 1) gives huge logits
    pack, total = [], 0
    for sample in make_samples(64, config, seed=1):
        if total + sample.length <= args.tokens:
            pack.append(sample)
            total += sample.length
    return model, collate_pack(pack)


def child(args) -> dict:
    """One configuration in this process: memory and step times."""
    from qwen25vl.train.forward import PackedLoss
    from qwen25vl.train.lora import LoraSpec, add_lora
    from qwen25vl.train.optim import build_optimizer, build_scheduler
    from qwen25vl.train.step import train_step

    torch.set_num_threads(args.threads)
    model, batch = build(args)
    if args.child != "full":
        add_lora(model, LoraSpec(rank=args.rank, alpha=2.0 * args.rank, targets=TARGETS[args.child]))
    loss_fn = PackedLoss(model)
    lr = 2e-4 if args.child != "full" else 1e-5
    optimizer = build_optimizer(loss_fn, dict.fromkeys(("vision", "merger", "llm"), lr), weight_decay=0.0)
    scheduler = build_scheduler(optimizer, warmup=0, total=args.steps)
    base, times, losses = rss("VmRSS:"), [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        stats = train_step(loss_fn, optimizer, scheduler, [batch], global_targets=batch.num_targets)
        times.append(time.perf_counter() - start)
        losses.append(stats["loss"])
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if torch.is_tensor(t))
    return {"mode": args.child, "base": base, "peak": rss("VmHWM:"), "times": times, "losses": losses,
            "params": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad), "optimizer_bytes": state,
            "tokens": int(batch.input_ids.numel()), "targets": int(batch.num_targets)}


def run_children(args) -> dict[str, list[dict]]:
    results = {m: [] for m in MODES}
    order = [m for r in range(args.rounds) for m in (MODES if r % 2 == 0 else MODES[::-1])]
    for mode in order:
        cmd = [sys.executable, __file__, "--child", mode, "--threads", str(args.threads), "--layers", str(args.layers),
               "--tokens", str(args.tokens), "--steps", str(args.steps), "--rank", str(args.rank)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"child {mode} failed:\n{proc.stderr[-3000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        results[mode].append(res)
        print(f"[{mode}] peak {res['peak'] / 2**30:.2f} GiB, before steps {res['base'] / 2**30:.2f} GiB, "
              f"steps {[round(t, 2) for t in res['times']]} s", flush=True)
    return results


def report(args, results: dict[str, list[dict]]) -> str:
    from bench_train import cpu_model

    gib = 2**30
    first = results["full"][0]
    lines = [
        "# LoRA vs full fine-tuning: peak memory on CPU", "",
        f"Machine: {cpu_model()}, {args.threads} thread(s), torch {torch.__version__}, fp32. Model: Qwen2.5-0.5B LLM "
        f"shapes with {args.layers} layers (hidden 896, vocab 151,936, tied head) and a 256-wide 4-block ViT, "
        f"{first['params'] / 1e6:.1f}M parameters; one pack of {first['tokens']} tokens ({first['targets']} "
        f"supervised), {args.steps} AdamW steps through `PackedLoss` + `train_step`; LoRA rank {args.rank}, "
        f"alpha {2 * args.rank}. Each row: "
        + (f"the median over {args.rounds} child processes (alternating)." if args.rounds > 1 else
           "one child process.")
        + f" Host load average when the run began: {args.load:.1f} on {os.cpu_count()} cores (other jobs shared "
        "the host: memory figures do not depend on it, step times do).", "",
        f"Command: `.venv/bin/python benchmarks/bench_lora.py --threads {args.threads} --layers {args.layers} "
        f"--tokens {args.tokens} --steps {args.steps} --rank {args.rank} --rounds {args.rounds}`", "",
        "| run | trainable params | optimizer state | RSS before steps | peak RSS | peak - before | best step |",
        "|---|---|---|---|---|---|---|",
    ]
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("base", "peak", "optimizer_bytes", "trainable")}
           for m, rs in results.items()}
    best = {m: min(t for r in rs for t in r["times"]) for m, rs in results.items()}
    for mode in MODES:
        m = med[mode]
        lines.append(f"| {mode} | {m['trainable'] / 1e6:.2f}M | {m['optimizer_bytes'] / gib:.3f} GiB | "
                     f"{m['base'] / gib:.2f} GiB | {m['peak'] / gib:.2f} GiB | "
                     f"{(m['peak'] - m['base']) / gib:.2f} GiB | {best[mode]:.2f} s |")
    full = med["full"]
    lines += ["", "Ratios (full / LoRA):", ""]
    for mode in MODES[1:]:
        m = med[mode]
        lines.append(f"- {mode}: peak RSS **{full['peak'] / m['peak']:.2f}x** lower; what training adds above the "
                     f"loaded model {(full['peak'] - full['base']) / (m['peak'] - m['base']):.2f}x lower; step "
                     f"time {best[mode] / best['full']:.2f}x of full's")
    lines += ["", "Losses of the first child of each run (the same batch): "
              + "; ".join(f"{m} {[round(x, 4) for x in results[m][0]['losses']]}" for m in MODES), ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "lora.md"))
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    args.load = os.getloadavg()[0]
    text = report(args, run_children(args))
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
