"""The one attention function of the model: packed (varlen) segments for the vision tower and training's sequence
packing, a batched (B, H, T, D) layout with a bool mask for text prefill / decode.

Packed attention never builds a dense N x N mask (40x slower on CPU and O(N^2) memory: 17 GB at a 16k-token image).
On CPU the segments of equal length are gathered into one batched SDPA call per distinct length; a vision layer has a
handful of window sizes, so a forward makes a few SDPA calls per layer instead of one per window. Where segments of a
length lie back to back (every full-attention layer of one image, or windows of a grid that tiles evenly) the batch
is a view and nothing is copied. On CUDA with half precision, torch's own flash varlen kernel takes the packed
tensors as they are.

The grouping depends only on `cu_seqlens`: `VarlenPlan.build` makes it once per forward (cached by the boundaries),
and `attention` accepts the plan in place of the tensor so every layer reuses it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qwen25vl.errors import InputError
from qwen25vl.varlen import VarlenPlan  # noqa: F401 (re-exported: the model's modules import it from here)

try:  # torch >= 2.10 ships a flash varlen kernel of its own; older builds fall back to grouped SDPA
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn
except ImportError:  # pragma: no cover - depends on the installed torch
    _varlen_attn = None

_FLASH_DTYPES = (torch.float16, torch.bfloat16)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    cu_seqlens: torch.Tensor | VarlenPlan | None = None,
    max_seqlen: int | None = None,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention, packed or batched; GQA when k/v have fewer heads than q.

    Packed (`cu_seqlens` given, a tensor or a `VarlenPlan`): q (N, H, D), k, v (N, Hkv, D) -> (N, H, D); attention
    only within each segment, causal inside it when `causal`.
    Batched: q (B, H, Tq, D), k, v (B, Hkv, Tk, D), `mask` (B, 1, Tq, Tk) bool (True = attend) or None;
    `causal` aligns the last query with the last key (decode with a cache) -> (B, H, Tq, D).
    """
    if cu_seqlens is not None:
        if mask is not None:
            raise InputError("attention takes either cu_seqlens (packed) or mask (batched), got both")
        return _packed(q, k, v, cu_seqlens, max_seqlen, causal, scale)
    return _batched(q, k, v, mask, causal, scale)


def _check_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, head_dim: int) -> bool:
    heads, kv_heads = q.shape[head_dim], k.shape[head_dim]
    if k.shape != v.shape:
        raise InputError(f"attention k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if heads % kv_heads or q.shape[-1] != k.shape[-1]:
        raise InputError(f"attention q {tuple(q.shape)} does not fit k/v {tuple(k.shape)} (heads or head dim)")
    return kv_heads != heads


def _packed(q, k, v, cu_seqlens, max_seqlen, causal, scale):
    if q.dim() != 3 or k.dim() != 3:
        raise InputError(f"packed attention wants q (N, H, D) and k, v (N, Hkv, D), got {tuple(q.shape)}")
    gqa = _check_heads(q, k, v, 1)
    if q.shape[0] != k.shape[0]:
        raise InputError(f"packed attention wants as many keys as queries, got {q.shape[0]} and {k.shape[0]}")
    plan = cu_seqlens if isinstance(cu_seqlens, VarlenPlan) else VarlenPlan.build(cu_seqlens, q.device)
    if plan.cu_seqlens.device != q.device:  # a plan made for another device: the same bounds, cached for this one
        plan = VarlenPlan.build(plan.cu_seqlens, q.device)
    if plan.total != q.shape[0]:
        raise InputError(f"cu_seqlens ends at {plan.total} but there are {q.shape[0]} tokens")
    if _varlen_attn is not None and q.is_cuda and q.dtype in _FLASH_DTYPES:
        longest = plan.max_seqlen if max_seqlen is None else max_seqlen
        # the vision tower hands q and k as strided views of one rotated (N, 2, H, D) tensor; the kernel is only
        # documented for dense rows, and a copy on the GPU costs microseconds
        q, k, v = (t.contiguous() for t in (q, k, v))
        return _varlen_attn(
            q, k, v, plan.cu_seqlens, plan.cu_seqlens, longest, longest,
            scale=scale, window_size=(-1, 0) if causal else (-1, -1), enable_gqa=gqa,
        )
    return _grouped_sdpa(q, k, v, plan, causal, scale, gqa)


def _grouped_sdpa(q, k, v, plan: VarlenPlan, causal: bool, scale, gqa: bool) -> torch.Tensor:
    """One SDPA call per distinct segment length; segments of that length form its batch."""
    out = None if plan.covers_one_run() else q.new_empty(q.shape)
    for group in plan.groups:
        n, length = group.count, group.length
        if group.start is not None:
            stop = group.start + n * length
            # (n * L, H, D) -> (n, L, H, D) -> (n, H, L, D): a view, no copy
            qs, ks, vs = (t[group.start : stop].view(n, length, *t.shape[1:]).transpose(1, 2) for t in (q, k, v))
        else:
            qs, ks, vs = (t.index_select(0, group.index).view(n, length, *t.shape[1:]).transpose(1, 2)
                          for t in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scale, enable_gqa=gqa)
        o = o.transpose(1, 2).reshape(n * length, *q.shape[1:])  # (n, H, L, D) -> (n * L, H, D)
        if out is None:
            return o
        if group.start is not None:
            out[group.start : group.start + n * length] = o
        else:
            out.index_copy_(0, group.index, o)
    return out


def _batched(q, k, v, mask, causal, scale):
    if q.dim() != 4 or k.dim() != 4:
        raise InputError(f"batched attention wants q (B, H, Tq, D) and k, v (B, Hkv, Tk, D), got {tuple(q.shape)}")
    gqa = _check_heads(q, k, v, 1)
    tq, tk = q.shape[2], k.shape[2]
    if mask is not None:
        if mask.dtype != torch.bool:
            raise InputError(f"attention mask must be bool (True = attend), got {mask.dtype}")
        if causal:
            mask = mask & _lower_right(tq, tk, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    if causal and tq != tk:
        if tq == 1:  # one new token sees every key: no mask at all
            causal = False
        else:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=_lower_right(tq, tk, q.device), scale=scale, enable_gqa=gqa
            )
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=gqa)


def _lower_right(tq: int, tk: int, device) -> torch.Tensor:
    """(Tq, Tk) bool: query i (the i-th of the last Tq positions) sees keys up to its own position."""
    rows = torch.arange(tq, device=device)[:, None] + (tk - tq)
    return torch.arange(tk, device=device)[None, :] <= rows
