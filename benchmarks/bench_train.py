"""Training: packed vs padded batches, chunked vs full cross-entropy, and our training step against transformers.

    .venv/bin/python benchmarks/bench_train.py [--threads 2] [--part all|pack|loss|step] [--out benchmarks/results/train.md]

1. Packing. One set of synthetic samples (text-only, one or two images of mixed grids, short two-frame videos; each
   sample's own M-RoPE ids and in-sample shifted labels, as `data.encoding` builds them) trained for one epoch two
   ways on the same model and starting weights: (a) the project's path: `first_fit_decreasing` into a token budget,
   `collate_pack`, `PackedLoss` (varlen attention + chunked CE) and `train_step`, one pack per optimizer step;
   (b) a padded-batch loop: the samples in their shuffled order, `--batch` per step, right-padded to the longest,
   `Qwen25VL.forward` with an attention mask and explicit positions, full logits, `F.cross_entropy(sum)` / targets,
   kept on the conventional masked path (`logits_to_keep=T`); (c) the same batches through the default forward,
   which runs a padded batch unpadded. All use AdamW and clip at 1.0. Tokens/s counts real (non-pad) tokens; the epochs alternate (packed, padded,
   padded, packed, ...) and the best epoch of each is compared, with the per-round ratio's median too.
2. Loss memory. `chunked_cross_entropy` (chunk `DEFAULT_CHUNK`, 1,024) against `full_cross_entropy` on 8,192 supervised rows, vocab
   151,936, hidden `--hidden`, forward + backward, each in a fresh child process: peak RSS (VmHWM) minus the RSS
   with the inputs and the weight gradient already allocated, and the step's best time over the child's repetitions.
   The children alternate (chunked, full, full, chunked).
3. Training step vs transformers. A tiny-ish random `Qwen2_5_VLForConditionalGeneration`, saved with
   `save_pretrained` and loaded by `Qwen25VL.from_pretrained`; the same right-padded batch (text and images) through
   both (logits, the same summed CE on the same labels, backward); repetitions interleaved, best-of and median ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from model_helpers import IMAGE, PATCH_DIM, TEXT_IDS, V_END, V_START, VIDEO, hf_config, randomize_  # noqa: E402

from qwen25vl.data.encoding import IGNORE, Sample  # noqa: E402
from qwen25vl.data.packing import collate_pack, first_fit_decreasing  # noqa: E402
from qwen25vl.positions import mrope_position_ids  # noqa: E402
from qwen25vl.train.forward import PackedLoss  # noqa: E402
from qwen25vl.train.losses import DEFAULT_CHUNK, chunked_cross_entropy, full_cross_entropy  # noqa: E402
from qwen25vl.train.step import train_step  # noqa: E402

# A few-million-parameter model: 4 layers, hidden 256, MLP 768, 4/2 heads (head dim 64), tiny vocab of the test
# helpers; a 2-block 64-wide ViT.
TEXT = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]})
VISION = dict(hidden_size=64, intermediate_size=128, out_hidden_size=256)
PAD_ID = 512


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def build_models(folder: Path):
    """(transformers model, ours) with the same random weights: ours loaded from transformers' save_pretrained."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from qwen25vl.model.vlm import Qwen25VL

    torch.manual_seed(0)
    cfg = hf_config(tie=True, **TEXT)
    for k, v in VISION.items():
        setattr(cfg.vision_config, k, v)
    cfg._attn_implementation = "sdpa"
    ref = randomize_(Qwen2_5_VLForConditionalGeneration(cfg).float(), std=0.05)
    ref.save_pretrained(str(folder))
    ours = Qwen25VL.from_pretrained(folder, dtype=torch.float32, progress=False)
    return ref, ours


# --- samples ------------------------------------------------------------------------------------------------------

IMAGE_GRIDS = [(1, 8, 8), (1, 12, 16), (1, 16, 16), (1, 20, 28), (1, 28, 28)]  # 16 .. 196 tokens
VIDEO_GRIDS = [(2, 8, 8), (2, 12, 12)]


def make_sample(rng: random.Random, gen: torch.Generator, ours_cfg) -> Sample:
    """A user turn (media, question) and an answer: labels shifted inside the sample, answer tokens supervised."""
    kind = rng.random()
    images, videos, seconds = [], [], []
    if kind < 0.3:
        pass  # text only
    elif kind < 0.65:
        images = [rng.choice(IMAGE_GRIDS)]
    elif kind < 0.85:
        images = rng.sample(IMAGE_GRIDS, 2)
    else:
        videos, seconds = [rng.choice(VIDEO_GRIDS)], [1.0]
    long_text = rng.random() < 0.25
    question = rng.randint(200, 1200) if long_text and not (images or videos) else rng.randint(8, 120)
    answer = rng.randint(4, 200)
    ids: list[int] = torch.randint(0, TEXT_IDS, (4,), generator=gen).tolist()
    for g in images:
        ids += [V_START] + [IMAGE] * (g[0] * g[1] * g[2] // 4) + [V_END]
    for g in videos:
        ids += [V_START] + [VIDEO] * (g[0] * g[1] * g[2] // 4) + [V_END]
    ids += torch.randint(0, TEXT_IDS, (question,), generator=gen).tolist()
    start = len(ids)
    ids += torch.randint(0, TEXT_IDS, (answer,), generator=gen).tolist()
    input_ids = torch.tensor(ids)
    labels = torch.full_like(input_ids, IGNORE)
    labels[start - 1:-1] = input_ids[start:]  # labels[i] = token i + 1 where trained, the last label -100
    grid_i = torch.tensor(images) if images else None
    grid_v = torch.tensor(videos) if videos else None
    sec = torch.tensor(seconds) if videos else None
    pos, _ = mrope_position_ids(input_ids[None], image_grid_thw=grid_i, video_grid_thw=grid_v, second_per_grid_ts=sec,
                                image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=V_START,
                                spatial_merge_size=2, tokens_per_second=ours_cfg.vision.tokens_per_second)
    pix = lambda grids: torch.randn(sum(t * h * w for t, h, w in grids), PATCH_DIM, generator=gen)  # noqa: E731
    return Sample(input_ids, labels, pos[:, 0], pix(images) if images else None, grid_i,
                  pix(videos) if videos else None, grid_v, sec, vision_end=start)


def make_samples(n: int, ours_cfg, seed: int = 0) -> list[Sample]:
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    return [make_sample(rng, gen, ours_cfg) for _ in range(n)]


def padded_batch(samples: list[Sample]) -> dict:
    """Right-padded batch: ids, mask, labels (-100 on pads), (3, B, T) positions, pixels and grids in row order."""
    longest = max(s.length for s in samples)
    b = len(samples)
    ids = torch.full((b, longest), PAD_ID, dtype=torch.long)
    mask = torch.zeros(b, longest, dtype=torch.long)
    labels = torch.full((b, longest), IGNORE, dtype=torch.long)
    pos = torch.zeros(3, b, longest, dtype=torch.long)
    for r, s in enumerate(samples):
        n = s.length
        ids[r, :n], mask[r, :n], labels[r, :n], pos[:, r, :n] = s.input_ids, 1, s.labels, s.position_ids
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": pos}
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
        parts = [getattr(s, key) for s in samples if getattr(s, key) is not None]
        if parts:
            out[key] = torch.cat(parts)
    return out


# --- 1. packed vs padded ------------------------------------------------------------------------------------------

def _optimizer(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


def packed_epoch(model, packs) -> float:
    loss_fn = PackedLoss(model)
    opt, sched = _optimizer(model)
    start = time.perf_counter()
    for pack in packs:
        train_step(loss_fn, opt, sched, [pack], global_targets=pack.num_targets)
    return time.perf_counter() - start


def padded_epoch(model, batches, masked: bool = True) -> float:
    """masked: the conventional padded forward (a (B, 1, T, T) mask, every pad computed); `logits_to_keep=T` keeps
    our model on that path. Otherwise our model runs each padded batch unpadded (varlen, nothing for pads)."""
    opt, _ = _optimizer(model)
    start = time.perf_counter()
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        keep = inputs["input_ids"].shape[1] if masked else 0
        logits = model(**inputs, logits_to_keep=keep).logits
        labels = batch["labels"]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE,
                               reduction="sum") / int((labels != IGNORE).sum())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def bench_pack(ours, args) -> dict:
    import copy

    samples = make_samples(args.samples, ours.config)
    lengths = [s.length for s in samples]
    real = sum(lengths)
    bins = first_fit_decreasing(lengths, args.budget)
    packs = [collate_pack([samples[i] for i in b]) for b in bins]
    batches = [padded_batch(samples[i:i + args.batch]) for i in range(0, len(samples), args.batch)]
    padded_slots = sum(b["input_ids"].numel() for b in batches)
    state = copy.deepcopy(ours.state_dict())
    times = {"packed": [], "padded": [], "unpadded": []}
    for r in range(args.rounds):
        order = ("packed", "padded", "unpadded") if r % 2 == 0 else ("unpadded", "padded", "packed")
        for name in order:
            ours.load_state_dict(state)
            t = packed_epoch(ours, packs) if name == "packed" else padded_epoch(ours, batches, name == "padded")
            times[name].append(t)
            print(f"[pack] round {r} {name}: {t:.2f} s, {real / t:.0f} tok/s", flush=True)
    ours.load_state_dict(state)
    kinds = {"text only": 0, "1 image": 0, "2 images": 0, "video": 0}
    for s in samples:
        n_img = 0 if s.image_grid_thw is None else s.image_grid_thw.shape[0]
        key = "video" if s.video_grid_thw is not None else ("text only" if n_img == 0 else f"{n_img} image"
                                                                                       + ("s" if n_img > 1 else ""))
        kinds[key] += 1
    return {"samples": len(samples), "real_tokens": real, "min_len": min(lengths), "max_len": max(lengths),
            "median_len": statistics.median(lengths), "kinds": kinds, "packs": len(packs),
            "pack_slots": sum(p.num_tokens for p in packs), "pack_capacity": len(packs) * args.budget,
            "batches": len(batches), "padded_slots": padded_slots, "times": times}


# --- 2. chunked vs full CE memory ---------------------------------------------------------------------------------

LOSS_CHILD = r"""
import json, sys, time, torch
from qwen25vl.train.losses import DEFAULT_CHUNK, chunked_cross_entropy, full_cross_entropy
def rss(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
which, rows, vocab, hidden, reps, threads = sys.argv[1], *map(int, sys.argv[2:])
torch.set_num_threads(threads)
g = torch.Generator().manual_seed(0)
h = (torch.randn(rows, hidden, generator=g) * 0.5).requires_grad_()
w = (torch.randn(vocab, hidden, generator=g) * 0.05).requires_grad_()
y = torch.randint(0, vocab, (rows,), generator=g)
w.grad = torch.zeros_like(w); h.grad = torch.zeros_like(h)  # gradients exist before the step (as in training)
fn = (lambda: chunked_cross_entropy(h, w, y, DEFAULT_CHUNK)) if which == 'chunked' else (lambda: full_cross_entropy(h, w, y))
base = rss('VmRSS:')
times = []
for _ in range(reps):
    start = time.perf_counter()
    loss = fn()
    loss.backward()
    times.append(time.perf_counter() - start)
    del loss
print(json.dumps({'base': base, 'peak': rss('VmHWM:'), 'times': times, 'grad_sum': float(w.grad.abs().sum())}))
"""


def bench_loss(args) -> dict:
    out = {"chunked": [], "full": []}
    for r in range(2):
        for which in (("chunked", "full") if r == 0 else ("full", "chunked")):
            proc = subprocess.run([sys.executable, "-c", LOSS_CHILD, which, "8192", "151936", str(args.hidden),
                                   str(args.loss_reps), str(args.threads)], capture_output=True, text=True,
                                  check=True)
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            out[which].append(res)
            print(f"[loss] {which}: peak-base {(res['peak'] - res['base']) / 2**30:.2f} GiB, "
                  f"times {[round(t, 2) for t in res['times']]}", flush=True)
    return out


# --- 3. training step vs transformers -----------------------------------------------------------------------------

def bench_step(ref, ours, args) -> dict:
    from model_helpers import mm_token_type_ids

    rng, gen = random.Random(1), torch.Generator().manual_seed(1)
    samples = []
    while len(samples) < args.step_batch:  # text and image samples (transformers 5.24's video positions differ)
        s = make_sample(rng, gen, ours.config)
        if s.video_grid_thw is None:
            samples.append(s)
    batch = padded_batch(samples)
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    targets = int((labels != IGNORE).sum())

    def ce(logits):
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE,
                               reduction="sum") / targets

    def run_ref():
        loss = ce(ref(**inputs, mm_token_type_ids=mm_token_type_ids(inputs["input_ids"])).logits)
        loss.backward()
        return loss

    def run_ours():
        loss = ce(ours(**inputs).logits)
        loss.backward()
        return loss

    ref.train()
    ours.train()
    l_ref, l_ours = run_ref(), run_ours()  # warm-up, and a parity check on the loss and a gradient
    g_ref = ref.model.language_model.layers[0].mlp.down_proj.weight.grad
    g_ours = dict(ours.named_parameters())["model.layers.0.mlp.down_proj.weight"].grad
    parity = {"loss_ref": float(l_ref.detach()), "loss_ours": float(l_ours.detach()),
              "grad_max_diff": float((g_ref - g_ours).abs().max()), "grad_max": float(g_ref.abs().max())}
    times = {"transformers": [], "ours": []}
    for r in range(args.step_reps):
        for name in (("transformers", "ours") if r % 2 == 0 else ("ours", "transformers")):
            model, fn = (ref, run_ref) if name == "transformers" else (ours, run_ours)
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        print(f"[step] rep {r}: transformers {times['transformers'][-1]:.3f} s, ours {times['ours'][-1]:.3f} s",
              flush=True)
    return {"shape": list(inputs["input_ids"].shape), "real": int(inputs["attention_mask"].sum()),
            "images": int(inputs["image_grid_thw"].shape[0]) if "image_grid_thw" in inputs else 0,
            "patches": int(inputs["pixel_values"].shape[0]) if "pixel_values" in inputs else 0,
            "parity": parity, "times": times}


# --- report -------------------------------------------------------------------------------------------------------

def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def report(args, pack, loss, step, n_params) -> str:
    lines = ["# Training: packed vs padded batches, chunked vs full cross-entropy, training step vs transformers", "",
             f"Command: `.venv/bin/python benchmarks/bench_train.py --threads {args.threads} --part {args.part}`",
             f"Machine: {cpu_model()}, {args.threads} torch threads, fp32, CPU; torch {torch.__version__}; "
             f"transformers {_tf_version()}. Ratios are taken within one run (alternating order). No GPU was lent "
             "to this task: the bf16 MFU item is not measured.", ""]
    if pack:
        p = pack
        best_p, best_d = min(p["times"]["packed"]), min(p["times"]["padded"])
        best_u = min(p["times"]["unpadded"])
        ratios = [d / q for q, d in zip(p["times"]["packed"], p["times"]["padded"])]
        eff_pack = p["real_tokens"] / p["pack_capacity"]
        eff_pad = p["real_tokens"] / p["padded_slots"]
        lines += [f"## 1. Packed training vs a padded-batch loop ({n_params / 1e6:.1f}M-parameter model: 4 layers, "
                  "hidden 256, MLP 768, 4/2 heads, vocab 544; 2-block 64-wide ViT)", "",
                  f"{p['samples']} synthetic samples, {p['real_tokens']:,} real tokens, lengths {p['min_len']}-"
                  f"{p['max_len']} (median {p['median_len']:.0f}); mix: "
                  + ", ".join(f"{k} {v}" for k, v in p["kinds"].items())
                  + f" (image grids {IMAGE_GRIDS}, video grids {VIDEO_GRIDS}). One epoch each way from the same "
                  "weights, AdamW, clip 1.0.", "",
                  "| path | steps | token slots | non-pad share | best epoch s | tokens/s (real) |", "|---|---|---|---|---|---|",
                  f"| packed (`first_fit_decreasing` budget {args.budget}, `collate_pack`, `PackedLoss`, `train_step`; "
                  f"one pack per step) | {p['packs']} | {p['pack_capacity']:,} budget ({p['pack_slots']:,} filled) "
                  f"| {eff_pack:.1%} of the budget | {best_p:.2f} | {p['real_tokens'] / best_p:,.0f} |",
                  f"| padded (batches of {args.batch} in shuffled order, right-padded, attention mask, full logits: the "
                  "conventional loop) "
                  f"| {p['batches']} | {p['padded_slots']:,} | {eff_pad:.1%} | {best_d:.2f} | "
                  f"{p['real_tokens'] / best_d:,.0f} |",
                  f"| the same padded batches through our model's default forward (run unpadded: one packed row, "
                  f"varlen attention, nothing computed for pads) | {p['batches']} | {p['padded_slots']:,} | "
                  f"{eff_pad:.1%} | {best_u:.2f} | {p['real_tokens'] / best_u:,.0f} |", "",
                  f"- epochs: packed {[round(t, 2) for t in p['times']['packed']]} s, padded "
                  f"{[round(t, 2) for t in p['times']['padded']]} s, unpadded "
                  f"{[round(t, 2) for t in p['times']['unpadded']]} s",
                  f"- packed / padded-run-unpadded: {best_u / best_p:.2f}x (a padded batch costs our model little more "
                  "than a pack; packing still keeps every step's size fixed)",
                  f"- **tokens/s packed / padded: {best_d / best_p:.2f}x best-of, {statistics.median(ratios):.2f}x "
                  f"median per round** (goal >= 2x: {met(best_d / best_p >= 2)})",
                  f"- **packing efficiency {eff_pack:.1%}** of the pack budget (goal >= 95%: {met(eff_pack >= 0.95)}); "
                  f"padded batches {eff_pad:.1%}", ""]
    if loss:
        def peak(rs):
            return min(r["peak"] - r["base"] for r in rs)

        def best(rs):
            return min(t for r in rs for t in r["times"])
        pc, pf, tc, tf = peak(loss["chunked"]), peak(loss["full"]), best(loss["chunked"]), best(loss["full"])
        lines += [f"## 2. Chunked vs full cross-entropy: 8,192 supervised rows, vocab 151,936, hidden {args.hidden}, "
                  "forward + backward", "",
                  "Each variant in a fresh child process (two children each, alternating); peak = VmHWM minus the RSS "
                  "with hidden states, head weight and both gradients already allocated; time = best step.", "",
                  "| loss | peak above inputs (per child) | step s (per child, each rep) |", "|---|---|---|"]
        for name in ("chunked", "full"):
            rs = loss[name]
            lines.append(f"| {name}{f' (chunk {DEFAULT_CHUNK:,})' if name == 'chunked' else ''} | "
                         + ", ".join(f"{(r['peak'] - r['base']) / 2**30:.2f} GiB" for r in rs) + " | "
                         + "; ".join(", ".join(f"{t:.2f}" for t in r["times"]) for r in rs) + " |")
        lines += ["", f"- **peak chunked / full: {pc / pf:.3f} (1/{pf / pc:.1f})** (goal <= 1/8: {met(pc / pf <= 1 / 8)})",
                  f"- **step time chunked / full: {tc / tf:.2f}** (best {tc:.2f} s vs {tf:.2f} s; goal within 10%: "
                  f"{met(tc / tf <= 1.10)})", ""]
    if step:
        s = step
        tr, to = s["times"]["transformers"], s["times"]["ours"]
        ratios = [a / b for a, b in zip(tr, to)]
        par = s["parity"]
        lines += ["## 3. Training step (forward + backward) vs transformers' Qwen2_5_VLForConditionalGeneration", "",
                  f"Same {n_params / 1e6:.1f}M-parameter random weights (transformers' `save_pretrained`, loaded by "
                  f"`Qwen25VL.from_pretrained`), same right-padded batch {tuple(s['shape'])} ({s['real']} real "
                  f"tokens, {s['images']} images, {s['patches']} patches), explicit (3, B, T) positions to both "
                  "(and `mm_token_type_ids` to transformers), logits then the same summed CE / targets, backward. "
                  f"{len(tr)} interleaved repetitions after one warm-up.", "",
                  "| | best s | median s |", "|---|---|---|",
                  f"| transformers | {min(tr):.3f} | {statistics.median(tr):.3f} |",
                  f"| ours | {min(to):.3f} | {statistics.median(to):.3f} |", "",
                  f"- **speed-up: {min(tr) / min(to):.2f}x best-of, {statistics.median(ratios):.2f}x median of the "
                  f"per-pair ratios** (goal >= 1.2x: {met(min(tr) / min(to) >= 1.2 and statistics.median(ratios) >= 1.2)})",
                  f"- parity: loss {par['loss_ref']:.6f} (transformers) vs {par['loss_ours']:.6f} (ours); layer-0 "
                  f"down_proj gradient max |diff| {par['grad_max_diff']:.1e} (max |grad| {par['grad_max']:.1e})", ""]
    return "\n".join(lines)


def _tf_version() -> str:
    try:
        import transformers
        return transformers.__version__
    except ImportError:
        return "absent"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--part", choices=("all", "pack", "loss", "step"), default="all")
    ap.add_argument("--samples", type=int, default=160)
    ap.add_argument("--budget", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--loss-reps", type=int, default=2)
    ap.add_argument("--step-batch", type=int, default=4)
    ap.add_argument("--step-reps", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/train.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pack = loss = step = None
    with tempfile.TemporaryDirectory() as tmp:
        ref, ours = build_models(Path(tmp))
        n_params = sum(p.numel() for p in ours.parameters())
        if args.part in ("all", "pack"):
            pack = bench_pack(ours, args)
        if args.part in ("all", "step"):
            step = bench_step(ref, ours, args)
    if args.part in ("all", "loss"):
        loss = bench_loss(args)
    text = report(args, pack, loss, step, n_params)
    args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
