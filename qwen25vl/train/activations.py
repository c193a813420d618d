"""Activation checkpointing applied from outside the model: a block's forward is recomputed in backward instead
of keeping its activations. Module paths (hence checkpoint keys) are unchanged: only the instance's `forward`
is replaced."""

from __future__ import annotations

import functools

from torch.utils.checkpoint import checkpoint


def checkpoint_blocks(blocks) -> int:
    """Wrap every module of `blocks` (e.g. `model.visual.blocks`, `model.model.layers`); returns how many."""
    count = 0
    for block in blocks:
        forward = block.forward
        block.forward = functools.partial(_recomputed, forward)
        count += 1
    return count


def _recomputed(forward, *args, **kwargs):
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)
