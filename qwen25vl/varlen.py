"""Packed-sequence bookkeeping: a `VarlenPlan` groups the segments of `cu_seqlens` by length, once per set of bounds.

Pure integer math shared by the vision layout (windows and images) and the attention kernel boundary, which reads
the plan; it lives apart from both so the index math needs no model code.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from qwen25vl.errors import InputError


@dataclass(frozen=True, eq=False)
class SegmentGroup:
    """The segments of one length: `count` of them, either back to back from `start` or at the token ids `index`."""

    length: int
    count: int
    start: int | None  # set when the segments are contiguous: tokens start .. start + count * length
    index: torch.Tensor | None  # (count * length,) long token ids, segment after segment, when they are not


@dataclass(frozen=True, eq=False)
class VarlenPlan:
    """Everything packed attention needs from `cu_seqlens`, computed once and reused by every layer."""

    cu_seqlens: torch.Tensor  # (S + 1,) int32 on the tensors' device, zero-length segments removed
    max_seqlen: int
    total: int
    groups: tuple[SegmentGroup, ...]

    @staticmethod
    def build(cu_seqlens: torch.Tensor | list[int] | tuple[int, ...], device: torch.device | str | None = None):
        if isinstance(cu_seqlens, torch.Tensor):
            if device is None:
                device = cu_seqlens.device
            cu_seqlens = cu_seqlens.tolist()
        return _plan(tuple(int(c) for c in cu_seqlens), str(torch.device(device or "cpu")))

    def covers_one_run(self) -> bool:
        """True when a single contiguous group spans every token, so the output needs no reassembly."""
        return len(self.groups) == 1 and self.groups[0].start == 0


@functools.lru_cache(maxsize=64)
def _plan(bounds: tuple[int, ...], device: str) -> VarlenPlan:
    # a cached plan outlives the call that made it: built under inference_mode (generation), its index tensors would
    # be inference tensors that a later autograd forward (training) may not save for backward
    with torch.inference_mode(False):
        return _make_plan(bounds, device)


def _make_plan(bounds: tuple[int, ...], device: str) -> VarlenPlan:
    if len(bounds) < 2 or bounds[0] != 0:
        raise InputError(f"cu_seqlens must start at 0 and hold at least two entries, got {list(bounds[:8])}")
    lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    if min(lengths) < 0:
        raise InputError(f"cu_seqlens must be non-decreasing, got {list(bounds[:16])}")
    starts_by_length: dict[int, list[int]] = {}
    for start, length in zip(bounds[:-1], lengths):
        if length > 0:  # empty windows (a padded window row) carry no tokens
            starts_by_length.setdefault(length, []).append(start)
    groups = []
    for length, starts in sorted(starts_by_length.items(), reverse=True):
        contiguous = all(b - a == length for a, b in zip(starts[:-1], starts[1:]))
        if contiguous:
            groups.append(SegmentGroup(length, len(starts), starts[0], None))
        else:
            ids = (torch.tensor(starts)[:, None] + torch.arange(length)).reshape(-1)  # (count * length,)
            groups.append(SegmentGroup(length, len(starts), None, ids.to(device)))
    dedup = [0] + [b for b, n in zip(bounds[1:], lengths) if n > 0]
    cu = torch.tensor(dedup, dtype=torch.int32, device=device)
    return VarlenPlan(cu, max(lengths), bounds[-1], tuple(groups))
