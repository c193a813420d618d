"""Process group setup and FSDP2 wrapping, from outside the model.

`torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK; without them everything runs as one process and nothing here
touches `torch.distributed`. Sharding: each ViT block and each decoder layer is its own FSDP unit (gathered for its
forward and backward, freed after), the root (`PackedLoss`) holds the rest: embeddings with the tied head, final
norm, patch embedding and merger.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> World:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA); else a world of one."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return World(device=torch.device(device))
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return World(rank, world, local, torch.device(device))


def shard(loss_fn: torch.nn.Module, *, bf16: bool = False) -> torch.nn.Module:
    """FSDP2 over the blocks, then the root; `bf16` computes in bf16 with fp32 gradient reduction (GPU)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs = {}
    if bf16:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    vlm = loss_fn.vlm
    for block in vlm.visual.blocks:
        fully_shard(block, **kwargs)
    for layer in vlm.model.layers:
        fully_shard(layer, **kwargs)
    fully_shard(loss_fn, **kwargs)
    return loss_fn


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def close() -> None:
    if dist.is_initialized():
        dist.barrier()  # no rank tears the group down while another still talks to it (gloo aborts then)
        dist.destroy_process_group()
