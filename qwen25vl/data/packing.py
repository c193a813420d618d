"""Packing samples into fixed token budgets, and the collate that makes a packed forward's inputs.

Three samples A (3 tokens), B (4 tokens, one image of 2 tokens) and C (2 tokens) in one pack:

    input_ids     a0 a1 a2 | b0 <v> <i> <i> | c0 c1           one row, B == 1, T = 9
    cu_seqlens    0        3                7     9           LLM attention is causal inside each segment only
    position t    0  1  2  | 0  1   2   2   | 0  1            each sample's own M-RoPE ids, restarting at 0
    position h    0  1  2  | 0  1   2   2   | 0  1            (the image's two tokens: same t, h; w 2 and 3;
    position w    0  1  2  | 0  1   2   3   | 0  1             text after it resumes at max + 1)
    labels        a1 a2 -  | .. ..  -   -   | c1 -            shifted inside each sample: no cross-sample target

The pack's images and videos go through the ViT in one call; the tower's own `cu_seqlens` (windows and full
attention blocks) come from the grids, so attention never crosses two images either.

Over-long samples (more tokens than the budget) follow one rule: a sample whose cut falls after its last vision
token and keeps at least one supervised target is truncated to the budget (text only is lost); any other is
dropped. A cut never goes through a vision block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qwen25vl.data.encoding import IGNORE, Sample
from qwen25vl.errors import InputError

DEFAULT_BUDGET = 8192
LONG_BUDGET = 32768


def first_fit_decreasing(lengths: list[int], budget: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of total <= budget: longest first, each into the first bin with room.

    Ties keep index order, so the result is a pure function of the lengths. Every length must be <= budget."""
    if budget <= 0:
        raise InputError(f"the pack budget must be positive, got {budget}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        if n > budget:
            raise InputError(f"item {i} has {n} tokens, over the pack budget {budget}")
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(budget - n)
    return bins


def fit_to_budget(sample: Sample, budget: int) -> Sample:
    """The sample itself if it fits; truncated by the rule above; else InputError (the record is dropped)."""
    if sample.length <= budget:
        return sample
    if sample.vision_end > budget or not bool((sample.labels[:budget] != IGNORE).any()):
        raise InputError(f"{sample.where}: over-long ({sample.length} tokens > budget {budget}) and cannot be cut "
                         f"after its last vision block with an answer left")
    return Sample(sample.input_ids[:budget], sample.labels[:budget], sample.position_ids[:, :budget],
                  sample.pixel_values, sample.image_grid_thw, sample.pixel_values_videos, sample.video_grid_thw,
                  sample.second_per_grid_ts, sample.where, sample.vision_end)


@dataclass
class PackedBatch:
    """The model's inputs for one packed forward (B == 1) and the count of supervised targets."""

    input_ids: torch.Tensor  # (1, T)
    labels: torch.Tensor  # (1, T), -100 where not trained
    position_ids: torch.Tensor  # (3, 1, T)
    cu_seqlens: torch.Tensor  # (S + 1,) int32
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None
    second_per_grid_ts: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def num_targets(self) -> int:
        return int((self.labels != IGNORE).sum())

    def to(self, device) -> PackedBatch:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return PackedBatch(**moved)


def collate_pack(samples: list[Sample]) -> PackedBatch:
    """Concatenate samples into one row: ids, labels and positions side by side, vision inputs in sample order."""
    if not samples:
        raise InputError("cannot collate an empty pack")
    lengths = torch.tensor([s.length for s in samples], dtype=torch.int32)
    cu = torch.zeros(len(samples) + 1, dtype=torch.int32)
    cu[1:] = lengths.cumsum(0)
    batch = PackedBatch(
        input_ids=torch.cat([s.input_ids for s in samples])[None],
        labels=torch.cat([s.labels for s in samples])[None],
        position_ids=torch.cat([s.position_ids for s in samples], dim=1)[:, None],  # (3, T) -> (3, 1, T)
        cu_seqlens=cu,
    )
    for name in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
        parts = [getattr(s, name) for s in samples if getattr(s, name) is not None]
        if parts:
            setattr(batch, name, torch.cat(parts))
    return batch
