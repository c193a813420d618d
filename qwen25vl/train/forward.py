"""The packed training forward: one row of packed samples -> the summed CE of its supervised targets.

Built on the model's public pieces (embeddings, `visual`, the decoder stack `model.model` with a `VarlenPlan`, the
head's weight) rather than `Qwen25VL.forward`, because the loss must see the hidden states, not (T x vocab) logits.
Positions arrive precomputed from the data loader; nothing here computes M-RoPE ids.

All images and videos of a pack run through the ViT in one call (per-image attention comes from the grids). A pack
with no image still runs the tower on a dummy 2x2-patch image whose output enters the loss times zero: under FSDP
every rank then takes part in the tower's all-gathers and reduce-scatters, so a rank without images never hangs
the others.
"""

from __future__ import annotations

import torch
from torch import nn

from qwen25vl.data.packing import PackedBatch
from qwen25vl.errors import InputError
from qwen25vl.model.attention import VarlenPlan
from qwen25vl.model.text import AttnSpec
from qwen25vl.train.losses import DEFAULT_CHUNK, chunked_cross_entropy


class PackedLoss(nn.Module):
    """`PackedLoss(model)(batch)` -> summed CE (a scalar). The wrapper is the FSDP root, so the parameters outside
    the sharded blocks (embeddings, head, final norm, patch embed, merger) are gathered for its forward."""

    def __init__(self, model: nn.Module, chunk: int = DEFAULT_CHUNK):
        super().__init__()
        self.vlm = model
        self.chunk = chunk

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        vlm, cfg = self.vlm, self.vlm.config
        input_ids = batch.input_ids
        embeds = vlm.model.embed_tokens(input_ids)  # (1, T, C)
        features, zero = self._vision(batch, embeds.dtype)
        if features is not None:
            n_image = int((input_ids == cfg.image_token_id).sum())
            is_image = (input_ids == cfg.image_token_id)[..., None]
            is_video = (input_ids == cfg.video_token_id)[..., None]
            embeds = embeds.masked_scatter(is_image, features[:n_image])
            embeds = embeds.masked_scatter(is_video, features[n_image:])
        spec = AttnSpec(plan=VarlenPlan.build(batch.cu_seqlens, input_ids.device))
        hidden = vlm.model(embeds, batch.position_ids, spec)  # (1, T, C)
        loss = chunked_cross_entropy(hidden[0], vlm.lm_head.weight, batch.labels[0], self.chunk)
        return loss if zero is None else loss + zero

    def _vision(self, batch: PackedBatch, dtype):
        """(features of the pack's images then videos, None) or (None, a zero tied to the tower's parameters)."""
        pixels = [p for p in (batch.pixel_values, batch.pixel_values_videos) if p is not None]
        grids = [g for g in (batch.image_grid_thw, batch.video_grid_thw) if g is not None]
        visual = self.vlm.visual
        weight = visual.patch_embed.proj.weight
        if not pixels:
            dummy = torch.zeros(4, weight.shape[1:].numel(), dtype=weight.dtype, device=weight.device)
            grid = torch.tensor([[1, 2, 2]], device=weight.device)
            return None, visual(dummy, grid).sum() * 0.0
        features = visual(torch.cat(pixels).to(weight.device, weight.dtype), torch.cat(grids).to(weight.device))
        count = int((batch.input_ids == self.vlm.config.image_token_id).sum()
                    + (batch.input_ids == self.vlm.config.video_token_id).sum())
        if features.shape[0] != count:
            raise InputError(f"the pack holds {count} vision tokens but its grids give {features.shape[0]} features")
        return features.to(dtype), None
