"""The one attention function: every path equals a plain per-segment / per-row reference written out by hand."""

import math

import pytest
import torch

from qwen25vl.errors import InputError
from qwen25vl.model.attention import VarlenPlan, attention


def reference(q, k, v, causal=False, key_valid=None, offset=0):
    """Softmax attention for one sequence. q (Tq, H, D), k, v (Tk, Hkv, D) -> (Tq, H, D); query i sits at key
    position i + offset (so causal means key j <= i + offset); key_valid (Tk,) bool drops keys."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    allowed = torch.ones(q.shape[0], k.shape[0], dtype=torch.bool)
    if causal:
        allowed &= torch.arange(k.shape[0])[None, :] <= torch.arange(q.shape[0])[:, None] + offset
    if key_valid is not None:
        allowed &= key_valid[None, :]
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row with no key at all gives zeros
    return torch.einsum("hqk,khd->qhd", probs, v.double()).to(q.dtype)


def packed_reference(q, k, v, cu, causal=False):
    out = torch.zeros_like(q)
    for a, b in zip(cu[:-1], cu[1:]):
        if b > a:
            out[a:b] = reference(q[a:b], k[a:b], v[a:b], causal)
    return out


def packed_inputs(lengths, heads=4, kv_heads=4, dim=16):
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    n = cu[-1]
    q = torch.randn(n, heads, dim)
    k, v = torch.randn(n, kv_heads, dim), torch.randn(n, kv_heads, dim)
    return q, k, v, cu


# window-like layouts: equal lengths interleaved with partial ones, empty segments, one long segment
LAYOUTS = [[7, 3, 7, 7, 0, 3, 5, 7], [16] * 5, [64], [1, 1, 2, 0, 9, 2]]


@pytest.mark.parametrize("lengths", LAYOUTS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_packed_equals_per_segment_reference(lengths, causal, kv_heads):
    q, k, v, cu = packed_inputs(lengths, kv_heads=kv_heads)
    got = attention(q, k, v, cu_seqlens=torch.tensor(cu, dtype=torch.int32), causal=causal)
    torch.testing.assert_close(got, packed_reference(q, k, v, cu, causal), atol=1e-5, rtol=1e-5)


def test_packed_causal_gqa_gradients_equal_reference():
    """Training's sequence packing: causal segments with GQA, gradients too."""
    q, k, v, cu = packed_inputs([5, 9, 5, 3], heads=4, kv_heads=2)
    grads = []
    for fn in (lambda *t: attention(*t, cu_seqlens=torch.tensor(cu), causal=True),
               lambda *t: packed_reference(*t, cu, causal=True)):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = fn(*leaves)
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_one_sdpa_call_per_distinct_length_and_never_a_mask(monkeypatch):
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        calls.append((tuple(q.shape), attn_mask))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    lengths = [7, 3, 7, 7, 0, 3, 5, 7]
    q, k, v, cu = packed_inputs(lengths)
    attention(q, k, v, cu_seqlens=torch.tensor(cu))
    assert sorted(c[0][0] for c in calls) == [1, 2, 4]  # 1 of length 5, 2 of length 3, 4 of length 7
    assert all(mask is None for _, mask in calls)


def test_plan_is_cached_reused_and_drops_empty_segments():
    cu = torch.tensor([0, 4, 4, 8, 10], dtype=torch.int32)
    plan = VarlenPlan.build(cu)
    assert VarlenPlan.build([0, 4, 4, 8, 10]) is plan
    assert plan.cu_seqlens.tolist() == [0, 4, 8, 10] and plan.max_seqlen == 4 and plan.total == 10
    # length 4 runs back to back (a view); length 2 is a single segment, also contiguous
    assert [(g.length, g.count, g.start) for g in plan.groups] == [(4, 2, 0), (2, 1, 8)]
    q, k, v, _ = packed_inputs([4, 4, 2])
    torch.testing.assert_close(attention(q, k, v, cu_seqlens=plan), attention(q, k, v, cu_seqlens=cu))


def test_plan_gathers_non_contiguous_segments():
    plan = VarlenPlan.build([0, 3, 5, 8])
    group = next(g for g in plan.groups if g.length == 3)
    assert group.start is None and group.index.tolist() == [0, 1, 2, 5, 6, 7]


def _left_padded(batch_lengths, t, heads=4, kv_heads=2, dim=16):
    b = len(batch_lengths)
    q = torch.randn(b, heads, t, dim)
    k, v = torch.randn(b, kv_heads, t, dim), torch.randn(b, kv_heads, t, dim)
    valid = torch.arange(t)[None, :] >= (t - torch.tensor(batch_lengths))[:, None]  # (B, T) left padding
    return q, k, v, valid


def test_batched_left_padding_mask_equals_per_row_reference():
    t = 9
    q, k, v, valid = _left_padded([9, 6, 1], t)
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
    mask = (valid[:, None, :] & causal)[:, None]  # (B, 1, T, T)
    got = attention(q, k, v, mask=mask)
    assert torch.isfinite(got).all()  # padded query rows see no key and must not poison later layers
    for b in range(q.shape[0]):
        start = int((~valid[b]).sum())
        sl = slice(start, t)
        want = reference(q[b, :, sl].transpose(0, 1), k[b, :, sl].transpose(0, 1), v[b, :, sl].transpose(0, 1), True)
        torch.testing.assert_close(got[b, :, sl].transpose(0, 1), want, atol=1e-5, rtol=1e-5)
    # causal=True on top of a mask that is already causal changes nothing
    torch.testing.assert_close(attention(q, k, v, mask=mask, causal=True), got)


@pytest.mark.parametrize("tq,tk", [(6, 6), (3, 8), (1, 8)])
def test_batched_causal_is_bottom_right_aligned(tq, tk):
    q = torch.randn(2, 4, tq, 8)
    k, v = torch.randn(2, 2, tk, 8), torch.randn(2, 2, tk, 8)
    got = attention(q, k, v, causal=True)
    for b in range(2):
        want = reference(q[b].transpose(0, 1), k[b].transpose(0, 1), v[b].transpose(0, 1), True, offset=tk - tq)
        torch.testing.assert_close(got[b].transpose(0, 1), want, atol=1e-5, rtol=1e-5)


def test_batched_mask_with_cache_offset_equals_reference():
    """Decode-like: 2 new queries over 7 keys, row 1 has two padding slots at the front."""
    q = torch.randn(2, 4, 2, 8)
    k, v = torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 8)
    valid = torch.ones(2, 7, dtype=torch.bool)
    valid[1, :2] = False
    mask = valid[:, None, None, :].expand(2, 1, 2, 7)
    got = attention(q, k, v, mask=mask, causal=True)
    for b in range(2):
        want = reference(q[b].transpose(0, 1), k[b].transpose(0, 1), v[b].transpose(0, 1), True, valid[b], 5)
        torch.testing.assert_close(got[b].transpose(0, 1), want, atol=1e-5, rtol=1e-5)


def test_mistakes_raise_input_errors_naming_the_value():
    q, k, v, cu = packed_inputs([4, 4])
    with pytest.raises(InputError, match="ends at 7"):
        attention(q, k, v, cu_seqlens=torch.tensor([0, 3, 7]))
    with pytest.raises(InputError, match="both"):
        attention(q, k, v, cu_seqlens=torch.tensor(cu), mask=torch.ones(1, 1, 8, 8, dtype=torch.bool))
    with pytest.raises(InputError, match="heads"):
        attention(torch.randn(8, 3, 16), k, v, cu_seqlens=torch.tensor(cu))
    with pytest.raises(InputError, match="bool"):
        t = torch.randn(1, 2, 3, 4)
        attention(t, t, t, mask=torch.zeros(1, 1, 3, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the varlen flash kernel needs a CUDA device")
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_varlen_equals_grouped_sdpa(causal):
    q, k, v, cu = packed_inputs([64, 48, 64, 16, 12], heads=8, kv_heads=2, dim=80)
    q, k, v = (t.cuda().bfloat16() for t in (q, k, v))
    got = attention(q, k, v, cu_seqlens=torch.tensor(cu, dtype=torch.int32, device="cuda"), causal=causal)
    want = packed_reference(q.float().cpu(), k.float().cpu(), v.float().cpu(), cu, causal)
    torch.testing.assert_close(got.float().cpu(), want, atol=2e-2, rtol=2e-2)


def test_plan_made_under_inference_mode_serves_autograd():
    cu = [0, 3, 6, 8, 11, 13]  # bounds no other test uses: the cached plan is first made under inference mode
    q, k, v, _ = packed_inputs([3, 3, 2, 3, 2])
    with torch.inference_mode():
        VarlenPlan.build(cu)
    q.requires_grad_()
    attention(q, k, v, cu_seqlens=torch.tensor(cu)).sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
