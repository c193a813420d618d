"""Cross-entropy over `lm_head` without the (T x vocab) logits, and the global-token normalisation.

`chunked_cross_entropy` returns the *sum* of the token losses over supervised targets. A training step divides every
micro-batch's sum by the number of supervised targets of the whole global batch (all micro-batches, all ranks),
known before the forward from the labels: the step's loss is then the mean over its tokens, whatever way they were
split into packs, micro-batches and ranks. A mean of per-pack means would weigh a token of a short answer more.

The logits exist one chunk of rows at a time: the forward computes each chunk's loss and, while the chunk's logits
are at hand, its gradients with respect to the hidden states and the head (softmax - one-hot), so nothing of size
(T x vocab) is kept for backward, and no second matmul pass is needed there. Only supervised rows are computed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100
DEFAULT_CHUNK = 1024  # rows: at 151,936 vocab one fp32 chunk of logits is 0.6 GB


class _ChunkedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk):
        ctx.weight_dtype = weight.dtype
        rows = torch.nonzero(labels != IGNORE).flatten()
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(hidden) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, rows.numel(), chunk):
            idx = rows[start:start + chunk]
            h, y = hidden[idx], labels[idx]
            logits = (h @ weight.T).float()  # (n, V): the one chunk-sized buffer
            target = logits.gather(1, y[:, None])[:, 0]
            # log-sum-exp and softmax in place (torch.logsumexp would allocate a second (n, V) temporary)
            top = logits.amax(dim=-1)
            norm = logits.sub_(top[:, None]).exp_().sum(dim=-1)
            total += (top + norm.log() - target).sum()
            if want_h or want_w:
                prob = logits.div_(norm[:, None])
                prob[torch.arange(idx.numel(), device=idx.device), y] -= 1.0  # d(CE)/d(logits)
                if want_h:
                    grad_h[idx] = (prob.to(weight.dtype) @ weight).to(hidden.dtype)
                if want_w:
                    grad_w.addmm_(prob.T, h.float())  # in place: no (vocab x hidden) temporary
        ctx.save_for_backward(grad_h if want_h else None, grad_w if want_w else None)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        # scaled in place: the saved gradients become the returned ones, no second (vocab x hidden) copy (so this
        # graph supports one backward, as training does; retain_graph=True would scale twice)
        grad_h, grad_w = ctx.saved_tensors
        # grad_out (fp32) is not cast to grad_h's dtype first: a step's 1 / targets rounded to bf16 would scale every
        # element wrongly by up to 0.2% (the in-place product still lands in grad_h's dtype)
        out_h = None if grad_h is None else grad_h.mul_(grad_out)
        out_w = None if grad_w is None else grad_w.mul_(grad_out).to(ctx.weight_dtype)
        return out_h, out_w, None, None


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Sum over targets != -100 of CE(hidden @ weight.T, labels): hidden (T, C), weight (V, C), labels (T,)."""
    return _ChunkedCE.apply(hidden, weight, labels, chunk)


def full_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The same sum with the whole logits matrix (the reference for tests and small vocabularies)."""
    logits = (hidden @ weight.T).float()
    return F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")


def token_mean(loss_sum: torch.Tensor, global_targets: int, world_size: int = 1) -> torch.Tensor:
    """A micro-batch's share of the step's mean loss. Data-parallel gradient reduction averages over ranks, so the
    share is scaled by the world size to make the reduced gradient that of the global mean."""
    if global_targets <= 0:
        raise ValueError(f"a step needs supervised targets, got {global_targets}")
    return loss_sum * (world_size / global_targets)
