"""One optimizer step over a rank's micro-batches (gradient accumulation), normalised by the global token count."""

from __future__ import annotations

import torch
import torch.distributed as dist

from qwen25vl.train.losses import token_mean


def train_step(loss_fn, optimizer, scheduler, micro_batches, *, global_targets: int, world_size: int = 1,
               max_grad_norm: float | None = 1.0) -> dict:
    """Forward + backward of each micro-batch, clip, step. Returns the step's global mean loss, grad norm and lr.

    Each micro-batch contributes sum-of-token-losses / global_targets, so the accumulated gradient is that of the
    mean over every supervised target of the step, on all ranks (see `train.losses`)."""
    total = torch.zeros(())
    sync = hasattr(loss_fn, "set_requires_gradient_sync")
    for i, batch in enumerate(micro_batches):
        if sync:  # FSDP: reduce-scatter the gradients only once, after the last micro-batch
            loss_fn.set_requires_gradient_sync(i == len(micro_batches) - 1)
        loss = token_mean(loss_fn(batch), global_targets, world_size)
        loss.backward()
        total += loss.detach().float().cpu() / world_size
    params = [p for group in optimizer.param_groups for p in group["params"]]
    norm = None
    if max_grad_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    lrs = [group["lr"] for group in optimizer.param_groups]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if world_size > 1:
        dist.all_reduce(total)
    return {"loss": float(total), "grad_norm": norm, "lr": max(lrs)}
