"""The Qwen2.5 language model: GQA attention with qkv bias, RMSNorm, SwiGLU, M-RoPE.

Module paths equal the checkpoint's `model.*` keys (`layers.0.self_attn.q_proj`, `embed_tokens`, `norm`). Positions
arrive as (3, B, T) ids; nothing positional is stored on a module, so one instance serves prefill, decode, packed
training and any batch without reset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from qwen25vl.model.attention import VarlenPlan, attention
from qwen25vl.model.layers import RMSNorm, apply_rotary, rotate_half

if TYPE_CHECKING:
    from qwen25vl.config import TextConfig
    from qwen25vl.model.kv_cache import KVCache


def mrope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, section: tuple[int, ...],
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, B, T) ids -> cos, sin (B, T, D) in `dtype`, computed in fp32.

    Frequency j (of D/2) takes its angle from the t, h or w ids by contiguous chunks of `section` ([16, 24, 24]:
    the 16 fastest frequencies follow time, the slowest 24 follow width), the same for both rotate-half halves.
    """
    device = position_ids.device
    # Same expression as the reference so the fp32 frequencies agree to the bit.
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    axis = torch.repeat_interleave(torch.arange(3, device=device), torch.tensor(section, device=device))  # (D/2,)
    pos = position_ids.float().permute(1, 2, 0)[..., axis]  # (3, B, T) -> (B, T, 3) -> (B, T, D/2)
    angles = pos * inv_freq
    angles = torch.cat([angles, angles], dim=-1)  # (B, T, D)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE. fp32 takes the fused helper; bf16 / fp16 take the reference's three roundings
    (q * cos, rotated * sin, their sum), so half-precision logits equal transformers' bit for bit."""
    if x.dtype == torch.float32:
        return apply_rotary(x, cos, sin)
    return x * cos + rotate_half(x) * sin


@dataclass
class AttnSpec:
    """How the layers' attention sees other tokens in this forward: exactly one mode applies.

    packed: `plan` (cu_seqlens of B == 1 segments, causal within each); cached: `cache`; otherwise batched with
    `mask` (B, 1, T, T) bool, or plain causal when `mask` is None.
    """

    mask: torch.Tensor | None = None
    cache: KVCache | None = None
    plan: VarlenPlan | None = None


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) valid tokens -> (B, 1, T, T) causal mask over valid keys; each token also sees itself so that padded
    queries stay finite (a fully masked row is NaN, and NaN values leak through zero weights)."""
    valid = attention_mask.bool()
    steps = valid.shape[1]
    causal = torch.ones(steps, steps, dtype=torch.bool, device=valid.device).tril()
    mask = (causal[None] & valid[:, None, :]) | torch.eye(steps, dtype=torch.bool, device=valid.device)
    return mask[:, None]


class TextAttention(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, spec: AttnSpec, layer: int,
                keep: int = 0) -> torch.Tensor:
        """keep > 0: keys and values for every token, queries (and the output) for the last `keep` only."""
        batch, steps, _ = x.shape
        cos, sin = cos[:, :, None], sin[:, :, None]  # (B, T, 1, D) against (B, T, H, D)
        k = rotary(self.k_proj(x).view(batch, steps, self.num_kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(x).view(batch, steps, self.num_kv_heads, self.head_dim)
        if keep:
            x, cos, sin = x[:, -keep:], cos[:, -keep:], sin[:, -keep:]
        rows = x.shape[1]
        q = rotary(self.q_proj(x).view(batch, rows, self.num_heads, self.head_dim), cos, sin)
        if spec.plan is not None:  # (1, T, H, D) -> (T, H, D): segments of one packed row
            out = attention(q[0], k[0], v[0], cu_seqlens=spec.plan, causal=True)
            return self.o_proj(out.reshape(batch, steps, -1))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, T, H, D) -> (B, H, T, D)
        if spec.cache is not None:
            k, v, mask = spec.cache.update(layer, k, v)
            out = attention(q, k, v, mask=mask[:, :, -rows:])
        else:
            mask = None if spec.mask is None else spec.mask[:, :, -rows:]
            out = attention(q, k, v, mask=mask, causal=mask is None)  # causal aligns the kept queries at the end
        return self.o_proj(out.transpose(1, 2).reshape(batch, rows, -1))  # (B, H, T', D) -> (B, T', H * D)


class TextMLP(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.self_attn = TextAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.mlp = TextMLP(cfg)

    def forward(self, x, cos, sin, spec: AttnSpec, layer: int, keep: int = 0) -> torch.Tensor:
        h = self.self_attn(self.input_layernorm(x), cos, sin, spec, layer, keep)
        x = (x[:, -keep:] if keep else x) + h
        return x + self.mlp(self.post_attention_layernorm(x))


class TextModel(nn.Module):
    """Embeddings, decoder layers and the final norm: `forward(embeds, position_ids, spec) -> hidden (B, T, C)`."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def forward(self, embeds: torch.Tensor, position_ids: torch.Tensor, spec: AttnSpec, keep: int = 0) -> torch.Tensor:
        """`keep` > 0 returns only the last `keep` positions. The last layer's keys and values need every token,
        but its queries, output projection and MLP only the kept ones (about one layer's work saved in prefill)."""
        cfg = self.config
        cos, sin = mrope_cos_sin(position_ids, cfg.head_dim, cfg.rope_theta, cfg.mrope_section, embeds.dtype)
        keep = keep if 0 < keep < embeds.shape[1] else 0
        in_layer = keep if spec.plan is None else 0  # packed attention wants whole segments: trim after
        x = embeds
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, spec, i, in_layer if i == last else 0)
        return self.norm(x[:, -keep:] if keep and not in_layer else x)
