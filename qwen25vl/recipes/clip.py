"""`qwen25vl train clip`: the vision tower trained from scratch on image-text pairs (CLIP's objective), top to bottom.

Set up (a random ViT + merger of the config's size, a small text tower over the tokenizer's ids) -> pairs from the
records (each record's first image and its last answer as the caption) -> resume -> steps of contrastive batches ->
retrieval on held-out pairs -> export. The export `OUT/hf/` is a full Hugging Face folder: the starting model's
language model (`--model`, or the tiny preset's seeded random one) with the trained `visual.*` weights, so stage 1
starts from it: `qwen25vl train pretrain --stage 1 --model OUT/hf ...`. The text tower is not exported.

The output folder is laid out as the other recipes' (`checkpoints/`, `log.jsonl`, `hf/`). One process or many
(`torchrun --nproc_per_node N -m qwen25vl train clip ...`, FSDP2 over the ViT blocks and the text tower's layers):
each rank embeds its slice of the step's batch and the loss gathers every rank's embeddings, so the run equals one
process on the same batch (tested). `--batch` is the global batch; it must divide among the ranks.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections import Counter
from pathlib import Path

import torch

from qwen25vl.data.records import Record, iter_records
from qwen25vl.errors import ConfigError, InputError
from qwen25vl.recipes.run import _autocast, _load_model, _printer, end_step, resume_latest
from qwen25vl.recipes.stages import Recipe
from qwen25vl.train.checkpoint import TOKENIZER_FILES
from qwen25vl.train.clip import CLIPModel, TextTowerConfig, clip_step, collate_pairs, embed_all, retrieval_accuracy
from qwen25vl.train.distributed import barrier, close, init_distributed
from qwen25vl.train.optim import build_optimizer, build_scheduler

# Ours (CLIP's paper: 5e-4 peak, weight decay 0.2, a batch of 32k; ours is smaller, the rate is kept). The "llm" group
# is everything outside `visual`: the text tower, both projections and the temperature.
CLIP = Recipe("clip", lr={"vision": 5e-4, "merger": 5e-4, "llm": 5e-4}, warmup=50, weight_decay=0.2)


def train_clip(recipe: Recipe, *, data: list[str], out: str, model: str | None = None, preset: str | None = None,
               device: str | None = None, resume: bool = True, max_pixels: int | None = None, batch: int = 256,
               heldout: list[str] | None = None, text: dict | None = None, embed_dim: int = 256,
               die_after_step: int | None = None, quiet: bool = False) -> list[dict]:
    """Run contrastive pretraining; returns the log records (steps, then the held-out retrieval before and after)."""
    if (model is None) == (preset is None):
        raise ConfigError("give exactly one of --model FOLDER (config, tokenizer, LLM) or --preset NAME")
    ranks = int(os.environ.get("WORLD_SIZE", "1"))
    if batch % ranks:
        raise ConfigError(f"--batch {batch} (the global batch) does not divide among {ranks} ranks")
    world = init_distributed(device)
    torch.manual_seed(recipe.seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = _printer(world.is_main and not quiet)

    # --- model: the config's ViT + merger from random weights, a text tower over the tokenizer's vocabulary -----------
    config, source = _starting_point(model, preset, out, recipe.seed, world.is_main)
    tokenizer, image_config = _processing(source)
    text_config = TextTowerConfig(vocab_size=config.text.vocab_size, **(text or {}))
    clip = CLIPModel(config.vision, text_config, embed_dim)
    _init_weights(clip, recipe.seed)
    clip.to(world.device)
    if world.world_size > 1:
        shard_clip(clip)
    optimizer = build_optimizer(clip, recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = build_scheduler(optimizer, warmup=recipe.warmup, total=recipe.steps, min_ratio=recipe.min_lr_ratio)
    vision = sum(p.numel() for p in clip.visual.parameters())
    say(f"{recipe.name}: ViT + merger {vision / 1e6:.2f}M, text tower and heads "
        f"{(sum(p.numel() for p in clip.parameters()) - vision) / 1e6:.2f}M; world {world.world_size}; "
        f"device {world.device}")

    # --- data ---------------------------------------------------------------------------------------------------------
    options = dict(tokenizer=tokenizer, image_config=image_config, max_pixels=max_pixels,
                   max_tokens=text_config.max_tokens, log=say if not quiet else None)
    loader = ClipLoader([r for path in data for r in iter_records(path)], batch=batch, seed=recipe.seed,
                        rank=world.rank, world_size=world.world_size, **options)
    evaluator = ClipLoader([r for path in heldout for r in iter_records(path)], batch=min(batch, 64), **options) \
        if heldout else None
    say(f"data: {len(loader.pairs)} pairs, {loader.steps_per_epoch()} steps per epoch, "
        f"skipped {dict(loader.skipped) or 0}")

    # --- resume, the held-out retrieval at the start ------------------------------------------------------------------
    start = resume_latest(out, clip, optimizer, scheduler, loader, say) if resume else 0
    log = []
    log_file = (out / "log.jsonl").open("a") if world.is_main else None

    def record(entry: dict) -> None:
        log.append(entry)
        if log_file is not None:
            log_file.write(json.dumps(entry) + "\n")
            log_file.flush()

    if evaluator is not None and start == 0:
        record(evaluate(clip, evaluator, world, 0))
        say(f"held-out retrieval at step 0: {log[-1]['retrieval']:.1%} (chance {log[-1]['chance']:.1%})")

    # --- the loop -----------------------------------------------------------------------------------------------------
    steps = iter(loader)
    for step in range(start + 1, recipe.steps + 1):
        t0 = time.perf_counter()
        pairs = next(steps).to(world.device)
        with _autocast(world):
            stats = clip_step(clip, optimizer, scheduler, pairs, max_grad_norm=recipe.max_grad_norm)
        seconds = time.perf_counter() - t0
        record({"step": step, **stats, "pairs_per_s": stats["pairs"] / seconds, "epoch": loader.epoch,
                "seconds": seconds})
        say(f"step {step}/{recipe.steps}  loss {stats['loss']:.4f}  in-batch accuracy {stats['accuracy']:.0%}  "
            f"temperature {stats['temperature']:.4f}  lr {stats['lr']:.2e}")
        end_step(step, recipe, out, clip, optimizer, scheduler, loader, world, die_after_step)

    # --- held-out retrieval, export (the text tower stays behind) -----------------------------------------------------
    if evaluator is not None:
        record(evaluate(clip, evaluator, world, recipe.steps))
        say(f"held-out retrieval at step {recipe.steps}: {log[-1]['retrieval']:.1%} (chance {log[-1]['chance']:.1%})")
    if log_file is not None:
        log_file.close()
    export_vision(clip, out / "hf", model=model, preset=preset, out=out, seed=recipe.seed, source=source,
                  is_main=world.is_main)
    say(f"wrote {out / 'hf'} (the trained ViT + merger; LLM from {model or preset})")
    close()
    return log


def shard_clip(clip: CLIPModel) -> CLIPModel:
    """FSDP2: each ViT block and each text-tower layer its own unit, the root the rest (patch embedding, merger,
    embeddings, projections, temperature)."""
    from torch.distributed.fsdp import fully_shard

    for block in clip.visual.blocks:
        fully_shard(block)
    for layer in clip.text.layers:
        fully_shard(layer)
    fully_shard(clip)
    return clip


class ClipLoader:
    """Image-caption pairs of records, in shuffled batches of `batch` pairs per step, with a resumable position.

    A pair is a record's first image part and its last assistant answer (the caption, cut to `max_tokens` ids).
    Records without either are skipped and counted; an image that fails to decode is dropped from its batch (counted).
    Each epoch shuffles the pairs with (seed, epoch); the last partial batch is left out. Under torchrun every rank
    walks the same global batches and collates its own contiguous slice of each (`rank` of `world_size`)."""

    def __init__(self, records, *, tokenizer, image_config, batch: int, seed: int = 0, max_pixels: int | None = None,
                 max_tokens: int = 64, log=None, rank: int = 0, world_size: int = 1):
        if batch < 2:
            raise InputError(f"a contrastive batch needs at least 2 pairs, got batch {batch}")
        if batch % world_size:
            raise ConfigError(f"a batch of {batch} pairs does not divide among {world_size} ranks")
        self.tokenizer, self.image_config, self.batch, self.seed = tokenizer, image_config, batch, seed
        self.rank, self.world_size = rank, world_size
        self.max_pixels, self.max_tokens, self.log = max_pixels, max_tokens, log
        self.skipped: Counter = Counter()
        self.pairs: list[tuple[Record, dict, str]] = []
        for item in records:
            reason, err = "invalid record", item
            if not isinstance(item, InputError):
                try:
                    self.pairs.append((item, *pair_of(item)))
                    continue
                except InputError as bad:
                    reason, err = "no image or caption", bad
            self.skipped[reason] += 1
            if log is not None:
                log(f"skipped ({reason}): {err}")
        if self.steps_per_epoch() == 0:
            raise InputError(f"{len(self.pairs)} usable pairs ({dict(self.skipped)} skipped) make no batch of {batch}")
        self.epoch, self.step = 0, 0

    def steps_per_epoch(self) -> int:
        return len(self.pairs) // self.batch

    def order(self, epoch: int) -> list[int]:
        order = list(range(len(self.pairs)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def __iter__(self):
        while True:
            order = self.order(self.epoch)
            while self.step < self.steps_per_epoch():
                chosen = order[self.step * self.batch:(self.step + 1) * self.batch]
                share = self.batch // self.world_size
                chosen = chosen[self.rank * share:(self.rank + 1) * share]
                self.step += 1  # counted before the yield: a checkpoint taken after the step sees it done
                yield self.collate(chosen)
            self.epoch, self.step = self.epoch + 1, 0

    def in_order(self):
        """Every pair once, in record order, in batches (the last one partial)."""
        for i in range(0, len(self.pairs), self.batch):
            yield self.collate(list(range(i, min(i + self.batch, len(self.pairs)))))

    def collate(self, index: list[int]):
        from qwen25vl.processing.image import process_image

        images, captions, kept, texts = [], [], [], []
        for i in index:
            record, part, text = self.pairs[i]
            limits = {k: part[k] for k in ("min_pixels", "max_pixels") if k in part}
            if self.max_pixels is not None:
                limits.setdefault("max_pixels", self.max_pixels)
            source = part["image"] if part["image"].startswith(("http://", "https://", "data:")) \
                or Path(part["image"]).is_absolute() else str(record.root / part["image"])
            try:
                images.append(process_image(source, config=self.image_config, **limits))
            except (InputError, OSError) as err:
                self.skipped["missing or undecodable media"] += 1
                if self.log is not None:
                    self.log(f"skipped ({record.where}): {err}")
                continue
            captions.append(self.tokenizer.encode(text)[:self.max_tokens])
            kept.append(i)
            texts.append(text)
        return collate_pairs(images, captions, kept, texts)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "batch": self.batch, "pairs": len(self.pairs)}

    def load_state_dict(self, state: dict) -> None:
        if (state["batch"], state["pairs"]) != (self.batch, len(self.pairs)):
            raise ConfigError(f"the checkpoint was taken with batch {state['batch']} over {state['pairs']} pairs; "
                              f"this run has batch {self.batch} over {len(self.pairs)}")
        self.epoch, self.step = state["epoch"], state["step"]


def pair_of(record: Record) -> tuple[dict, str]:
    """(the first image part, the last assistant answer's text) of a record; InputError naming it otherwise."""
    part = next((p for m in record.messages if isinstance(m.get("content"), list) for p in m["content"]
                 if p.get("type") == "image"), None)
    answers = [m["content"] for m in record.messages if m["role"] == "assistant"]
    text = answers[-1] if answers else ""
    if isinstance(text, list):
        text = " ".join(p.get("text", "") for p in text if p.get("type") == "text")
    if part is None or not str(text).strip():
        raise InputError(f"{record.where}: a CLIP pair needs an image part and a non-empty caption (the answer)")
    return part, str(text).strip()


@torch.no_grad()
def evaluate(clip: CLIPModel, loader: ClipLoader, world, step: int) -> dict:
    """Image -> text retrieval over all of `loader`'s pairs (each image against every caption)."""
    with _autocast(world):
        images, texts, captions = embed_all(clip, (b.to(world.device) for b in loader.in_order()))
    accuracy, chance = retrieval_accuracy(images, texts, captions)
    return {"eval": "heldout", "step": step, "retrieval": accuracy, "chance": chance, "pairs": len(captions)}


def export_vision(clip: CLIPModel, folder: Path, *, model, preset, out: Path, seed: int, source: Path,
                  is_main: bool = True) -> Path | None:
    """A full HF folder: the starting model (or the preset's seeded random one) with the trained `visual` weights.
    Every rank calls it (FSDP gathers the full weights); rank 0 writes."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from qwen25vl.model.vlm import Qwen25VL

    full = get_model_state_dict(clip, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if model is not None:
        vlm = Qwen25VL.from_pretrained(model, dtype=torch.float32, progress=False) if is_main else None
    else:
        vlm, _ = _load_model(None, preset, out, seed, is_main)  # every rank: it ends in a barrier
    if not is_main:
        barrier()
        return None
    vlm.visual.load_state_dict({k.removeprefix("visual."): v for k, v in full.items() if k.startswith("visual.")})
    vlm.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (Path(source) / name).is_file():
            shutil.copy(Path(source) / name, Path(folder) / name)
    barrier()
    return folder


def _starting_point(model, preset, out: Path, seed: int, is_main: bool = True):
    """(config, folder of the tokenizer and processor files)."""
    if model is not None:
        from qwen25vl.config import Qwen25VLConfig

        return Qwen25VLConfig.from_pretrained(model), Path(model)
    vlm, source = _load_model(None, preset, out, seed, is_main)  # rank 0 writes the tiny tokenizer into OUT/init
    return vlm.config, source


def _processing(source: Path):
    from qwen25vl.processing.image import ImageProcessorConfig
    from qwen25vl.processing.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(source), ImageProcessorConfig.from_pretrained(source)


def _init_weights(clip: CLIPModel, seed: int) -> None:
    """Seeded init of every matrix (N(0, 1/fan_in)), then CLIP's starting temperature of 0.07."""
    from qwen25vl.testing.checkpoint import init_random_weights
    from qwen25vl.train.clip import LOGIT_SCALE_INIT

    with torch.no_grad():
        init_random_weights(clip, seed, embed_std=1.0, gain=1.0)
        clip.logit_scale.fill_(LOGIT_SCALE_INIT)
