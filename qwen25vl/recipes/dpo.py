"""`qwen25vl train dpo`: preference optimisation with the vision tower frozen, top to bottom.

Set up (the LLM trains; ViT and merger frozen) -> the reference pass (the starting policy's log-probs of every pair,
computed once and stored as `reference.pt` in the output folder, keyed by record index) -> resume -> steps of packed
pairs -> export. The reference model is never held in memory next to the policy: its log-probs are a table.

The output folder is laid out as SFT's (`checkpoints/`, `log.jsonl`, `hf/`) plus `reference.pt`. A resumed run reads
the table again, so the reference stays the starting policy, not the checkpoint's.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist

from qwen25vl.data.encoding import Encoder
from qwen25vl.data.loader import PackLoader, Step
from qwen25vl.data.packing import first_fit_decreasing
from qwen25vl.data.records import iter_records
from qwen25vl.errors import CheckpointError
from qwen25vl.recipes.run import (
    _autocast, _load_model, _millions, _printer, _tensorboard, end_step, finish, resume_latest,
)
from qwen25vl.recipes.stages import Recipe
from qwen25vl.train.distributed import init_distributed, shard
from qwen25vl.train.dpo import LOGGED, PairLogps, check_options, collate_pairs, dpo_step, encode_pair
from qwen25vl.train.lora import setup_recipe
from qwen25vl.train.optim import build_optimizer, build_scheduler, set_trainable

# The report gives no rates; DPO moves a fine-tuned policy a little, so the rate is a tenth of SFT's.
DPO = Recipe("dpo", train={"vision": False, "merger": False, "llm": True}, lr={"llm": 1e-6}, warmup=10,
             weight_decay=0.0)


def train_dpo(recipe: Recipe, *, data: list[str], out: str, model: str | None = None, preset: str | None = None,
              device: str | None = None, resume: bool = True, max_pixels: int | None = None, beta: float = 0.1,
              label_smoothing: float = 0.0, loss_type: str = "sigmoid", reference: str | None = None,
              die_after_step: int | None = None, quiet: bool = False) -> list[dict]:
    """Run DPO; returns the per-step log records (means over each step's pairs, all ranks)."""
    check_options(beta, label_smoothing, loss_type)
    world = init_distributed(device)
    torch.manual_seed(recipe.seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = _printer(world.is_main and not quiet)

    # --- model: the LLM trains, the vision tower is frozen (its features serve policy and reference alike) --------
    vlm, source = _load_model(model, preset, out, recipe.seed, world.is_main, resume)
    counts = set_trainable(vlm, recipe.train)
    if recipe.lora is not None:  # B = 0 at the start: the reference pass below is the base model's
        counts = setup_recipe(vlm, recipe.lora, source, is_main=world.is_main, vision=False)
    loss_fn = PairLogps(vlm.to(world.device))
    if world.world_size > 1:
        shard(loss_fn, bf16=world.device.type == "cuda")
    say(f"{recipe.name} ({loss_type}, beta {beta}): trainable {_millions(counts)}; world {world.world_size}")

    # --- data: pairs packed whole, never cut ------------------------------------------------------------------------
    encoder = Encoder.from_pretrained(source, config=vlm.config, max_pixels=max_pixels)
    records = [item for path in data for item in iter_records(path)]
    loader = PairLoader(records, encoder, budget=recipe.budget, packs_per_step=recipe.packs_per_step,
                        world_size=world.world_size, rank=world.rank, seed=recipe.seed, window=recipe.window,
                        log=say if not quiet else None)
    say(f"data: {len(loader.records)} pairs, {loader.steps_per_epoch()} steps per epoch, "
        f"skipped {dict(loader.skipped) or 0}")

    # --- the reference: the starting policy's log-probs, once (before any checkpoint is restored) -----------------
    table_path = Path(reference) if reference else out / "reference.pt"
    table = read_reference(table_path, loader)
    if table is None:
        t0 = time.perf_counter()
        with _autocast(world):
            table = reference_logps(loss_fn, loader, world.device)
        if world.is_main:
            write_reference(table_path, loader, table)
        say(f"reference log-probs of {len(loader.records)} pairs in {time.perf_counter() - t0:.1f}s -> {table_path}")

    optimizer = build_optimizer(loss_fn, recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = build_scheduler(optimizer, warmup=recipe.warmup, total=recipe.steps, min_ratio=recipe.min_lr_ratio)

    # --- resume -------------------------------------------------------------------------------------------------------
    start = resume_latest(out, loss_fn, optimizer, scheduler, loader, say, base=source) if resume else 0

    # --- the loop -----------------------------------------------------------------------------------------------------
    log, writer = [], _tensorboard(out, world.is_main)
    log_file = (out / "log.jsonl").open("a") if world.is_main else None
    steps = iter(loader)
    for step in range(start + 1, recipe.steps + 1):
        t0 = time.perf_counter()
        work = next(steps)
        with _autocast(world):
            stats = dpo_step(loss_fn, optimizer, scheduler, [b.to(world.device) for b in work.micro_batches], table,
                             global_pairs=work.global_targets, world_size=world.world_size, beta=beta,
                             label_smoothing=label_smoothing, loss_type=loss_type, max_grad_norm=recipe.max_grad_norm)
        seconds = time.perf_counter() - t0
        entry = {"step": step, **stats, "pairs": work.global_targets, "tokens_per_s": work.global_tokens / seconds,
                 "packing": work.global_tokens / work.global_capacity, "epoch": work.epoch, "seconds": seconds}
        log.append(entry)
        if log_file is not None:
            log_file.write(json.dumps(entry) + "\n")
            log_file.flush()
        if writer is not None:
            for key in LOGGED + ("lr",):
                writer.add_scalar(f"dpo/{key}", entry[key], step)
        say(f"step {step}/{recipe.steps}  loss {entry['loss']:.4f}  margin {entry['margin']:+.4f}  "
            f"accuracy {entry['accuracy']:.0%}  logp chosen {entry['chosen_logps']:.2f} rejected "
            f"{entry['rejected_logps']:.2f}  lr {entry['lr']:.2e}")
        end_step(step, recipe, out, loss_fn, optimizer, scheduler, loader, world, die_after_step, base=source)

    # --- export -------------------------------------------------------------------------------------------------------
    finish(out, loss_fn, source, world, say, log_file, writer)
    return log


class PairLoader(PackLoader):
    """`PackLoader` over preference pairs: a pair (both sequences) is the unit that is measured, packed and dealt;
    a pair longer than the budget is skipped ("over-long"), never cut. A step's `global_targets` is its pair count."""

    def __init__(self, records, encoder: Encoder, **options):
        super().__init__(records, lambda record: encode_pair(encoder, record), truncate=False, **options)

    def __iter__(self):
        while True:
            packs = self.packs(self.epoch)
            while self.step < len(packs) // self.packs_per_step:
                group = packs[self.step * self.packs_per_step:(self.step + 1) * self.packs_per_step]
                micro = [self.collate(pack) for pack in self.deal(group)[self.rank]]
                pairs = sum(len(p) for p in group)
                tokens = sum(self.lengths[i] for p in group for i in p)
                index, self.step = self.step, self.step + 1  # counted before the yield: a checkpoint sees it done
                yield Step(micro, pairs, tokens, len(group) * self.budget, self.epoch, index)
            self.epoch, self.step = self.epoch + 1, 0

    def collate(self, pack: list[int]):
        return collate_pairs([self._sample(self.records[i]) for i in pack], pack)


@torch.no_grad()
def reference_logps(loss_fn, loader: PairLoader, device) -> torch.Tensor:
    """(pairs, 2) summed log-probs of every pair under the model as it is now (the starting policy).

    Packed by first-fit-decreasing over all pairs; under several ranks each takes every world_size-th pack and the
    table is summed over ranks. Every rank runs the same number of forwards (FSDP's gathers are collective)."""
    table = torch.zeros(len(loader.records), 2, dtype=torch.float64)
    packs = first_fit_decreasing(loader.lengths, loader.budget)
    rank, world = loader.rank, loader.world_size
    for k in range(math.ceil(len(packs) / world)):
        mine = k * world + rank
        pairs = loader.collate(packs[min(mine, len(packs) - 1)]).to(device)
        logps = loss_fn(pairs).double().cpu()
        if mine < len(packs):  # past the end: a repeated pack that only keeps the collectives in step
            table[pairs.index] = logps
    if world > 1 and dist.is_initialized():
        dist.all_reduce(table)
    if hasattr(loss_fn, "reshard"):
        # FSDP2 keeps the root's parameters gathered after a forward with no backward: an optimizer built now would
        # hold those, not the shards that state dicts name (saving a checkpoint then fails with a KeyError)
        loss_fn.reshard()
    return table.float()


def read_reference(path: Path, loader: PairLoader) -> torch.Tensor | None:
    """The stored table if it was computed for these records in this order; None if there is none."""
    if not path.is_file():
        return None
    stored = torch.load(path, weights_only=True)
    wheres = [r.where for r in loader.records]
    if stored.get("where") != wheres:
        raise CheckpointError(f"{path} holds reference log-probs of other records ({len(stored.get('where', []))} "
                              f"pairs, this run has {len(wheres)}); delete it to compute them again")
    return stored["logps"]


def write_reference(path: Path, loader: PairLoader, table: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"where": [r.where for r in loader.records], "logps": table}, tmp)
    tmp.rename(path)  # a run killed mid-write leaves no half table
