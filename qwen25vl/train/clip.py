"""Contrastive image-text pretraining of the vision tower (CLIP's objective) at native resolution.

The image side is our packed ViT (`visual`, the checkpoint's module path, merger included): a batch's images of any
sizes go through one call with per-image windows and full-attention segments; each image's merged tokens are
mean-pooled and projected. The text side is a small transformer over the tokenizer's ids, its captions packed with
`cu_seqlens` like the images (bidirectional attention inside each caption), mean-pooled and projected. The loss is
the symmetric InfoNCE of CLIP with a learned temperature:

    logits = exp(logit_scale) * normalize(image) @ normalize(text).T        (B images x B captions)
    loss   = (CE(logits, arange(B)) + CE(logits.T, arange(B))) / 2

`logit_scale` starts at log(1 / 0.07) and is clamped to [0, log 100] after every step, as CLIP does. Only `visual`
is kept after training; the text tower, both projections and the temperature are thrown away.

Under torchrun each rank embeds its share of the step's pairs and gathers every rank's embeddings (differentiably,
`gather_rows`), so each rank's loss is the one over the whole batch: the negatives are the global batch's, as in one
process. The gather's backward sums the ranks' identical losses' gradients (W times the batch loss's), and FSDP's
gradient reduction divides by W: every parameter gets the batch loss's gradient, as in one process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from qwen25vl.model.attention import VarlenPlan, attention
from qwen25vl.model.layers import RMSNorm
from qwen25vl.model.vision import VisionTransformer

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


def clip_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor,
              logit_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(symmetric InfoNCE, logits (B, B) images x captions) of B matched pairs; pair i is row i's positive."""
    image = F.normalize(image_embeds.float(), dim=-1)
    text = F.normalize(text_embeds.float(), dim=-1)
    logits = logit_scale.float().exp() * image @ text.T  # (B, E) x (E, B) -> (B, B)
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2, logits


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """(rows, C) of this rank -> every rank's rows in rank order, with gradients flowing back to each rank's own;
    ranks may hold different counts (a batch whose undecodable images were dropped). One process: `x` itself."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    return _GatherRows.apply(x)


class _GatherRows(torch.autograd.Function):
    """all_gather forward; backward: the sum over ranks of the gradient wrt the gathered rows (all_reduce; the
    embeddings are small, and gloo has no reduce_scatter), this rank's slice of it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        counts = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
        dist.all_gather(counts, torch.tensor([x.shape[0]], dtype=torch.long, device=x.device))
        counts = [int(c) for c in counts]
        most = max(counts)
        padded = x.new_zeros(most, *x.shape[1:])  # all_gather moves equal shapes: pad, keep each rank's real rows
        padded[:x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        ctx.start, ctx.rows = sum(counts[:rank]), x.shape[0]
        return torch.cat([part[:n] for part, n in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss reads every rank's rows
        return grad[ctx.start:ctx.start + ctx.rows]


def clamp_logit_scale(model: nn.Module) -> None:
    """CLIP's clamp after each step: the temperature stays in [1/100, 1]."""
    with torch.no_grad():
        model.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)


def retrieval_accuracy(image_embeds: torch.Tensor, text_embeds: torch.Tensor, texts: list[str]) -> tuple[float, float]:
    """(image -> text top-1 accuracy, its chance level). An image retrieves the caption of highest cosine similarity
    among all `texts`; a retrieved caption counts when its text equals the image's own (captions may repeat), so
    chance is the mean share of captions equal to each image's."""
    if len(texts) != image_embeds.shape[0] or len(texts) != text_embeds.shape[0]:
        raise ValueError(f"{image_embeds.shape[0]} images, {text_embeds.shape[0]} text embeddings, {len(texts)} texts")
    sims = F.normalize(image_embeds.float(), dim=-1) @ F.normalize(text_embeds.float(), dim=-1).T
    best = sims.argmax(dim=1).tolist()
    hits = sum(texts[j] == texts[i] for i, j in enumerate(best))
    chance = sum(texts.count(t) for t in texts) / len(texts) ** 2
    return hits / len(texts), chance


@dataclass(frozen=True)
class TextTowerConfig:
    vocab_size: int
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 512
    max_tokens: int = 64  # captions are cut to this many ids (learned positions)


class TextBlock(nn.Module):
    """Pre-norm transformer block: bidirectional attention within each packed caption, then a GELU MLP."""

    def __init__(self, config: TextTowerConfig):
        super().__init__()
        dim = config.hidden_size
        self.num_heads = config.num_heads
        self.norm1 = RMSNorm(dim)
        self.norm2 = RMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc1 = nn.Linear(dim, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, dim)

    def forward(self, x: torch.Tensor, plan: VarlenPlan) -> torch.Tensor:
        n, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, 3, self.num_heads, -1).unbind(1)  # (N, 3C) -> 3 x (N, H, D)
        x = x + self.proj(attention(q, k, v, cu_seqlens=plan).reshape(n, dim))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TextTower(nn.Module):
    """forward(input_ids (T,) of packed captions, cu_seqlens (K + 1,)) -> (K, hidden) mean-pooled per caption."""

    def __init__(self, config: TextTowerConfig):
        super().__init__()
        if config.hidden_size % config.num_heads:
            raise ValueError(f"text tower hidden_size {config.hidden_size} is not divisible by "
                             f"num_heads {config.num_heads}")
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(config.max_tokens, config.hidden_size)
        self.layers = nn.ModuleList(TextBlock(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size)

    def forward(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]  # (K,)
        segment = torch.repeat_interleave(torch.arange(lengths.numel(), device=input_ids.device), lengths)  # (T,)
        positions = torch.arange(input_ids.numel(), device=input_ids.device) - cu_seqlens[segment]
        x = self.embed_tokens(input_ids) + self.embed_positions(positions)  # (T, C)
        plan = VarlenPlan.build(cu_seqlens, input_ids.device)
        for layer in self.layers:
            x = layer(x, plan)
        return segment_mean(self.norm(x), segment, lengths)


def segment_mean(x: torch.Tensor, segment: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(rows, C) -> (segments, C): the mean of each segment's rows (`segment` gives each row's segment)."""
    total = x.new_zeros(lengths.numel(), x.shape[-1]).index_add(0, segment, x)
    return total / lengths[:, None].to(x.dtype)


@dataclass
class ClipBatch:
    """B image-caption pairs: images packed as for the ViT, captions packed as one id row with `cu_seqlens`."""

    pixel_values: torch.Tensor  # (N, 1176)
    image_grid_thw: torch.Tensor  # (B, 3) long
    input_ids: torch.Tensor  # (T,) long
    cu_seqlens: torch.Tensor  # (B + 1,) int32
    index: list[int]  # the pairs' positions in the loader's list
    texts: list[str]

    def to(self, device) -> ClipBatch:
        return ClipBatch(self.pixel_values.to(device), self.image_grid_thw.to(device), self.input_ids.to(device),
                         self.cu_seqlens.to(device), self.index, self.texts)


def collate_pairs(images: list, captions: list[list[int]], index: list[int], texts: list[str]) -> ClipBatch:
    """Processed images (`ProcessedImage`) and caption ids -> a `ClipBatch`."""
    lengths = torch.tensor([0] + [len(c) for c in captions])
    return ClipBatch(torch.cat([im.pixel_values for im in images]),
                     torch.tensor([im.grid_thw for im in images], dtype=torch.long),
                     torch.tensor([t for c in captions for t in c], dtype=torch.long),
                     lengths.cumsum(0).to(torch.int32), index, texts)


class CLIPModel(nn.Module):
    """The vision tower under its checkpoint name `visual`, a text tower, two projections and the temperature."""

    def __init__(self, vision_config, text_config: TextTowerConfig, embed_dim: int = 128):
        super().__init__()
        self.visual = VisionTransformer(vision_config)
        self.text = TextTower(text_config)
        self.image_proj = nn.Linear(vision_config.out_hidden_size, embed_dim, bias=False)
        self.text_proj = nn.Linear(text_config.hidden_size, embed_dim, bias=False)
        # shape (1,), not a scalar: FSDP2 shards parameters along dim 0
        self.logit_scale = nn.Parameter(torch.tensor([LOGIT_SCALE_INIT]))

    def encode_images(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim): each image's merger output, mean-pooled over its tokens, projected."""
        features = self.visual(pixel_values, image_grid_thw)  # (N / 4, out_hidden) in token order, image by image
        unit = self.visual.config.spatial_merge_size ** 2
        counts = image_grid_thw.prod(dim=-1).to(features.device) // unit  # (B,) merged tokens per image
        segment = torch.repeat_interleave(torch.arange(counts.numel(), device=features.device), counts)
        return self.image_proj(segment_mean(features, segment, counts))

    def encode_texts(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        return self.text_proj(self.text(input_ids, cu_seqlens.long()))

    def forward(self, batch: ClipBatch, embed_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss over every rank's pairs, logits); `embed_only`: (image, text) embeddings of this batch alone (the
        held-out retrieval: under FSDP every call must enter through the root module's forward)."""
        image = self.encode_images(batch.pixel_values, batch.image_grid_thw)
        text = self.encode_texts(batch.input_ids, batch.cu_seqlens)
        if embed_only:
            return image, text
        return clip_loss(gather_rows(image), gather_rows(text), self.logit_scale)


def clip_step(model: CLIPModel, optimizer, scheduler, batch: ClipBatch, *, max_grad_norm: float | None = 1.0) -> dict:
    """One optimizer step on one batch (under torchrun: this rank's share of it): loss, in-batch image -> text
    accuracy, temperature, grad norm, lr and the pairs the loss saw (every rank's)."""
    loss, logits = model(batch)
    loss.backward()
    norm = None
    if max_grad_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a DTensor
    lr = max(group["lr"] for group in optimizer.param_groups)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    clamp_logit_scale(model)
    target = torch.arange(logits.shape[0], device=logits.device)
    accuracy = float((logits.detach().argmax(dim=1) == target).float().mean())
    scale = model.logit_scale.detach()
    temperature = float(1 / (scale.full_tensor() if hasattr(scale, "full_tensor") else scale).exp())
    return {"loss": float(loss.detach()), "accuracy": accuracy, "temperature": temperature, "grad_norm": norm, "lr": lr,
            "pairs": logits.shape[0]}


@torch.no_grad()
def embed_all(model: CLIPModel, batches) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(image embeddings, text embeddings, texts) of every pair of `batches`, in order."""
    images, texts, captions = [], [], []
    for batch in batches:
        image, text = model(batch, embed_only=True)
        images.append(image.cpu())
        texts.append(text.cpu())
        captions += batch.texts
    return torch.cat(images), torch.cat(texts), captions
