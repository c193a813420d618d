"""The packed data loader: records -> per-step packs for this rank, with the global target count and a resumable
position.

One pass over the records first measures each one (encodes it; bad records are skipped here, counted by reason);
under torchrun each rank measures every world_size-th record and the lengths are gathered.
Then every epoch: records shuffled with (seed, epoch), first-fit-decreasing packing within windows of
`window` records, the packs shuffled, and consecutive groups of `packs_per_step` packs form the global steps. Each
step's packs are dealt to ranks longest first onto the rank with the fewest tokens so far (length balance), so
every rank gets `packs_per_step / world_size` micro-batches of about the same tokens. Every rank computes the same
plan from the same lengths, so the global number of supervised targets of a step is known without communication.

The position is (epoch, steps done): it does not depend on the world size, so a run can resume on another one with
the same global batch (`packs_per_step`).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import torch.distributed as dist

from qwen25vl.data.packing import PackedBatch, collate_pack, first_fit_decreasing, fit_to_budget
from qwen25vl.errors import InputError

REASONS = (("over-long", "over-long"), ("outside", "box out of frame"), ("empty answer", "empty answer"),
           ("no supervised", "empty answer"), ("do not match", "image-token mismatch"),
           ("tokens but", "image-token mismatch"), ("pad|> tokens", "image-token mismatch"), ("not valid JSON", "bad JSON"))


def reason_of(err: Exception | str) -> str:
    """A short, countable reason for a skipped record."""
    text = str(err)
    for key, reason in REASONS:
        if key in text:
            return reason
    if any(k in text for k in ("image", "video", "frame", "No such file", "does not exist", "cannot")):
        return "missing or undecodable media"
    return "invalid record"


@dataclass
class Step:
    """One optimizer step's work for this rank."""

    micro_batches: list[PackedBatch]
    global_targets: int
    global_tokens: int
    global_capacity: int  # packs x budget: packing efficiency = tokens / capacity
    epoch: int
    index: int  # steps done in this epoch before this one


class PackLoader:
    def __init__(self, records, encode, *, budget: int, packs_per_step: int = 1, world_size: int = 1, rank: int = 0,
                 seed: int = 0, window: int = 1024, truncate: bool = True, log=None):
        if packs_per_step % world_size:
            raise InputError(f"packs_per_step {packs_per_step} must be a multiple of the world size {world_size}")
        self.encode, self.budget, self.packs_per_step = encode, budget, packs_per_step
        self.world_size, self.rank, self.seed, self.window, self.truncate = world_size, rank, seed, window, truncate
        self.skipped: Counter = Counter()
        self.records, self.lengths, self.targets = [], [], []
        records = list(records)
        for i, found in sorted(self._measure(records).items()):
            if isinstance(found, str):
                self.skipped[reason_of(found)] += 1
                if log is not None:
                    log(f"skipped ({reason_of(found)}): {found}")
                continue
            self.records.append(records[i])
            self.lengths.append(found[0])
            self.targets.append(found[1])
        if self.steps_per_epoch() == 0:
            raise InputError(f"{len(self.records)} usable records ({sum(self.skipped.values())} skipped: "
                             f"{dict(self.skipped)}) make fewer than the {packs_per_step} packs of one step")
        self.epoch, self.step = 0, 0

    def _measure(self, records) -> dict:
        """index -> (tokens, targets) or the reason it is skipped. Each rank encodes every world_size-th record and
        the results are gathered, so the pass costs 1 / world_size of the data per rank."""
        shared = self.world_size > 1 and dist.is_initialized()  # else one process plays a rank: measure all
        found = {}
        for i in range(self.rank if shared else 0, len(records), self.world_size if shared else 1):
            if isinstance(records[i], Exception):
                found[i] = str(records[i])
                continue
            try:
                sample = self._sample(records[i])
                found[i] = (sample.length, sample.num_targets)
            except InputError as err:
                found[i] = str(err)
        if shared:
            parts: list = [None] * self.world_size
            dist.all_gather_object(parts, found)
            found = {i: v for part in parts for i, v in part.items()}
        return found

    def _sample(self, record):
        sample = self.encode(record)
        if sample.length > self.budget and not self.truncate:
            raise InputError(f"{sample.where}: over-long ({sample.length} tokens > budget {self.budget})")
        return fit_to_budget(sample, self.budget)

    def packs(self, epoch: int) -> list[list[int]]:
        """Record indices of each pack of an epoch, in the order they are consumed."""
        rng = random.Random(f"{self.seed}:{epoch}")
        order = list(range(len(self.records)))
        rng.shuffle(order)
        packs = []
        for start in range(0, len(order), self.window):
            chunk = order[start:start + self.window]
            packs += [[chunk[i] for i in b] for b in first_fit_decreasing([self.lengths[i] for i in chunk],
                                                                          self.budget)]
        rng.shuffle(packs)
        return packs

    def steps_per_epoch(self) -> int:
        return len(self.packs(0)) // self.packs_per_step if self.records else 0

    def deal(self, packs: list[list[int]]) -> list[list[list[int]]]:
        """A step's packs -> per-rank lists of packs: longest first to the least-loaded rank with room."""
        per_rank = self.packs_per_step // self.world_size
        ranks: list[list[list[int]]] = [[] for _ in range(self.world_size)]
        load = [0] * self.world_size
        for pack in sorted(packs, key=lambda p: -sum(self.lengths[i] for i in p)):
            r = min((r for r in range(self.world_size) if len(ranks[r]) < per_rank), key=lambda r: (load[r], r))
            ranks[r].append(pack)
            load[r] += sum(self.lengths[i] for i in pack)
        return ranks

    def __iter__(self):
        """Steps forever (epoch after epoch), from the current position."""
        while True:
            packs = self.packs(self.epoch)
            steps = len(packs) // self.packs_per_step
            while self.step < steps:
                group = packs[self.step * self.packs_per_step:(self.step + 1) * self.packs_per_step]
                mine = self.deal(group)[self.rank]
                micro = [collate_pack([self._sample(self.records[i]) for i in pack]) for pack in mine]
                step = Step(micro, sum(self.targets[i] for p in group for i in p),
                            sum(self.lengths[i] for p in group for i in p), len(group) * self.budget,
                            self.epoch, self.step)
                self.step += 1
                yield step
            self.epoch, self.step = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "packs_per_step": self.packs_per_step}

    def load_state_dict(self, state: dict) -> None:
        if state.get("packs_per_step", self.packs_per_step) != self.packs_per_step:
            raise InputError(f"the checkpoint was written with packs_per_step {state['packs_per_step']}, this run "
                             f"uses {self.packs_per_step}: resume needs the same global batch")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
