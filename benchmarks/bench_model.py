"""Language model prefill against transformers, and the peak memory of loading a checkpoint.

    .venv/bin/python benchmarks/bench_model.py [--threads 2] [--rounds 3] [--tokens 1000] [--out benchmarks/results/model.md]

1. Prefill of a text prompt on a Qwen2.5-0.5B-shaped language model (hidden 896, 24 layers, 14 heads, 2 kv heads,
   MLP 4864, vocab 151936, tied embeddings; a 2-block toy vision tower that the prompt never touches). Both models
   share the same random fp32 tensors. Runs alternate (transformers, ours, ours with all logits) so that the host's
   load hits them alike; the fp32 matmul peak (best 2048^3 matmul) is measured between rounds. Generation needs only
   the last position's logits (`logits_to_keep=1`, transformers' and ours); the all-logits run shows what that saves.
2. Loading: the same weights saved by us in bf16 (about 1 GB), loaded by `Qwen25VL.from_pretrained` in a fresh
   subprocess; peak resident memory (VmHWM) minus the resident memory before the load, as a multiple of the files'
   size. transformers' `from_pretrained` is measured the same way for comparison.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from qwen25vl.config import Qwen25VLConfig, TextConfig, VisionConfig
from qwen25vl.model.vlm import Qwen25VL
from qwen25vl.weights import internal_key

TEXT = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
            num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=32768, tie_word_embeddings=True)
VISION = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=896,
              fullatt_block_indexes=[1], tokens_per_second=2)


def build_pair():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ref_cfg = Qwen2_5_VLConfig(
        text_config={**TEXT, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6,
                                                 "mrope_section": [8, 12, 12]}},
        vision_config={**VISION, "in_channels": 3}, tie_word_embeddings=True)
    ref_cfg._attn_implementation = "sdpa"
    ref = Qwen2_5_VLForConditionalGeneration(ref_cfg).float().eval()
    text = TextConfig(**TEXT, mrope_section=(8, 12, 12))  # head dim 64: the 3B-7B split [16, 24, 24] halved
    vision = VisionConfig(**{**VISION, "fullatt_block_indexes": (1,)})
    with torch.device("meta"):
        ours = Qwen25VL(Qwen25VLConfig(text=text, vision=vision, torch_dtype="float32"))
    # Same tensors, not copies: the state dicts differ only in names.
    ours.load_state_dict({internal_key(k): v for k, v in ref.state_dict().items()}, strict=True, assign=True)
    ours.tie_weights()
    return ref, ours.eval()


def matmul_gflops(size: int = 2048, repeats: int = 3) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def layer_gemms_seconds(tokens: int) -> float:
    """Time of the model's own linear layers alone (one layer's 7 GEMMs at the prefill's shapes, x layers): the
    ceiling for a prefill made of nothing but these matmuls on this machine, now."""
    t = TEXT
    hidden, mlp = t["hidden_size"], t["intermediate_size"]
    kv = t["num_key_value_heads"] * hidden // t["num_attention_heads"]
    shapes = [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden), (mlp, hidden), (mlp, hidden),
              (hidden, mlp)]
    total = 0.0
    for out_dim, in_dim in shapes:
        x, w = torch.randn(1, tokens, in_dim), torch.randn(out_dim, in_dim)
        torch.nn.functional.linear(x, w)
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            torch.nn.functional.linear(x, w)
            best = min(best, time.perf_counter() - start)
        total += best
    return total * t["num_hidden_layers"]


def prefill_flops(tokens: int) -> float:
    """Linear layers (2 x params x tokens, the head at one position) plus causal attention (QK^T and PV)."""
    t = TEXT
    kv = t["num_key_value_heads"] * t["hidden_size"] // t["num_attention_heads"]
    per_layer = 2 * t["hidden_size"] * (t["hidden_size"] + kv) + 3 * t["hidden_size"] * t["intermediate_size"]
    linear = 2 * per_layer * t["num_hidden_layers"] * tokens + 2 * t["hidden_size"] * t["vocab_size"]
    attention = 2 * 2 * t["hidden_size"] * tokens * tokens / 2 * t["num_hidden_layers"]
    return linear + attention


def time_prefill(ref, ours, tokens: int, rounds: int):
    ids = torch.randint(0, 150000, (1, tokens), generator=torch.Generator().manual_seed(0))
    runs = {
        "transformers": lambda: ref(input_ids=ids, logits_to_keep=1).logits,
        "ours": lambda: ours(ids, logits_to_keep=1).logits,
        "ours, all logits": lambda: ours(ids).logits,
    }
    times = {name: [] for name in runs}
    times["the model's GEMMs alone"] = []
    peaks = [matmul_gflops()]
    with torch.inference_mode():
        a, b = runs["transformers"](), runs["ours"]()
        diff = (a - b).abs().max().item()
        for _ in range(rounds):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
            times["the model's GEMMs alone"].append(layer_gemms_seconds(tokens))
            peaks.append(matmul_gflops())
    return times, peaks, diff


LOAD_SCRIPT = r"""
import json, sys, time
def rss(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
import torch
which, folder = sys.argv[1], sys.argv[2]
if which == 'ours':
    from qwen25vl.model.vlm import Qwen25VL
    load = lambda: Qwen25VL.from_pretrained(folder, progress=False)
else:
    from transformers import Qwen2_5_VLForConditionalGeneration
    load = lambda: Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.bfloat16)
before = rss('VmRSS:')
start = time.perf_counter()
model = load()
seconds = time.perf_counter() - start
peak, after = rss('VmHWM:'), rss('VmRSS:')
# transformers leaves tensors memory-mapped: their pages become resident only when read. Read one value per page.
for p in model.parameters():
    p.detach().reshape(-1)[::1024].float().sum()
print(json.dumps({'before': before, 'peak': peak, 'after': after, 'touched': rss('VmHWM:'), 'seconds': seconds}))
"""


def measure_load(ours, folder: Path) -> dict:
    ours.to(torch.bfloat16).save_pretrained(folder)
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    out = {"size": size}
    for which in ("ours", "transformers"):
        proc = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, which, str(folder)], capture_output=True,
                              text=True, check=True)
        out[which] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


GEMMS = "the model's GEMMs alone"


def report(args, times, peaks, diff, load) -> str:
    med = {k: statistics.median(v) for k, v in times.items()}
    flops = prefill_flops(args.tokens)
    peak = max(peaks)
    ours_gflops = flops / med["ours"] / 1e9
    lines = [
        "# Model: language-model prefill and checkpoint loading",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_model.py --threads {args.threads} --rounds {args.rounds} "
        f"--tokens {args.tokens}`",
        f"Machine: {torch.get_num_threads()} torch threads, fp32, CPU; torch {torch.__version__}. The host is shared "
        "with other work, so absolute times are noisy: compare the ratios, taken in one run with interleaved rounds.",
        "",
        f"## Prefill, {args.tokens}-token text prompt, Qwen2.5-0.5B-shaped LLM (hidden 896, 24 layers, 14/2 heads, "
        "MLP 4864, vocab 151936, tied), same random weights",
        "",
        "| run | median s | all runs (s) | vs transformers |",
        "|---|---|---|---|",
    ]
    for name, values in times.items():
        lines.append(f"| {name} | {med[name]:.2f} | {', '.join(f'{v:.2f}' for v in values)} | "
                     f"{med['transformers'] / med[name]:.2f}x |")
    lines += [
        "",
        f"- max |logit difference| ours vs transformers (last position): {diff:.1e}",
        f"- FLOPs per prefill (linear layers + causal attention, head at one position): {flops / 1e9:.0f} GFLOP",
        f"- fp32 matmul (2048^3) measured before and between rounds: {', '.join(f'{p:.0f}' for p in peaks)} GFLOPS "
        f"(best {peak:.0f})",
        f"- ours: {ours_gflops:.0f} GFLOPS = {100 * ours_gflops / peak:.0f}% of the best matmul, "
        f"{100 * ours_gflops / statistics.median(peaks):.0f}% of the median matmul; the linear layers alone at "
        f"the prefill's own shapes take {100 * med[GEMMS] / med['ours']:.0f}% of our prefill time",
        f"- logits for every position instead of the last cost "
        f"{100 * (med['ours, all logits'] / med['ours'] - 1):+.0f}% (why generation passes logits_to_keep=1)",
    ]
    if load is not None:
        size = load["size"]
        lines += ["", f"## Loading a bf16 checkpoint of the same model ({size / 1e9:.2f} GB of safetensors), "
                  "fresh subprocess", "",
                  "| loader | peak RSS - RSS before load | / size on disk | RSS after load | peak after reading every "
                  "weight page | / size on disk | seconds |", "|---|---|---|---|---|---|---|"]
        for which in ("ours", "transformers"):
            m = load[which]
            extra = m["peak"] - m["before"]
            touched = m["touched"] - m["before"]
            lines.append(f"| {which} | {extra / 1e9:.2f} GB | {extra / size:.2f}x | "
                         f"{(m['after'] - m['before']) / 1e9:.2f} GB | {touched / 1e9:.2f} GB | {touched / size:.2f}x | "
                         f"{m['seconds']:.1f} |")
        lines += ["", "Ours reads each tensor with plain file reads straight into its final storage on a model built "
                  "on the meta device (no memory map, whose pages would count as resident, and no second copy). "
                  "transformers maps the files and reads pages on first use, so its load-time peak is small and its "
                  "weights become resident as they are read; the second pair of columns compares like with like."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/model.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ref, ours = build_pair()
    times, peaks, diff = time_prefill(ref, ours, args.tokens, args.rounds)
    del ref
    load = None
    if not args.skip_load:
        with tempfile.TemporaryDirectory() as tmp:
            load = measure_load(ours, Path(tmp) / "ckpt")
    text = report(args, times, peaks, diff, load)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
