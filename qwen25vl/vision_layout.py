"""Index math of the vision tower: pure functions of the patch grids, computed once per forward and cached per grid.

Patch order (the processor's): within each frame, 2x2 merge units in raster order, the 4 patches of a unit in raster
order, so every 4 consecutive rows form one merge unit. Window attention works on windows of `window_size` pixels
(8x8 patches, 4x4 merge units): the merge-unit grid of each frame is cut into windows from the top-left, edge windows
are simply smaller (no padding tokens), and tokens are reordered window by window. The merger's output is put back
in the processor's order by the inverse permutation.

Everything here is integer bookkeeping; no module, weight or float math.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from qwen25vl.errors import InputError
from qwen25vl.varlen import VarlenPlan

Grid = tuple[int, int, int]  # (t, h, w) in patches


def grids_from_tensor(grid_thw: torch.Tensor | list, merge: int) -> tuple[Grid, ...]:
    """(K, 3) grid tensor or list -> tuple of (t, h, w) ints, checked so the index math below can trust it."""
    rows = grid_thw.tolist() if isinstance(grid_thw, torch.Tensor) else [list(g) for g in grid_thw]
    grids = []
    for i, row in enumerate(rows):
        if len(row) != 3:
            raise InputError(f"grid_thw[{i}] must be (t, h, w), got {row}")
        t, h, w = (int(x) for x in row)
        if t < 1 or h < merge or w < merge or h % merge or w % merge:
            raise InputError(
                f"grid_thw[{i}] = {(t, h, w)}: t must be >= 1 and h, w positive multiples of the merge size {merge}"
            )
        grids.append((t, h, w))
    if not grids:
        raise InputError("grid_thw is empty: the vision tower needs at least one image or video")
    return tuple(grids)


def rotary_ids(grids: tuple[Grid, ...], merge: int) -> torch.Tensor:
    """(N, 2) long: each patch's (row, col) in its frame, listed in the processor's merge-aware order."""
    parts = []
    for t, h, w in grids:
        rows = torch.arange(h)[:, None].expand(h, w)
        cols = torch.arange(w)[None, :].expand(h, w)
        ids = torch.stack([rows, cols], dim=-1)  # (h, w, 2)
        # (h, w, 2) -> (h/m, m, w/m, m, 2) -> (h/m, w/m, m, m, 2): merge units in raster order, patches inside them too
        ids = ids.reshape(h // merge, merge, w // merge, merge, 2).permute(0, 2, 1, 3, 4).reshape(-1, 2)
        parts.append(ids.repeat(t, 1))  # every frame gets the same 2-D ids; the ViT has no temporal rotary
    return torch.cat(parts)


def window_index(grids: tuple[Grid, ...], merge: int, units_per_window: int) -> tuple[torch.Tensor, list[int]]:
    """Merge units reordered window by window, and the window boundaries in patches.

    Returns `index` (N / merge^2,) long, a permutation of merge-unit ids (unit ids are raster per frame, frames and
    items one after another), and `cu` (list of ints, starting at 0) with no empty windows.
    """
    unit = merge * merge
    v = units_per_window
    index_parts, sizes, offset = [], [], 0
    for t, h, w in grids:
        lh, lw = h // merge, w // merge
        nh, nw = -(-lh // v), -(-lw // v)  # windows per side, the last one partial when lh % v != 0
        rows = torch.arange(lh)[:, None] // v
        cols = torch.arange(lw)[None, :] // v
        window = (rows * nw + cols).reshape(-1)  # (lh * lw,) window of each unit, units in raster order
        window = (torch.arange(t)[:, None] * (nh * nw) + window).reshape(-1)  # frames own their windows
        # a stable sort by window keeps raster order inside each window, which is the order attention expects
        index_parts.append(torch.argsort(window, stable=True) + offset)
        sizes.append(torch.bincount(window, minlength=t * nh * nw) * unit)
        offset += t * lh * lw
    cu = [0] + torch.cat(sizes).cumsum(0).tolist()
    return torch.cat(index_parts), cu


def full_cu_seqlens(grids: tuple[Grid, ...]) -> list[int]:
    """Boundaries (in patches) of the full-attention segments: one per frame, never across frames or items."""
    cu = [0]
    for t, h, w in grids:
        for _ in range(t):
            cu.append(cu[-1] + h * w)
    return cu


@dataclass(frozen=True, eq=False)
class VisionLayout:
    """What a vision forward needs from the grids, all in window order (the order the blocks run in)."""

    num_patches: int
    unit_order: torch.Tensor  # (N / 4,) long: merge unit ids in window order (gather with it to enter window order)
    unit_restore: torch.Tensor  # (N / 4,) long: its inverse (gather merger outputs with it to leave window order)
    rotary_ids: torch.Tensor  # (N, 2) long: (row, col) of each patch, in window order
    window_plan: VarlenPlan
    full_plan: VarlenPlan


@functools.lru_cache(maxsize=32)
def vision_layout(
    grids: tuple[Grid, ...], merge: int, window_size: int, patch_size: int, device: str = "cpu"
) -> VisionLayout:
    """Cached per (grids, sizes, device): a video or a batch of images of the same sizes costs the index math once.

    Built with inference mode off: the cached tensors must serve later autograd forwards too.
    """
    with torch.inference_mode(False):
        return _make_layout(grids, merge, window_size, patch_size, device)


def _make_layout(grids: tuple[Grid, ...], merge: int, window_size: int, patch_size: int, device: str) -> VisionLayout:
    units_per_window = window_size // merge // patch_size
    if units_per_window < 1:
        raise InputError(f"window_size {window_size} is smaller than one merge unit ({merge} x {patch_size} px)")
    order, cu_window = window_index(grids, merge, units_per_window)
    unit = merge * merge
    ids = rotary_ids(grids, merge).view(-1, unit, 2)[order].reshape(-1, 2)  # (N/4, 4, 2) gathered -> (N, 2)
    return VisionLayout(
        num_patches=ids.shape[0],
        unit_order=order.to(device),
        unit_restore=torch.argsort(order).to(device),
        rotary_ids=ids.to(device),
        window_plan=VarlenPlan.build(cu_window, device),
        full_plan=VarlenPlan.build(full_cu_seqlens(grids), device),
    )
