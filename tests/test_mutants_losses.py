"""Loss edges the mutation run found unguarded: one supervised target, a frozen hidden state, bf16 inputs, and the
step's scale applied to the hidden-state gradient without rounding it to the hidden dtype first."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from qwen25vl.train.losses import IGNORE, chunked_cross_entropy, full_cross_entropy, token_mean


def _inputs(rows=9, width=8, vocab=13, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, width, generator=gen).to(dtype).requires_grad_(True)
    weight = torch.randn(vocab, width, generator=gen).to(dtype).requires_grad_(True)
    labels = torch.randint(0, vocab, (rows,), generator=gen)
    labels[::3] = IGNORE
    return hidden, weight, labels


def test_token_mean_of_a_single_target():
    assert float(token_mean(torch.tensor(2.5), 1)) == 2.5
    assert float(token_mean(torch.tensor(2.5), 1, world_size=4)) == 10.0
    for bad in (0, -1):
        with pytest.raises(ValueError, match=rf"^a step needs supervised targets, got {bad}$"):
            token_mean(torch.tensor(1.0), bad)


def test_gradient_reaches_the_head_only_when_hidden_is_frozen():
    hidden, weight, labels = _inputs()
    hidden = hidden.detach()
    (g,) = torch.autograd.grad(chunked_cross_entropy(hidden, weight, labels, chunk=4) * 0.5, weight)
    (ref,) = torch.autograd.grad(full_cross_entropy(hidden, weight, labels) * 0.5, weight)
    assert torch.allclose(g, ref, atol=1e-6) and float(g.abs().max()) > 0.01


def test_bf16_loss_and_gradients_follow_the_fp32_reference():
    hidden, weight, labels = _inputs(dtype=torch.bfloat16)
    loss = chunked_cross_entropy(hidden, weight, labels, chunk=4)
    gh, gw = torch.autograd.grad(loss, (hidden, weight))
    assert loss.dtype == torch.float32 and gh.dtype == torch.bfloat16 and gw.dtype == torch.bfloat16
    ref = full_cross_entropy(hidden, weight, labels)  # the same bf16 matmul, the whole logits in fp32
    rh, rw = torch.autograd.grad(ref, (hidden, weight))
    assert torch.allclose(loss, ref, rtol=1e-6)
    assert torch.allclose(gh.float(), rh.float(), rtol=2e-2, atol=1e-2) and float(rh.abs().max()) > 0.1
    assert torch.allclose(gw.float(), rw.float(), rtol=2e-2, atol=1e-2)
    assert bool((gh[labels == IGNORE] == 0).all())


def test_bf16_hidden_gradient_is_scaled_once_in_fp32():
    # the step scales every micro-batch by world / global_targets; rounding that factor to bf16 first (1/3 ->
    # 0.333984375) would bias the whole hidden-state gradient by 0.2%, not just round each element once
    hidden, weight, labels = _inputs(rows=24, width=16, vocab=31, dtype=torch.bfloat16)
    (unit,) = torch.autograd.grad(chunked_cross_entropy(hidden, weight.detach(), labels), hidden)
    (scaled,) = torch.autograd.grad(token_mean(chunked_cross_entropy(hidden, weight.detach(), labels), 3), hidden)
    scale = torch.tensor(1 / 3)
    assert torch.equal(scaled, (unit.float() * scale).to(torch.bfloat16))
    assert not torch.equal(scaled, (unit.float() * scale.to(torch.bfloat16).float()).to(torch.bfloat16))


class _OutputShapes(TorchDispatchMode):
    """Records the shape of every tensor an op produces (allocations included)."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def test_a_frozen_input_gets_no_gradient_buffer():
    # a frozen head must not cost a (vocab x hidden) fp32 buffer (2 GB at Qwen2.5-VL-7B's vocabulary), nor a frozen
    # hidden state a (T x hidden) one; vocab != width and some rows unsupervised, so no other op has those shapes
    hidden, weight, labels = _inputs(rows=9, width=8, vocab=13)
    frozen_weight, frozen_hidden = weight.detach(), hidden.detach()
    with _OutputShapes() as seen:
        loss = chunked_cross_entropy(hidden, frozen_weight, labels, chunk=4)
    assert tuple(weight.shape) not in seen.shapes and tuple(hidden.shape) in seen.shapes
    (g,) = torch.autograd.grad(loss, hidden)
    assert torch.allclose(g, torch.autograd.grad(full_cross_entropy(hidden, frozen_weight, labels), hidden)[0],
                          atol=1e-6)
    with _OutputShapes() as seen:
        chunked_cross_entropy(frozen_hidden, weight, labels, chunk=4)
    assert tuple(hidden.shape) not in seen.shapes and tuple(weight.shape) in seen.shapes


def test_sums_stay_fp32_under_a_bf16_default_dtype():
    # models are often built under torch.set_default_dtype(torch.bfloat16): the loss and the head's gradient must
    # still be accumulated in fp32, not in whatever the default is
    hidden, weight, labels = _inputs(rows=40, width=8, vocab=13, dtype=torch.bfloat16)
    ref = full_cross_entropy(hidden, weight, labels)
    (rw,) = torch.autograd.grad(ref, weight)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        loss = chunked_cross_entropy(hidden, weight, labels, chunk=3)
        (gw,) = torch.autograd.grad(loss, weight)
    finally:
        torch.set_default_dtype(previous)
    assert loss.dtype == torch.float32 and torch.allclose(loss, ref, rtol=1e-6)
    assert torch.allclose(gw.float(), rw.float(), rtol=2e-2, atol=1e-2)


def test_under_autocast_as_single_gpu_training_runs_it():
    # fp32 hidden states and head under bf16 autocast (the one-GPU recipe): the matmuls run in bf16, the gradient
    # of the hidden states must come back in their own dtype
    hidden, weight, labels = _inputs(rows=12, width=8, vocab=13)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = chunked_cross_entropy(hidden, weight, labels, chunk=5)
        ref = full_cross_entropy(hidden, weight, labels)
    gh, gw = torch.autograd.grad(loss, (hidden, weight))
    rh, rw = torch.autograd.grad(ref, (hidden, weight))
    assert gh.dtype == torch.float32 and gw.dtype == torch.float32
    assert torch.allclose(loss, ref, rtol=1e-5)
    assert torch.allclose(gh, rh, rtol=2e-2, atol=1e-2) and torch.allclose(gw, rw, rtol=2e-2, atol=1e-2)
