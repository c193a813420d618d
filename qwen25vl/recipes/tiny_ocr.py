"""The character probe of the tiny recipe's OCR training: a training-only linear read-out of every merged image token
(a 28 px cell) predicting which letters lie under it, as the vision stage's dense head did for object cells, and
`python -m qwen25vl.recipes.tiny_ocr`, which measures what it does: OCR-only training from a model folder with or
without the probes, then held-out word exact match.

Why: trained on words alone, the tiny model answered real words of the engine's list with the right case pattern and
often the right first letter, but the right word 2% of the time: nothing asked the 64-wide ViT to tell letters
apart. The probe gives every cell that signal.

Measured (2026-12-04, on the lent GPU machine's CPU cores; from the shipped stage-5 model, 1,200 OCR-only steps of
16 words, lr 8e-4, held-out exact match on 200 words, s.e. about 1.2 points): no probe 3.5% (ViT at 0.2x the rate)
and 2.5% (1x); the probes on for 60% of the steps 3.0% (0.2x) and 5.0% (1x); on throughout 4.0% (0.2x) and 2.5%
(1x). Larger type (36-56 px, at 224 or 448 px) over 800 steps: 1.5-3.0%. The probes' centre-letter accuracy on the
merger output rose only to 15-19% (always the most frequent, 'e', would score 11.7%), in a vision-only stage at lr
2e-3 too (19% after 800 steps), where the same recipe taught object cells 93% in 600 steps.

Steps were the lever, not the width (measured later on 2026-12-04, one thread): a vision-only letter stage
(`letter_stage`) run far longer teaches a 64-wide ViT letters: from the shipped weights, 4,000 steps reach 53%
train centre-letter accuracy, and then 1,200 OCR-only joint steps (probes on) read 29.0% +- 3.2% of 200 held-out
words exactly (every shorter arm above: 1.5-5.0%), with a shuffled-image gap of +1.36 nats on the words. A fresh
ViT trained on letters alone reaches 37.8% held-out centre-letter accuracy after 3,000 steps at 64 wide (12.4% at
600) and 54.1% at 128 wide. `--letter-steps 4000` reproduces the first run; the recipe's stage 6 uses it.

Per-cell targets of one OCR word image (`char_targets`), in the processor's token order (row-major):
    letters  multi-hot over `LETTERS`: the letters whose centre lies in the cell's columns, on rows the word crosses
    centre   0 (no letter), else 1 + the index in `LETTERS` of the letter under the cell's centre
    order    the position in the word of that letter (clipped to `MAX_ORDER - 1`); ignored where there is none
Each letter's columns come from splitting the word's ink box by the letters' advance widths in DejaVu Sans (the
engine's fonts differ a little in proportion; a few pixels against a 28 px cell).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from qwen25vl.data.synth.draw import GRID as CELL  # one merged token: 2x2 patches of 14 px
from qwen25vl.data.synth.draw import font
from qwen25vl.train.losses import IGNORE

LETTERS = string.ascii_lowercase + string.ascii_uppercase
MAX_ORDER = 16
MIN_OVERLAP = 8  # px of a cell's rows the word's ink must cross for the cell to count as on the word
OCR_TASKS = ("word",)


@dataclass
class CharTargets:
    letters: torch.Tensor  # (cells, len(LETTERS)) float; NaN rows: not an OCR word image (left out)
    centre: torch.Tensor  # (cells,) long; IGNORE where left out
    order: torch.Tensor  # (cells,) long; IGNORE where no letter

    @staticmethod
    def cat(items: list[CharTargets]) -> CharTargets:
        return CharTargets(*(torch.cat([getattr(t, f) for t in items]) for f in ("letters", "centre", "order")))


def letter_spans(text: str, box) -> list[tuple[float, float]]:
    """Each character's (left, right) columns: the ink box split by advance widths (DejaVu Sans)."""
    widths = [max(font("sans", 32).getlength(ch), 1.0) for ch in text]
    x1, x2 = box[0], box[2] + 1
    scale = (x2 - x1) / sum(widths)
    spans, left = [], float(x1)
    for w in widths:
        spans.append((left, left + w * scale))
        left += w * scale
    return spans


def char_targets(meta: dict, engine: str) -> CharTargets:
    """Per-cell targets of one record's image (`meta`: its meta line; `engine`: the engine that wrote it). A record
    that is not an OCR word gets rows every loss leaves out; a video record (no image tokens) gets none."""
    if engine == "video":
        return CharTargets(torch.zeros(0, len(LETTERS)), torch.zeros(0, dtype=torch.long),
                           torch.zeros(0, dtype=torch.long))
    size = meta["truth"]["size"]
    cols, rows = size[0] // CELL, size[1] // CELL
    n = rows * cols
    if engine != "ocr" or meta.get("task") not in OCR_TASKS:
        return CharTargets(torch.full((n, len(LETTERS)), float("nan")), torch.full((n,), IGNORE),
                           torch.full((n,), IGNORE))
    letters = torch.zeros(n, len(LETTERS))
    centre = torch.zeros(n, dtype=torch.long)
    order = torch.full((n,), IGNORE)
    for obj in meta["truth"]["objects"]:
        text, box = obj["text"], obj["bbox_2d"]
        spans = letter_spans(text, box)
        for r in range(rows):
            overlap = min(box[3] + 1, (r + 1) * CELL) - max(box[1], r * CELL)
            if overlap < min(MIN_OVERLAP, (box[3] - box[1] + 1) / 2):
                continue
            for c in range(cols):
                i = r * cols + c
                mid = c * CELL + CELL / 2
                for k, (ch, (a, b)) in enumerate(zip(text, spans)):
                    if ch not in LETTERS:
                        continue
                    if c * CELL <= (a + b) / 2 < (c + 1) * CELL:
                        letters[i, LETTERS.index(ch)] = 1.0
                    if a <= mid < b:
                        centre[i] = 1 + LETTERS.index(ch)
                        order[i] = min(k, MAX_ORDER - 1)
    return CharTargets(letters, centre, order)


class LetterTargets:
    """The targets of a pack of records (indices into `metas`, written by `engines`), each record's built once."""

    def __init__(self, metas: list[dict], engines: list[str]):
        self.metas, self.engines, self.cache = metas, engines, {}

    def __call__(self, indices) -> CharTargets:
        for i in indices:
            if i not in self.cache:
                self.cache[i] = char_targets(self.metas[i], self.engines[i])
        return CharTargets.cat([self.cache[i] for i in indices])


class CharHead(nn.Module):
    """The throwaway read-out: letters (multi-hot), the centre letter (with 'none') and its place in the word."""

    def __init__(self, width: int):
        super().__init__()
        self.sizes = (len(LETTERS), 1 + len(LETTERS), MAX_ORDER)
        self.proj = nn.Linear(width, sum(self.sizes))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.proj(features).split(list(self.sizes), dim=-1)


def char_loss(out: tuple[torch.Tensor, ...], target: CharTargets) -> tuple[torch.Tensor | None, dict]:
    """BCE of the letters + CE of the centre letter + CE of its place, on the OCR cells only (None when a pack
    holds none), and the centre letter's accuracy on the cells that hold one."""
    letters, centre, order = out
    on = ~torch.isnan(target.letters[:, 0])
    if not bool(on.any()):
        return None, {}
    loss = F.binary_cross_entropy_with_logits(letters[on], target.letters[on])
    loss = loss + F.cross_entropy(centre, target.centre, ignore_index=IGNORE)
    if bool((target.order != IGNORE).any()):
        loss = loss + 0.5 * F.cross_entropy(order, target.order, ignore_index=IGNORE)
    with torch.no_grad():
        text = target.centre > 0
        stats = {"char_acc": float((centre[text].argmax(-1) == target.centre[text]).float().mean())
                 if bool(text.any()) else float("nan")}
    return loss, stats


# --- a vision-only letter stage --------------------------------------------------------------------------------------

def letter_stage(vlm, data: Path, *, steps: int, batch: int = 24, lr: float = 2e-3, seed: int = 0,
                 log=None, anchor: Path | None = None, anchor_batch: int = 8, anchor_weight: float = 1.0) -> dict:
    """ViT + merger trained alone on `data`'s OCR word images with a throwaway `CharHead` on every merged cell (the
    letter targets above), as the vision stage teaches object cells; warm-up 5%, cosine to 0.1x. Returns the last
    100 steps' mean centre-letter accuracy and loss (and, with an anchor, the anchor's relative error). The head is
    dropped.

    `anchor`: a folder of other images (the grounding scenes) whose merged features are held to what the starting
    ViT gave them: `anchor_batch` of them ride along each step, and `anchor_weight` x their features' mean squared
    distance to the starting tower's, over the starting features' mean square, joins the loss. Without it the
    letters overwrite the features the LLM reads objects from (measured: the grounding shuffled-image gap fell from
    +0.43 to +0.01 nats after 4,000 letter steps)."""
    import copy
    import random

    from qwen25vl.processing.image import process_image
    from qwen25vl.recipes.tiny_data import _image_path, read_split
    from qwen25vl.train.optim import warmup_cosine

    _, metas = read_split(data, "train")
    metas = [m for m in metas if m.get("task") in OCR_TASKS]
    if len(metas) < batch:
        raise ValueError(f"{data} holds {len(metas)} OCR word records, fewer than a batch of {batch}")
    anchors, teacher = [], None
    if anchor is not None:
        _, anchors = read_split(anchor, "train")
        if len(anchors) < anchor_batch or anchor_batch < 1:
            raise ValueError(f"{anchor} holds {len(anchors)} records, fewer than an anchor batch of {anchor_batch}")
        teacher = copy.deepcopy(vlm.visual).eval().requires_grad_(False)
    head = CharHead(vlm.config.vision.out_hidden_size)
    params = [p for n, p in vlm.named_parameters() if n.startswith("visual.")] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    recent: list[tuple[float, float, float]] = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * warmup_cosine(step, max(1, steps // 20), steps, 0.1)
        chosen = rng.sample(metas, batch)
        images = [process_image(data / _image_path(data, m)) for m in chosen]
        held = [process_image(anchor / _image_path(anchor, m)) for m in rng.sample(anchors, anchor_batch)] \
            if teacher is not None else []
        features = vlm.visual(torch.cat([im.pixel_values for im in images + held]),
                              torch.tensor([im.grid_thw for im in images + held]))
        words = sum(t * h * w for t, h, w in (im.grid_thw for im in images)) // 4  # merged tokens of the words
        loss, stats = char_loss(head(features[:words]), CharTargets.cat([char_targets(m, "ocr") for m in chosen]))
        drift = float("nan")
        if teacher is not None:
            with torch.no_grad():
                target = teacher(torch.cat([im.pixel_values for im in held]),
                                 torch.tensor([im.grid_thw for im in held]))
            relative = (features[words:] - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12)
            loss = loss + anchor_weight * relative
            drift = float(relative.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        recent = (recent + [(float(loss.detach()), stats["char_acc"], drift)])[-100:]
        if log is not None and ((step + 1) % 50 == 0 or step == steps - 1):
            log({"stage": "letters", "step": step + 1, "loss": recent[-1][0], "char_acc": recent[-1][1],
                 "char_acc_100": sum(a for _, a, _ in recent) / len(recent),
                 **({"anchor_drift": drift} if teacher is not None else {})})
    n = max(1, len(recent))
    out = {"letter_loss": sum(x for x, _, _ in recent) / n, "letter_acc": sum(a for _, a, _ in recent) / n}
    if teacher is not None:
        out["anchor_drift"] = sum(d for _, _, d in recent) / n
    return out


# --- the measurement: OCR-only training from a model folder, with or without the probes --------------------------

def measure(model: Path, data_root: Path, out: Path, *, steps: int, char_until: float, vision_ratio: float,
            lr: float = 8e-4, batch: int = 16, train: int | None = None, limit: int | None = 200,
            seed: int = 11, log=None, letter_steps: int = 0, letter_lr: float = 2e-3,
            letter_batch: int = 24) -> dict:
    """Train `model` (a folder) on stage 5's OCR words alone for `steps` (after `letter_steps` of the vision-only
    letter stage, when > 0), the probes on for the first `char_until` of them, export to `out/model` and score held-out word exact match (`tiny_skills`, engine seed 7). Returns the
    OCR score, its standard error, the last logged shuffled-image gap on OCR held-out packs and the probes' mean
    centre-letter accuracy over the last tenth of the probed steps."""
    import json
    import math

    from qwen25vl.model.vlm import Qwen25VL
    from qwen25vl.recipes.tiny import export, joint_stage
    from qwen25vl.recipes.tiny_data import SKILL_COUNTS, SKILL_OPTIONS, SKILLS_SEED, make_data
    from qwen25vl.recipes.tiny_skills import evaluate_kind

    data = make_data(data_root / "ocr-skills", SKILL_COUNTS["ocr"] if train is None else train, 64, SKILLS_SEED,
                     SKILL_OPTIONS["ocr"], "ocr")
    out.mkdir(parents=True, exist_ok=True)
    entries = []

    def keep(entry: dict) -> None:
        entries.append(entry)
        with (out / "log.jsonl").open("a") as f:
            f.write(json.dumps(entry) + "\n")
        if log is not None:
            log(entry)

    vlm = Qwen25VL.from_pretrained(model, dtype=torch.float32, progress=False)
    letters = (letter_stage(vlm, data, steps=letter_steps, batch=letter_batch, lr=letter_lr, seed=seed, log=keep)
               if letter_steps else {})
    last = joint_stage(vlm, model, data, steps=steps, batch=batch, lr=lr, vision_ratio=vision_ratio,
                       dense_until=0.0, seed=seed, log_every=max(1, steps // 4), log=keep, warmup=0.05,
                       char_until=char_until, stage="ocr-probe")
    export(vlm, model, out / "model")
    scored = evaluate_kind(out / "model", data_root, "ocr", limit)
    probed = [e for e in entries if "char_acc_vit" in e]
    tail = probed[-max(1, len(probed) // 10):]

    def mean(key: str) -> float | None:
        values = [e[key] for e in tail if key in e and not math.isnan(e[key])]
        return sum(values) / len(values) if values else None

    result = {"steps": steps, "letter_steps": letter_steps, **letters, "char_probe_until": char_until,
              "vision_ratio": vision_ratio, "lr": lr,
              "ocr": scored["score"], "se": scored["se"], "n": scored["n"], "shuffled_gap": last.get("shuffled_gap"),
              "char_acc_vit": mean("char_acc_vit"), "char_acc_llm": mean("char_acc_llm"),
              "examples": scored["examples"]}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv=None) -> int:
    import argparse
    import json
    import sys

    from qwen25vl.recipes.tiny import say

    p = argparse.ArgumentParser(prog="python -m qwen25vl.recipes.tiny_ocr",
                                description="OCR-only training from a model folder, with or without the character "
                                            "probes, then held-out word exact match")
    p.add_argument("--model", required=True, help="a model folder (e.g. qwen25vl/assets/tiny-model)")
    p.add_argument("--data", default="build/tiny/data", help="datasets root (stage 5's OCR words, eval-ocr)")
    p.add_argument("--out", default="build/ocr-probe")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--char-probe-until", type=float, default=1.0, help="the probes' share of the steps (0: off)")
    p.add_argument("--vision-ratio", type=float, default=0.2, help="the ViT's learning rate over the LLM's")
    p.add_argument("--lr", type=float, default=8e-4)
    p.add_argument("--letter-steps", type=int, default=0,
                   help="first a vision-only letter stage of this many steps (ViT + merger + a throwaway head)")
    p.add_argument("--letter-lr", type=float, default=2e-3)
    p.add_argument("--train", type=int, help="OCR train words when the dataset is written here")
    p.add_argument("--limit", type=int, default=200, help="held-out words scored")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    model = Path(args.model)
    if not (model / "model.safetensors").is_file():
        print(f"error: {model} holds no model.safetensors", file=sys.stderr)
        return 2
    if not 0.0 <= args.char_probe_until <= 1.0 or args.steps < 1 or args.letter_steps < 0:
        print("error: --char-probe-until must lie in [0, 1], --steps be at least 1 and --letter-steps at least 0",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    result = measure(model, Path(args.data), Path(args.out), steps=args.steps, char_until=args.char_probe_until,
                     vision_ratio=args.vision_ratio, lr=args.lr, train=args.train, limit=args.limit,
                     letter_steps=args.letter_steps, letter_lr=args.letter_lr,
                     log=lambda e: say(f"{e['stage']} step {e['step']} " + (
                         f"letter accuracy {e['char_acc_100']:.3f}" if e["stage"] == "letters" else
                         f"ce {e['ce']:.3f}" + (f" gap {e['shuffled_gap']:+.3f}" if "shuffled_gap" in e else ""))))
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
