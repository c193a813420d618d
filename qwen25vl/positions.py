"""M-RoPE position ids as pure functions of the token ids and the vision grids (no model, no state).

Layout of one sequence (the original release's rule, `get_rope_index` of transformers 4.5x and the official
fine-tuning code's `rope2d.py`):

    text ... <vision_start> | vision block (t, h/2, w/2) | <vision_end> text ...
    t,h,w:  0 1 ... s-1     | t: s + floor(i * spg * tps)|  m+1  m+2 ...       m = max id of everything before
                            | h: s + row, w: s + col     |

Text ids are equal on all three rows (plain 1-D RoPE). A video's temporal id is its frame-group index times
`second_per_grid_t` (seconds per group) times `tokens_per_second` (2): absolute time in half seconds, computed in
floating point and truncated last, so videos sampled above 2 fps keep distinct times. Text after a block resumes at
max id + 1, so after a long video it starts after the video's time span (transformers 5.x uses start + max(h, w)
instead: identical for images, different for long videos).
"""

from __future__ import annotations

import torch

from qwen25vl.errors import InputError


def text_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (3, B, T) long: a running index over each row's valid tokens; padded slots 0."""
    mask = attention_mask.bool()
    pos = (mask.long().cumsum(-1) - 1).clamp_min(0).masked_fill(~mask, 0)
    return pos.unsqueeze(0).expand(3, -1, -1).contiguous()


def rope_deltas_of(position_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) long: max id + 1 - number of valid tokens, the offset decoding adds to the running token count."""
    if attention_mask is None:
        count = torch.full(position_ids.shape[1:2], position_ids.shape[2], dtype=torch.long,
                           device=position_ids.device)
        top = position_ids.amax(dim=(0, 2))
    else:
        mask = attention_mask.bool()
        count = mask.sum(-1)
        top = position_ids.masked_fill(~mask, -1).amax(dim=(0, 2))
    return torch.where(count > 0, top + 1 - count, torch.zeros_like(count))


def decode_position_ids(num_valid: torch.Tensor, rope_deltas: torch.Tensor, num_new: int) -> torch.Tensor:
    """(3, B, T) ids of T new text tokens after `num_valid` (B,) tokens already seen: count + delta + arange."""
    pos = (num_valid + rope_deltas)[:, None] + torch.arange(num_new, device=num_valid.device)  # (B, T)
    return pos.unsqueeze(0).expand(3, -1, -1)


def vision_block_ids(start: int, grid_thw: tuple[int, int, int], merge: int, time_scale: float,
                     device=None) -> torch.Tensor:
    """(3, t * h/merge * w/merge) ids of one image / video block starting at `start`, t slowest, w fastest.

    `time_scale` = second_per_grid_t * tokens_per_second (0 for images). The product with the frame-group index is
    taken in fp32 (as the reference does) and only then truncated.
    """
    t, h, w = grid_thw[0], grid_thw[1] // merge, grid_thw[2] // merge
    interval = torch.tensor(time_scale, dtype=torch.float32)
    temporal = (torch.arange(t, dtype=torch.float32) * interval).long()  # (t,)
    tt = temporal[:, None, None].expand(t, h, w)
    hh = torch.arange(h)[None, :, None].expand(t, h, w)
    ww = torch.arange(w)[None, None, :].expand(t, h, w)
    return (torch.stack([tt, hh, ww]).reshape(3, -1) + start).to(device)


def mrope_position_ids(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grid_ts: torch.Tensor | None = None,
    *,
    image_token_id: int,
    video_token_id: int,
    vision_start_token_id: int | None = None,
    spatial_merge_size: int = 2,
    tokens_per_second: float = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(position_ids (3, B, T) long, rope_deltas (B,) long) for a left- or right-padded batch.

    Grid rows are consumed in order of appearance over the whole batch (row 0's blocks first). A block is found at
    its first pad token (`image_token_id` / `video_token_id`) and spans t*h*w/merge^2 tokens, all of which must be
    that pad token. `vision_start_token_id` is accepted for the contract's sake; blocks are found by their pad tokens,
    which also works for a block whose start token was cut off.
    """
    del vision_start_token_id
    if input_ids.dim() != 2:
        raise InputError(f"input_ids must be (batch, tokens), got shape {tuple(input_ids.shape)}")
    batch, length = input_ids.shape
    mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
            else attention_mask.to(input_ids.device).bool())
    if mask.shape != input_ids.shape:
        raise InputError(f"attention_mask shape {tuple(mask.shape)} differs from input_ids {tuple(input_ids.shape)}")
    if image_grid_thw is None and video_grid_thw is None:
        pos = text_position_ids(mask)
        return pos, rope_deltas_of(pos, mask)

    images = _grid_list(image_grid_thw, "image_grid_thw")
    videos = _grid_list(video_grid_thw, "video_grid_thw")
    if second_per_grid_ts is None:
        seconds = [1.0] * len(videos)  # the reference's fallback: 2 fps sampling
    else:
        seconds = [float(s) for s in torch.as_tensor(second_per_grid_ts).reshape(-1).tolist()]
        if len(seconds) != len(videos):
            raise InputError(f"second_per_grid_ts has {len(seconds)} values for {len(videos)} videos")
    state = {"image": 0, "video": 0}
    position_ids = torch.zeros(3, batch, length, dtype=torch.long)
    ids_cpu, mask_cpu = input_ids.cpu(), mask.cpu()
    for row in range(batch):
        tokens = ids_cpu[row][mask_cpu[row]]
        pos = _row_ids(tokens, images, videos, seconds, state, image_token_id, video_token_id,
                       spatial_merge_size, tokens_per_second, row)
        position_ids[:, row, mask_cpu[row]] = pos
    if state["image"] != len(images) or state["video"] != len(videos):
        raise InputError(
            f"input_ids hold {state['image']} image and {state['video']} video blocks but image_grid_thw has "
            f"{len(images)} and video_grid_thw {len(videos)} rows")
    position_ids = position_ids.to(input_ids.device)
    return position_ids, rope_deltas_of(position_ids, mask)


def _grid_list(grid, name: str) -> list[tuple[int, int, int]]:
    if grid is None:
        return []
    grid = torch.as_tensor(grid)
    if grid.dim() != 2 or grid.shape[1] != 3:
        raise InputError(f"{name} must be (count, 3), got shape {tuple(grid.shape)}")
    return [tuple(int(x) for x in g) for g in grid.tolist()]


def _row_ids(tokens, images, videos, seconds, state, image_id, video_id, merge, tps, row) -> torch.Tensor:
    """(3, L) ids of one row's valid tokens; advances state['image'] / state['video'] (shared over the batch)."""
    is_pad = (tokens == image_id) | (tokens == video_id)
    pads = torch.nonzero(is_pad).flatten().tolist()
    parts, start, next_id, i = [], 0, 0, 0
    while i < len(pads):
        at = pads[i]
        if at > start:  # text before the block, including its <vision_start>
            parts.append(torch.arange(next_id, next_id + at - start).expand(3, -1))
            next_id += at - start
        kind = "image" if int(tokens[at]) == image_id else "video"
        grids = images if kind == "image" else videos
        if state[kind] >= len(grids):
            raise InputError(f"row {row} holds more {kind} blocks than the {len(grids)} rows of {kind}_grid_thw")
        grid = grids[state[kind]]
        scale = 0.0 if kind == "image" else seconds[state[kind]] * tps
        state[kind] += 1
        count = grid[0] * (grid[1] // merge) * (grid[2] // merge)
        block = tokens[at : at + count]
        token = image_id if kind == "image" else video_id
        if block.numel() != count or not bool((block == token).all()):
            found = int((tokens[at:] == token).cumprod(0).sum())
            raise InputError(f"row {row}: a {kind} block of grid {list(grid)} needs {count} consecutive {kind} "
                             f"tokens but {found} are there (was the prompt truncated?)")
        ids = vision_block_ids(next_id, grid, merge, scale)
        parts.append(ids)
        next_id = int(ids.max()) + 1
        start = at + count
        while i < len(pads) and pads[i] < start:
            i += 1
    if start < tokens.numel():
        parts.append(torch.arange(next_id, next_id + tokens.numel() - start).expand(3, -1))
    return torch.cat(parts, dim=1) if parts else torch.zeros(3, 0, dtype=torch.long)
