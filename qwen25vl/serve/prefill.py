"""How the scheduler cuts prefill work: newly arrived prompts left-padded into one batch, and a long prompt cut into
chunks that never split an image or video block (pure functions of the requests' processor outputs).

A chunk after the first is positioned by the model from the cache (valid tokens so far + the row's rope delta) and
its own vision blocks, which equals the whole prompt's M-RoPE ids only when no block straddles a cut; so cuts that
would fall inside a `<|vision_start|> ... <|vision_end|>` block move to just after it.
"""

from __future__ import annotations

import torch

_GRIDS = (("image_grid_thw", "image"), ("video_grid_thw", "video"))


def padded_batch(inputs: list[dict], pad_id: int = 0) -> dict:
    """One forward's inputs from several one-conversation processor outputs: ids left-padded to the longest, the
    grids (and video seconds) concatenated in row order, as the processor lays out a batch."""
    width = max(int(x["input_ids"].shape[-1]) for x in inputs)
    ids = torch.full((len(inputs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(inputs), width, dtype=torch.long)
    for row, x in enumerate(inputs):
        n = int(x["input_ids"].shape[-1])
        ids[row, width - n :] = x["input_ids"].reshape(-1)
        given = x.get("attention_mask")
        mask[row, width - n :] = 1 if given is None else given.reshape(-1)
    out = {"input_ids": ids, "attention_mask": mask}
    for key in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts"):
        parts = [x[key] for x in inputs if x.get(key) is not None]
        out[key] = torch.cat(parts) if parts else None
    return out


def can_batch(inputs: dict) -> bool:
    """Whether a prompt can share a padded prefill (a video without its seconds per grid would take the others')."""
    return inputs.get("video_grid_thw") is None or inputs.get("second_per_grid_ts") is not None


def vision_blocks(ids: torch.Tensor, start_id: int, end_id: int) -> list[tuple[int, int]]:
    """(first, last) token index of each vision block (start token .. end token, both included), in order."""
    starts = (ids == start_id).nonzero().flatten().tolist()
    ends = (ids == end_id).nonzero().flatten().tolist()
    return [(s, next((e for e in ends if e > s), len(ids) - 1)) for s in starts]


def chunk_bounds(ids: torch.Tensor, chunk: int, start_id: int, end_id: int) -> list[tuple[int, int]]:
    """[a, b) token ranges of about `chunk` tokens covering `ids` (1-D); no range boundary inside a vision block."""
    blocks = vision_blocks(ids, start_id, end_id)
    bounds, a, total = [], 0, len(ids)
    while a < total:
        b = min(a + chunk, total)
        for first, last in blocks:
            if first < b <= last:  # b would separate the block's tokens: take the whole block
                b = last + 1
        bounds.append((a, b))
        a = b
    return bounds


def chunk_inputs(inputs: dict, a: int, b: int, *, start_id: int, end_id: int, image_id: int, merge: int,
                 image_embeds: torch.Tensor | None, video_embeds: torch.Tensor | None) -> dict:
    """The forward keyword arguments of tokens [a, b) of a one-row prompt: its ids, the grids and seconds of the
    vision blocks inside, and those blocks' slices of the precomputed features."""
    ids = inputs["input_ids"].reshape(-1)
    seen, picked = {"image": 0, "video": 0}, {"image": [], "video": []}
    for first, _ in vision_blocks(ids, start_id, end_id):
        kind = "image" if int(ids[first + 1]) == image_id else "video"  # the pad token after the start names it
        if a <= first < b:
            picked[kind].append(seen[kind])
        seen[kind] += 1
    out = {"input_ids": ids[a:b][None], "second_per_grid_ts": None}
    for (key, kind), feats in zip(_GRIDS, (image_embeds, video_embeds)):
        grids = inputs.get(key)
        out[key], out[f"{kind}_embeds"] = None, None
        if grids is None or not picked[kind]:
            continue
        offsets = [0] + (grids.prod(-1) // merge).cumsum(0).tolist()  # feature rows where each item starts
        lo, hi = picked[kind][0], picked[kind][-1] + 1
        out[key] = grids[lo:hi]
        out[f"{kind}_embeds"] = None if feats is None else feats[offsets[lo] : offsets[hi]]
        if kind == "video" and inputs.get("second_per_grid_ts") is not None:
            out["second_per_grid_ts"] = inputs["second_per_grid_ts"][lo:hi]
    return out


def joined_features(pairs: list) -> tuple:
    """The image and video features of several requests, concatenated in row order (None where none has any)."""
    out = []
    for slot in (0, 1):
        parts = [embeds[slot] for _, embeds in pairs if embeds[slot] is not None]
        out.append(torch.cat(parts) if parts else None)
    return tuple(out)


def encode_vision(model, inputs: list[dict], device, cache=None) -> list[tuple]:
    """(image features, video features) per request, from one tower call per kind across all of them (features
    found in `cache`, a VisionCache, are reused); None where a request has none of that kind."""
    from qwen25vl.generation.vision_cache import encode_items

    out = [[None, None] for _ in inputs]
    for slot, (kind, pix_key, grid_key) in enumerate(
            (("image", "pixel_values", "image_grid_thw"), ("video", "pixel_values_videos", "video_grid_thw"))):
        owners = [i for i, x in enumerate(inputs) if x.get(pix_key) is not None]
        if not owners:
            continue
        pixels = torch.cat([inputs[i][pix_key] for i in owners]).to(device)
        grids = torch.cat([inputs[i][grid_key] for i in owners]).to(device)
        feats = encode_items(model, kind, pixels, grids, cache)
        merge = model.config.vision.spatial_merge_size ** 2
        sizes = [int(inputs[i][grid_key].prod(-1).sum()) // merge for i in owners]
        for i, part in zip(owners, torch.split(feats, sizes)):
            out[i][slot] = part
    return [tuple(x) for x in out]
