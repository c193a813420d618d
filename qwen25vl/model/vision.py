"""The Qwen2.5-VL vision tower: patch embedding, 2-D rotary, window / full attention blocks, 2x2 patch merger.

Module paths equal the official checkpoint keys without `visual.` (`blocks.0.attn.qkv`, `merger.mlp.0`), so a state
dict loads by name. The tower keeps no buffers: the rotary frequencies are recomputed per forward (20 numbers), and
the index math (window order, segment plans) comes from `vision_layout`, cached per grid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from qwen25vl.errors import ConfigError, InputError
from qwen25vl.model.attention import VarlenPlan, attention
from qwen25vl.model.layers import RMSNorm, apply_rotary
from qwen25vl.vision_layout import grids_from_tensor, vision_layout

if TYPE_CHECKING:
    from qwen25vl.config import VisionConfig

_ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}
_NORM_EPS = 1e-6  # the reference hard-codes it for every vision norm; it is not the text config's rms_norm_eps
_ROPE_THETA = 10000.0


class PatchEmbed(nn.Module):
    """The checkpoint's Conv3d (kernel = stride = one patch) applied as the matmul it is on flattened patch rows."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        kernel = (config.temporal_patch_size, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(config.in_chans, config.hidden_size, kernel_size=kernel, stride=kernel, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight.view(self.proj.out_channels, -1)  # (C, 3, 2, 14, 14) -> (C, 1176), same order
        if pixel_values.shape[-1] != weight.shape[1]:
            raise InputError(
                f"pixel_values rows must hold {weight.shape[1]} values (channels x frames x patch x patch), "
                f"got shape {tuple(pixel_values.shape)}"
            )
        return F.linear(pixel_values.to(weight.dtype), weight)


class VisionAttention(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        dim = config.hidden_size
        self.num_heads = config.num_heads
        self.head_dim = dim // config.num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, plan: VarlenPlan) -> torch.Tensor:
        n = x.shape[0]
        qkv = self.qkv(x).view(n, 3, self.num_heads, self.head_dim)  # (N, 3C) -> (N, 3, H, D)
        # rotary on q and k together, in fp32 as the reference does (bf16 angles lose whole positions)
        qk = qkv[:, :2].float()  # (N, 2, H, D)
        qk = apply_rotary(qk, cos, sin).to(x.dtype)
        out = attention(qk[:, 0], qk[:, 1], qkv[:, 2], cu_seqlens=plan)  # (N, H, D)
        return self.proj(out.reshape(n, -1))


class VisionMLP(nn.Module):
    """SwiGLU with biases (the vision tower's, unlike the language model's)."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        if config.hidden_act not in _ACTIVATIONS:
            raise ConfigError(f"vision hidden_act {config.hidden_act!r} is not one of {sorted(_ACTIVATIONS)}")
        self.act = _ACTIVATIONS[config.hidden_act]
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=True)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=True)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class VisionBlock(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.norm1 = RMSNorm(config.hidden_size, eps=_NORM_EPS)
        self.norm2 = RMSNorm(config.hidden_size, eps=_NORM_EPS)
        self.attn = VisionAttention(config)
        self.mlp = VisionMLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, plan: VarlenPlan) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin, plan)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """RMSNorm per patch, then each 2x2 merge unit (4 consecutive rows) as one vector through a 2-layer GELU MLP."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.merged = config.hidden_size * config.spatial_merge_size**2
        self.ln_q = RMSNorm(config.hidden_size, eps=_NORM_EPS)
        self.mlp = nn.Sequential(
            nn.Linear(self.merged, self.merged), nn.GELU(), nn.Linear(self.merged, config.out_hidden_size)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.merged))  # (N, C) -> (N / 4, 4C): units are contiguous rows


class VisionTransformer(nn.Module):
    """forward(pixel_values (N, 1176), grid_thw (K, 3)) -> (N / 4, out_hidden_size) in the processor's token order."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        if config.hidden_size % config.num_heads or (config.hidden_size // config.num_heads) % 4:
            raise ConfigError(
                f"vision hidden_size {config.hidden_size} / num_heads {config.num_heads} must give a head dim "
                "divisible by 4 (2-D rotary: half rotated by rows, half by columns, rotate-half pairs)"
            )
        bad = [i for i in config.fullatt_block_indexes if not 0 <= i < config.depth]
        if bad:
            raise ConfigError(f"vision fullatt_block_indexes {bad} are outside depth {config.depth}")
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.blocks = nn.ModuleList(VisionBlock(config) for _ in range(config.depth))
        self.merger = PatchMerger(config)
        self._full = frozenset(config.fullatt_block_indexes)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        grids = grids_from_tensor(grid_thw, cfg.spatial_merge_size)
        device = self.patch_embed.proj.weight.device
        layout = vision_layout(grids, cfg.spatial_merge_size, cfg.window_size, cfg.patch_size, str(device))
        if pixel_values.shape[0] != layout.num_patches:
            raise InputError(
                f"pixel_values has {pixel_values.shape[0]} patch rows but grid_thw {list(grids)} needs "
                f"{layout.num_patches}"
            )
        unit = cfg.spatial_merge_size**2
        x = self.patch_embed(pixel_values.to(device))  # (N, C)
        x = x.view(-1, unit, x.shape[-1])[layout.unit_order].view(x.shape)  # merge units into window order
        cos, sin = self._rotary(layout.rotary_ids)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, layout.full_plan if i in self._full else layout.window_plan)
        return self.merger(x)[layout.unit_restore]  # (N / 4, out) back in the processor's order

    def _rotary(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (N, 1, 1, D) fp32 for q/k laid out (N, 2 or H, H, D); rows angles then columns angles, twice."""
        head_dim = self.config.hidden_size // self.config.num_heads
        quarter = head_dim // 4
        exponents = torch.arange(quarter, device=ids.device, dtype=torch.float32) * 2 / (head_dim // 2)
        inv_freq = 1.0 / _ROPE_THETA**exponents
        angles = (ids[..., None].float() * inv_freq).reshape(ids.shape[0], -1)  # (N, 2, D/4) -> (N, D/2)
        angles = torch.cat([angles, angles], dim=-1)[:, None, None, :]  # (N, 1, 1, D)
        return angles.cos(), angles.sin()
