"""attention() against a naive float64 softmax(q k^T x scale) v, on the cases the mutation run found unguarded:
explicit scales, non-causal and causal batched shapes with Tq != Tk, the default of `causal`, half precision on
CPU, and every input check's message."""

import pytest
import torch

from qwen25vl.errors import InputError
from qwen25vl.model.attention import attention

SCALE = 0.3  # far from 1/sqrt(D): a dropped scale shows


def _naive(q, k, v, allowed, scale):
    """q (H, Tq, D), k, v (Hkv, Tk, D), allowed (Tq, Tk) bool -> (H, Tq, D), in float64."""
    rep = q.shape[0] // k.shape[0]
    k, v = k.double().repeat_interleave(rep, 0), v.double().repeat_interleave(rep, 0)
    s = (q.double() @ k.transpose(-1, -2)) * scale
    return s.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


def _lower_right(tq, tk):
    return torch.arange(tk)[None, :] <= torch.arange(tq)[:, None] + (tk - tq)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bounds", [[0, 3, 7, 12], [0, 4, 8, 12]], ids=["mixed-lengths", "equal-lengths"])
def test_packed_with_explicit_scale(causal, bounds):
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(12, 4, 8, generator=g), torch.randn(12, 2, 8, generator=g), torch.randn(12, 2, 8, generator=g)
    out = attention(q, k, v, cu_seqlens=torch.tensor(bounds, dtype=torch.int32), causal=causal, scale=SCALE)
    for a, b in zip(bounds, bounds[1:]):
        n = b - a
        allowed = _lower_right(n, n) if causal else torch.ones(n, n, dtype=torch.bool)
        want = _naive(q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), allowed, SCALE)
        torch.testing.assert_close(out[a:b].transpose(0, 1).double(), want, atol=1e-5, rtol=1e-5)


def test_causal_defaults_to_false():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(6, 2, 8, generator=g) for _ in range(3))
    got = attention(q, k, v, cu_seqlens=torch.tensor([0, 6], dtype=torch.int32))
    want = _naive(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), torch.ones(6, 6, dtype=torch.bool), 8 ** -0.5)
    torch.testing.assert_close(got.transpose(0, 1).double(), want, atol=1e-5, rtol=1e-5)
    qb, kb, vb = (t.transpose(0, 1)[None] for t in (q, k, v))
    torch.testing.assert_close(attention(qb, kb, vb)[0].double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tq, tk, causal, masked", [
    (3, 5, False, False), (2, 5, True, False), (1, 5, True, False), (4, 4, True, False), (3, 5, True, True),
    (3, 5, False, True),
])
def test_batched_shapes_with_explicit_scale(tq, tk, causal, masked):
    g = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(2, 4, tq, 8, generator=g), torch.randn(2, 2, tk, 8, generator=g), torch.randn(2, 2, tk, 8, generator=g)
    mask = torch.ones(2, 1, tq, tk, dtype=torch.bool)
    mask[1, :, :, 0] = False  # row 1 never sees its first key (left padding)
    out = attention(q, k, v, mask=mask if masked else None, causal=causal, scale=SCALE)
    for b in range(2):
        allowed = _lower_right(tq, tk) if causal else torch.ones(tq, tk, dtype=torch.bool)
        if masked:
            allowed = allowed & mask[b, 0]
        torch.testing.assert_close(out[b].double(), _naive(q[b], k[b], v[b], allowed, SCALE), atol=1e-5, rtol=1e-5)


def test_half_precision_packed_on_cpu():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(10, 2, 8, generator=g) for _ in range(3))
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    want = attention(q, k, v, cu_seqlens=cu, causal=True)
    got = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), cu_seqlens=cu, causal=True)
    assert got.dtype == torch.bfloat16 and (got.float() - want).abs().max() < 0.05


def test_input_checks_name_the_shapes():
    q3, k3 = torch.zeros(5, 2, 8), torch.zeros(5, 2, 8)
    cu = torch.tensor([0, 5], dtype=torch.int32)
    cases = [
        (dict(q=q3, k=k3, v=k3, cu_seqlens=cu, mask=torch.ones(1, 1, 5, 5, dtype=torch.bool)),
         r"^attention takes either cu_seqlens \(packed\) or mask \(batched\), got both$"),
        (dict(q=q3, k=k3[None], v=k3[None], cu_seqlens=cu),
         r"^packed attention wants q \(N, H, D\) and k, v \(N, Hkv, D\), got \(5, 2, 8\)$"),
        (dict(q=q3[None], k=k3, v=k3), r"^batched attention wants q \(B, H, Tq, D\) and k, v \(B, Hkv, Tk, D\), "
                                       r"got \(1, 5, 2, 8\)$"),
        (dict(q=q3, k=k3, v=torch.zeros(5, 2, 4), cu_seqlens=cu),
         r"^attention k and v must have the same shape, got \(5, 2, 8\) and \(5, 2, 4\)$"),
        (dict(q=q3, k=k3[:4], v=k3[:4], cu_seqlens=cu), r"^packed attention wants as many keys as queries, got 5 and 4$"),
        (dict(q=q3, k=k3, v=k3, cu_seqlens=torch.tensor([0, 4], dtype=torch.int32)),
         r"^cu_seqlens ends at 4 but there are 5 tokens$"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message):
            attention(kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v"), **kwargs)
