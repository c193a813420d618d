"""Qwen2.5-VL: the vision tower, the language model and the glue (feature insertion, M-RoPE ids, cache bookkeeping).

Module paths equal the official checkpoint keys: `visual.*`, `model.*` (embed_tokens, layers, norm) and `lm_head`.
The model keeps no positional state between calls: ids are computed from the inputs, or from the KV cache's own
`rope_deltas` when decoding.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from qwen25vl.config import Qwen25VLConfig
from qwen25vl.errors import InputError
from qwen25vl.model.attention import VarlenPlan
from qwen25vl.model.kv_cache import KVCache
from qwen25vl.model.outputs import ModelOutput
from qwen25vl.model.text import AttnSpec, TextModel, padding_mask
from qwen25vl.model.vision import VisionTransformer
from qwen25vl.positions import mrope_position_ids, rope_deltas_of, text_position_ids


class Qwen25VL(nn.Module):
    def __init__(self, config: Qwen25VLConfig):
        super().__init__()
        self.config = config
        self.visual = VisionTransformer(config.vision)
        self.model = TextModel(config.text)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding matrix with the output head when the config ties them (the 3B does)."""
        if self.config.text.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    # --- loading / saving (I/O lives in qwen25vl.weights) ----------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | str | None = None,
                        device: torch.device | str | None = None, progress: bool = True) -> Qwen25VL:
        from qwen25vl.weights import load_model

        return load_model(path, dtype=dtype, device=device, progress=progress)

    def save_pretrained(self, path: str | Path, max_shard_size: int | str = "5GB") -> Path:
        from qwen25vl.weights import save_model

        return save_model(self, path, max_shard_size=max_shard_size)

    # --- vision -----------------------------------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """(N, 1176) patches of the images described by (K, 3) grids -> (N / 4, hidden) features, in order."""
        return self._encode(pixel_values, image_grid_thw, "image_grid_thw")

    def encode_videos(self, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor) -> torch.Tensor:
        return self._encode(pixel_values_videos, video_grid_thw, "video_grid_thw")

    def _encode(self, pixels: torch.Tensor, grid: torch.Tensor | None, name: str) -> torch.Tensor:
        if grid is None:
            raise InputError(f"pixel values were given without {name}")
        weight = self.visual.patch_embed.proj.weight
        grid = torch.as_tensor(grid, dtype=torch.long)
        return self.visual(pixels.to(device=weight.device, dtype=weight.dtype), grid)

    # --- forward ----------------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        *,
        cu_seqlens: torch.Tensor | None = None,
        cache: KVCache | None = None,
        image_embeds: torch.Tensor | None = None,
        video_embeds: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        mm_token_type_ids: torch.Tensor | None = None,
    ) -> ModelOutput:
        # mm_token_type_ids is accepted so that a processor's whole output can be passed as is (`model(**inputs)`);
        # token types follow from the image/video token ids, so it carries nothing the model needs.
        if input_ids.dim() != 2:
            raise InputError(f"input_ids must be (batch, tokens), got shape {tuple(input_ids.shape)}")
        batch, steps = input_ids.shape
        valid = self._valid_mask(attention_mask, batch, steps, cache)
        _check_call(batch, steps, valid, cache, cu_seqlens, logits_to_keep)  # before anything touches the cache
        continuing = cache is not None and not cache.is_empty()
        cfg = self.config

        embeds = self.model.embed_tokens(input_ids)
        if image_embeds is None and pixel_values is not None:
            image_embeds = self.encode_images(pixel_values, image_grid_thw)
        if video_embeds is None and pixel_values_videos is not None:
            video_embeds = self.encode_videos(pixel_values_videos, video_grid_thw)
        # Generated tokens may happen to be pad ids while decoding; in a prompt, pads without features are an error.
        embeds = _insert(embeds, input_ids, cfg.image_token_id, image_embeds, "image", strict=not continuing)
        embeds = _insert(embeds, input_ids, cfg.video_token_id, video_embeds, "video", strict=not continuing)

        if position_ids is None:
            position_ids, rope_deltas = self._positions(input_ids, valid, image_grid_thw, video_grid_thw,
                                                        second_per_grid_ts, cu_seqlens, cache)
        else:
            position_ids, rope_deltas = self._given_positions(position_ids, valid, batch, steps, cache)

        if cu_seqlens is None and cache is None and valid is not None and not logits_to_keep \
                and _one_run_per_row(valid):
            return self._unpadded(embeds, position_ids, rope_deltas, valid)
        if cu_seqlens is not None:
            spec = AttnSpec(plan=VarlenPlan.build(cu_seqlens, input_ids.device))
        elif cache is not None:
            cache.stage(valid)
            spec = AttnSpec(cache=cache)
        else:
            spec = AttnSpec(mask=None if valid is None else padding_mask(valid))

        hidden = self.model(embeds, position_ids, spec, keep=logits_to_keep)
        if cache is not None:
            cache.advance(steps, valid)
        logits = self.lm_head(hidden)
        if valid is not None:  # pads' logits are zeros on every path (the unpadded one computes nothing for them)
            logits = logits.masked_fill(~valid[:, -logits.shape[1]:, None], 0.0)
        return ModelOutput(logits, position_ids, rope_deltas)

    def _unpadded(self, embeds, position_ids, rope_deltas, valid) -> ModelOutput:
        """A padded batch without a cache (training, scoring) run as one packed row: each row's real tokens attend to
        their own row only, as under the padding mask, but through mask-free causal attention per segment instead of
        a masked (B, 1, T, T) product, and nothing is computed for pads (their logits are zeros)."""
        batch, steps, width = embeds.shape
        real = valid.flatten().nonzero().squeeze(1)
        bounds = [0] + valid.sum(-1).cumsum(0).tolist()
        plan = VarlenPlan.build(bounds, embeds.device)
        hidden = self.model(embeds.flatten(0, 1)[real][None], position_ids.flatten(1, 2)[:, real][:, None],
                            AttnSpec(plan=plan))
        logits = self.lm_head(hidden[0])
        full = logits.new_zeros(batch * steps, logits.shape[-1]).index_copy(0, real, logits)
        return ModelOutput(full.view(batch, steps, -1), position_ids, rope_deltas)

    def _valid_mask(self, attention_mask, batch, steps, cache) -> torch.Tensor | None:
        """(B, T) bool of the new tokens, or None when all are real. With a cache, a mask covering the cached
        tokens too (transformers' habit) is accepted: its last T columns are the new tokens'."""
        if attention_mask is None:
            return None
        mask = attention_mask.bool()
        if mask.dim() != 2 or mask.shape[0] != batch or mask.shape[1] < steps or (
                mask.shape[1] > steps and cache is None):
            raise InputError(f"attention_mask shape {tuple(attention_mask.shape)} does not fit input_ids "
                             f"{(batch, steps)}")
        mask = mask[:, -steps:] if steps else mask[:, :0]
        return None if bool(mask.all()) else mask

    def _positions(self, input_ids, valid, image_grid_thw, video_grid_thw, seconds, cu_seqlens, cache):
        cfg = self.config
        kwargs = dict(image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw, second_per_grid_ts=seconds,
                      image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
                      vision_start_token_id=cfg.vision_start_token_id,
                      spatial_merge_size=cfg.vision.spatial_merge_size,
                      tokens_per_second=cfg.vision.tokens_per_second)
        if cu_seqlens is not None:
            pos = _packed_positions(input_ids, cu_seqlens, kwargs)
            return pos, rope_deltas_of(pos)
        if cache is None or cache.is_empty():
            pos, deltas = mrope_position_ids(input_ids, valid, **kwargs)
            if cache is not None:
                cache.rope_deltas.copy_(deltas)
            return pos, deltas
        # Continuing after cached tokens: ids of this chunk on their own, shifted to where the sequence stands
        # (valid tokens so far + delta); a chunk holding images moves the delta on by its own.
        mask = valid if valid is not None else torch.ones_like(input_ids, dtype=torch.bool)
        if image_grid_thw is None and video_grid_thw is None:
            pos, chunk_deltas = text_position_ids(mask), None
        else:
            pos, chunk_deltas = mrope_position_ids(input_ids, mask, **kwargs)
        start = (cache.num_valid() + cache.rope_deltas).to(pos.device)
        pos = pos + start[None, :, None]
        if chunk_deltas is not None:
            cache.rope_deltas += chunk_deltas.to(cache.rope_deltas.device)
        return pos, cache.rope_deltas.clone()

    @staticmethod
    def _given_positions(position_ids, valid, batch, steps, cache):
        if position_ids.dim() == 2:
            position_ids = position_ids.unsqueeze(0).expand(3, -1, -1)
        if tuple(position_ids.shape) != (3, batch, steps):
            raise InputError(f"position_ids must be (3, {batch}, {steps}), got {tuple(position_ids.shape)}")
        if cache is None:
            return position_ids, rope_deltas_of(position_ids, valid)
        mask = valid if valid is not None else torch.ones(batch, steps, dtype=torch.bool, device=position_ids.device)
        count = mask.sum(-1)
        top = position_ids.masked_fill(~mask, -1).amax(dim=(0, 2))
        seen = cache.num_valid().to(count.device)
        deltas = torch.where(count > 0, top + 1 - (seen + count), cache.rope_deltas.to(count.device))
        cache.rope_deltas.copy_(deltas)
        return position_ids, deltas.clone()


def _one_run_per_row(valid: torch.Tensor) -> bool:
    """Every row's real tokens are one non-empty contiguous run (left or right padding, not holes)."""
    starts = valid[:, 0].long() + (valid[:, 1:] & ~valid[:, :-1]).sum(-1)
    return bool((starts == 1).all())


def _check_call(batch, steps, valid, cache, cu_seqlens, logits_to_keep) -> None:
    if logits_to_keep < 0:
        raise InputError(f"logits_to_keep must be >= 0, got {logits_to_keep}")
    if cu_seqlens is not None and (batch != 1 or cache is not None or valid is not None):
        raise InputError("cu_seqlens (packed sequences) needs batch 1, no cache and no attention_mask, got "
                         f"batch {batch}, cache {cache is not None}, mask {valid is not None}")
    if cache is not None:
        if cache.batch != batch:
            raise InputError(f"the cache holds {cache.batch} rows but input_ids has {batch}")
        used = cache.used()
        if used + steps > cache.max_len:
            raise InputError(f"KV cache overflow: {used} slots used + {steps} new tokens > max_len {cache.max_len}")


def _insert(embeds, input_ids, token_id, features, kind, strict):
    """Put vision features at the rows of their pad tokens, in order; the counts must match exactly."""
    where = input_ids == token_id
    if features is None:
        if strict and bool(where.any()):
            raise InputError(f"input_ids hold {int(where.sum())} {kind} tokens but no {kind} features were given "
                             f"(pass pixel values with grids, or {kind}_embeds)")
        return embeds
    count = int(where.sum())
    if features.dim() != 2 or features.shape[0] != count or features.shape[1] != embeds.shape[-1]:
        raise InputError(f"{kind} tokens and {kind} features do not match: {count} {kind} tokens in input_ids, "
                         f"{kind} features of shape {tuple(features.shape)} (hidden {embeds.shape[-1]})")
    return embeds.masked_scatter(where[..., None], features.to(embeds.device, embeds.dtype))


def _packed_positions(input_ids, cu_seqlens, kwargs) -> torch.Tensor:
    """Ids of packed sequences (B == 1): each segment positioned on its own, restarting at 0."""
    bounds = [int(b) for b in torch.as_tensor(cu_seqlens).tolist()]
    if input_ids.shape[0] != 1 or bounds[0] != 0 or bounds[-1] != input_ids.shape[1]:
        raise InputError(f"cu_seqlens {bounds[:8]}... must run from 0 to the {input_ids.shape[1]} tokens of a "
                         f"single row (batch {input_ids.shape[0]})")
    lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    rows = torch.zeros(len(lengths), max(lengths), dtype=input_ids.dtype, device=input_ids.device)
    mask = torch.zeros(rows.shape, dtype=torch.bool, device=input_ids.device)
    for i, (a, n) in enumerate(zip(bounds[:-1], lengths)):  # segments as right-padded rows of one batch
        rows[i, :n] = input_ids[0, a : a + n]
        mask[i, :n] = True
    pos, _ = mrope_position_ids(rows, mask, **kwargs)  # (3, S, Lmax)
    return pos[:, mask].unsqueeze(1)  # (3, S, Lmax) -> (3, T) in segment order -> (3, 1, T)
