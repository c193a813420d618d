"""int8 and bf16 decode against transformers' fp32 `generate`, and their quality against our fp32, CPU, one process.

    .venv/bin/python benchmarks/bench_quant.py [--threads 2] [--new-tokens 12] [--reps 3] [--quality-tokens 128]
        [--write benchmarks/results/quant.md]

Model: the `0.5b` size of bench_decode.py (Qwen2.5-0.5B's LLM shapes, random weights, fp32 checkpoint), loaded by
transformers and by `qwen25vl.load(folder, dtype=...)` (what users get) as fp32 (decode layout), bf16 (the native
mat-vec of `model/native.py` where it builds, and torch's product) and int8 (`model/quant.py`: native mat-vec, and
torch's `_weight_int8pack_mm` with the native kernel switched off).
- decode tokens/s: batch 1, a 64-token text prompt, greedy, (n - 1) / (last step - first step); sides alternate,
  medians of `--reps` (best in brackets).
- share of copy bandwidth: bytes each side reads per token (LLM linears and lm_head in their stored dtypes, int8
  scales included; norms) x tokens/s / the 1 GiB copy bandwidth (read + write) measured in the same run.
- quality (0.5B random and the embedded tiny model): our fp32 greedy answer; then each low-precision model
  teacher-forced on it: top-1 agreement with fp32 at every position, max and mean |logit diff|; and its own greedy run:
  the first token where it departs from fp32. Tiny model: the 5 held-out grounding prompts of tests/test_tiny_model.py,
  and whether the grounding parser's output equals fp32's.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_decode import SIZES, bandwidth_gbs, ours, prompts, reference  # noqa: E402

import qwen25vl  # noqa: E402
from qwen25vl.generation.paths import EMBEDDED_MODEL_DIR  # noqa: E402
from qwen25vl.testing.checkpoint import make_tiny_checkpoint  # noqa: E402

LOW = ("bf16", "bf16_torch", "int8")


def torch_kernels(run):
    """`run()` with Int8Linear on torch's kernels instead of the native mat-vec."""
    from qwen25vl.model import quant

    quant.USE_NATIVE = False
    try:
        return run()
    finally:
        quant.USE_NATIVE = True


def read_bytes(model) -> int:
    """Bytes one batch-1 decode step reads: the LLM layers' tensors and lm_head (the embedding row is negligible)."""
    total = sum(t.numel() * t.element_size() for t in model.model.layers.parameters())
    total += sum(t.numel() * t.element_size() for t in model.lm_head.parameters())
    return total + model.model.norm.weight.numel() * model.model.norm.weight.element_size()


def teacher_forced(model, ids: torch.Tensor, answer: list[int], extra: dict) -> torch.Tensor:
    """(len(answer), V) fp32 logits predicting each answer token, given the prompt and the answer before it."""
    full = torch.cat([ids, torch.tensor([answer[:-1]])], dim=1)
    with torch.no_grad():
        return model(full, **extra, logits_to_keep=len(answer)).logits[0].float()


def compare(ref_logits, logits, ref_answer, answer) -> dict:
    diff = (logits - ref_logits).abs()
    depart = next((i for i, (a, b) in enumerate(zip(ref_answer, answer)) if a != b), None)
    return {"agree": int((logits.argmax(-1) == torch.tensor(ref_answer)).sum()), "n": len(ref_answer),
            "max": float(diff.max()), "mean": float(diff.mean()), "depart": depart,
            "scale": float(ref_logits.abs().mean())}


def quality_random(vlms: dict, n: int) -> dict:
    inputs = prompts(1, seed=1)
    ref_answer = greedy(vlms["fp32"], inputs, n)
    ref_logits = teacher_forced(vlms["fp32"].model, inputs["input_ids"], ref_answer, {})
    return {name: compare(ref_logits, teacher_forced(vlms[name].model, inputs["input_ids"], ref_answer, {}),
                          ref_answer, greedy(vlms[name], inputs, n)) for name in LOW if name in vlms}


def greedy(vlm, inputs: dict, n: int) -> list[int]:
    from qwen25vl.generation.generate import TokenGenerator
    from qwen25vl.generation.sampling import SamplingParams

    gen = TokenGenerator(vlm.model, inputs, SamplingParams(max_new_tokens=n))
    for _ in gen:
        pass
    return gen.tokens[0]


def quality_tiny(n: int) -> dict:
    from test_tiny_model import held_out_conversations

    from qwen25vl.tasks.grounding import parse_grounding

    vlms = {"fp32": qwen25vl.load(dtype="float32", threads=None), "bf16": qwen25vl.load(dtype="bfloat16", threads=None),
            "int8": qwen25vl.load(dtype="int8", threads=None)}
    out = {name: [] for name in ("bf16", "int8")}
    for conv in held_out_conversations(5):
        inputs, _ = vlms["fp32"].prepare(conv)
        extra = {"pixel_values": inputs["pixel_values"], "image_grid_thw": inputs["image_grid_thw"]}
        ref = vlms["fp32"].generate(conv, max_new_tokens=n, temperature=0)[0]
        ref_logits = teacher_forced(vlms["fp32"].model, inputs["input_ids"], ref.token_ids, extra)
        for name in out:
            mine = vlms[name].generate(conv, max_new_tokens=n, temperature=0)[0]
            row = compare(ref_logits, teacher_forced(vlms[name].model, inputs["input_ids"], ref.token_ids, extra),
                          ref.token_ids, mine.token_ids)
            row["parsed_equal"] = parse_grounding(mine.text).items == parse_grounding(ref.text).items
            out[name].append(row)
    return out


def summary(rows: list[dict]) -> str:
    agree = sum(r["agree"] for r in rows) / sum(r["n"] for r in rows)
    departs = ", ".join("never" if r["depart"] is None else str(r["depart"]) for r in rows)
    parsed = ""
    if "parsed_equal" in rows[0]:
        parsed = f" | {sum(r['parsed_equal'] for r in rows)}/{len(rows)}"
    return (f"{agree:.1%} | {max(r['max'] for r in rows):.3f} | {statistics.mean(r['mean'] for r in rows):.4f} "
            f"(fp32 mean abs logit {statistics.mean(r['scale'] for r in rows):.3f}) | {departs}{parsed}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=12)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quality-tokens", type=int, default=128, help="0: speed only")
    ap.add_argument("--write", help="markdown file for the results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    import transformers

    folder = tempfile.mkdtemp(prefix="bench_quant_")
    make_tiny_checkpoint(folder, seed=0, **SIZES["0.5b"])
    load = dict(threads=args.threads)
    vlms = {"fp32": qwen25vl.load(folder, dtype="float32", **load),
            "bf16": qwen25vl.load(folder, dtype="bfloat16", **load),
            "bf16_torch": qwen25vl.load(folder, dtype="bfloat16", decode_layout=False, **load),
            "int8": qwen25vl.load(folder, dtype="int8", **load)}
    vlms["int8_torch"] = vlms["int8"]  # the same model, its products on torch's kernels (quant.USE_NATIVE off)
    hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    sides = {"hf": lambda x: reference(hf, x, args.new_tokens)[1]}
    sides.update({name: (lambda x, m=vlm.model: ours(m, x, args.new_tokens)[1]) for name, vlm in vlms.items()})
    sides["int8_torch"] = lambda x: torch_kernels(lambda: ours(vlms["int8"].model, x, args.new_tokens)[1])
    nbytes = {name: read_bytes(vlm.model) for name, vlm in vlms.items()}
    nbytes["hf"] = nbytes["fp32"]
    inputs = prompts(1)
    rates: dict[str, list[float]] = {k: [] for k in sides}
    bws = [bandwidth_gbs()]
    for rep in range(args.reps):
        for side in (list(sides) if rep % 2 == 0 else list(sides)[::-1]):
            rates[side].append(sides[side](inputs))
            print(f"{side}: {rates[side][-1]:.2f} tokens/s", file=sys.stderr, flush=True)
        bws.append(bandwidth_gbs())
    bw = statistics.median(bws)
    med = {k: statistics.median(v) for k, v in rates.items()}
    t = time.perf_counter()
    q_random = quality_random(vlms, args.quality_tokens) if args.quality_tokens else None
    q_tiny = quality_tiny(48) if args.quality_tokens and (EMBEDDED_MODEL_DIR / "config.json").is_file() else None
    print(f"quality in {time.perf_counter() - t:.0f}s", file=sys.stderr)

    names = {"hf": "transformers fp32 `generate`", "fp32": "ours fp32 (decode layout)",
             "bf16": "ours bf16 (`--dtype bfloat16`: the native bf16 mat-vec where it builds)",
             "bf16_torch": "ours bf16, torch's product (`decode_layout=False`)",
             "int8": "ours int8 (`--dtype int8`: the native int8 mat-vec where it builds)",
             "int8_torch": "ours int8, torch's `_weight_int8pack_mm` (native off)"}
    lines = [
        "# Quantised decode: int8 and bf16 against transformers' fp32 `generate` (CPU)", "",
        f"Command: `.venv/bin/python benchmarks/bench_quant.py --threads {args.threads} --new-tokens "
        f"{args.new_tokens} --reps {args.reps} --quality-tokens {args.quality_tokens}`  ",
        f"Machine: {_cpu()}, {args.threads} thread(s), torch {torch.__version__}, transformers "
        f"{transformers.__version__}; shared host, load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at "
        "the end (2 cores). Sides alternate; medians (best in brackets).  ",
        f"Copy bandwidth (1 GiB, read + write), same run: median {bw:.1f} GB/s "
        f"({', '.join(f'{b:.1f}' for b in bws)}).", "",
        "| side | bytes read per token | decode tokens/s, batch 1 | vs transformers | share of copy bandwidth |",
        "|---|---|---|---|---|",
    ]
    for side in sides:
        share = nbytes[side] * med[side] / 1e9 / bw
        lines.append(f"| {names[side]} | {nbytes[side] / 1e6:.0f} MB | {med[side]:.2f} ({max(rates[side]):.2f}) | "
                     f"{med[side] / med['hf']:.2f}x | {share:.0%} |")
    if q_random:
        lines += ["", f"Quality, 0.5B random weights, teacher-forced on our fp32 greedy answer ({args.quality_tokens} "
                  "tokens after a 64-token prompt):", "",
                  "| model | top-1 agreement | max abs logit diff | mean abs logit diff | own greedy departs at token |",
                  "|---|---|---|---|---|"]
        lines += [f"| {name} | {summary([row])} |" for name, row in q_random.items()]
    if q_tiny:
        lines += ["", "Quality, embedded tiny model, 5 held-out grounding prompts, 48 new tokens:", "",
                  "| model | top-1 agreement | max abs logit diff | mean abs logit diff | own greedy departs at token "
                  "(per prompt) | parsed grounding equal to fp32 |", "|---|---|---|---|---|---|"]
        lines += [f"| {name} | {summary(rows)} |" for name, rows in q_tiny.items()]
    lines += ["", "All runs (tokens/s): " + "; ".join(f"{k} " + ", ".join(f"{x:.2f}" for x in v)
                                                   for k, v in rates.items()), ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        Path(args.write).write_text(text)
    return 0


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        name = ""
    return f"{name or platform.processor()} ({platform.machine()})"


if __name__ == "__main__":
    sys.exit(main())
